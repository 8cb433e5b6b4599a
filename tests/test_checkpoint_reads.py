"""``heads.checkpoints.read_weights`` reads a file once: the meta-device check and every seed after it get the
tensors of the last file read while that file is unchanged, and a rewritten file (even one with the same size,
inode and mtime) is read again. Checked on real files, reopened; the training-side check is in
tests/test_cli_heads.py (two seeds, one read, the second seed's weights equal to a fresh read's)."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from featstore.errors import FeatstoreError
from heads import checkpoints
from heads.checkpoints import forget_read_weights, read_weights


@pytest.fixture(autouse=True)
def _fresh():
    forget_read_weights()
    yield
    forget_read_weights()


def tensors(seed: int):
    g = torch.Generator().manual_seed(seed)
    return {"bert.LayerNorm.gamma": torch.randn(300, 100, generator=g), "w": torch.randn(200, 50, generator=g)}


def test_an_unchanged_file_is_read_once_and_each_call_gets_its_own_dict(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"model": tensors(0)}, path)
    first = read_weights(path)
    assert set(first) == {"bert.LayerNorm.weight", "w"}  # torch names, as before
    assert torch.equal(first["w"], tensors(0)["w"])
    first.pop("w")  # a caller's dict is its own
    second = read_weights(str(path))
    assert set(second) == {"bert.LayerNorm.weight", "w"}
    assert second["bert.LayerNorm.weight"] is first["bert.LayerNorm.weight"]  # the same tensors: no second read
    forget_read_weights()
    third = read_weights(path)
    assert third["w"] is not second["w"] and torch.equal(third["w"], second["w"])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_rewritten_file_is_read_again_even_with_the_same_size_and_mtime(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"

    def write(seed):  # into the same file (same inode), as an in-place rewrite would
        fresh = tmp_path / f"fresh{suffix}"
        if suffix == ".safetensors":
            save_file(tensors(seed), str(fresh))
        else:
            torch.save(tensors(seed), fresh)
        with open(path, "r+b" if path.exists() else "wb") as f:
            f.write(fresh.read_bytes())

    write(0)
    st = os.stat(path)
    assert torch.equal(read_weights(path)["w"], tensors(0)["w"])
    write(1)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, inode and mtime: only the contents differ
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_ino == st.st_ino
    assert torch.equal(read_weights(path)["w"], tensors(1)["w"])


def test_the_kept_read_does_not_bypass_the_pickle_refusal(tmp_path):
    path = tmp_path / "objects.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "args": argparse_like()}, path)
    assert torch.equal(read_weights(path, trust_pickle=True)["w"], torch.zeros(2))
    with pytest.raises(FeatstoreError, match="holds objects other than tensors, which safe loading refuses"):
        read_weights(path)


class argparse_like:  # a pickled object that weights_only loading refuses
    pass


def test_a_folder_resolves_to_its_weight_file_and_an_unreadable_file_is_one_line(tmp_path):
    folder = tmp_path / "zoo"
    folder.mkdir()
    torch.save(tensors(2), folder / "model.pth")
    assert checkpoints.checkpoint_file(folder) == folder / "model.pth"
    assert torch.equal(read_weights(folder)["w"], tensors(2)["w"])
    with pytest.raises(FeatstoreError) as e:
        read_weights("/proc/self/mem")  # exists and opens, but reading it fails (EIO), as a bad disk would
    assert str(e.value) == ("checkpoint '/proc/self/mem' cannot be read (Input/output error); check that the "
                            "file can be read")
