"""featstore.jsonio: the one strict JSON mechanism (files, version ids, record digests)."""
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from featstore.errors import FeatstoreError
from featstore.jsonio import canonical_json, read_json, to_jsonable, write_json
from featstore.store.spec import Recipe
from featstore.store.writer import record_digest


@dataclass
class _Opts:
    size: int
    where: Path


def test_to_jsonable_converts_numpy_paths_tuples_dataclasses():
    obj = {"a": np.float32(0.5), "b": np.int64(3), "c": np.array([[1, 2], [3, 4]], dtype=np.int16),
           "d": (1, "x"), "e": _Opts(2, Path("/tmp/f")), "f": np.bool_(True), 7: None, True: 1.5}
    out = to_jsonable(obj)
    assert out == {"a": 0.5, "b": 3, "c": [[1, 2], [3, 4]], "d": [1, "x"], "e": {"size": 2, "where": "/tmp/f"},
                   "f": True, "7": None, "true": 1.5}
    assert [type(out[k]) for k in ("a", "b", "f")] == [float, int, bool]
    assert type(out["c"][0][0]) is int


def test_to_jsonable_finite_writes_nan_and_inf_as_null():
    assert to_jsonable([math.nan, np.float32("inf"), 1.0], finite=True) == [None, None, 1.0]
    out = to_jsonable([math.nan])  # kept as a float when not asked (a recipe hashes it as json writes NaN)
    assert math.isnan(out[0])


def test_unknown_object_is_a_one_line_error_naming_where_and_type():
    with pytest.raises(FeatstoreError) as e:
        to_jsonable({"config": {"layers": [1, object()]}}, where="recipe")
    assert str(e.value) == ("recipe['config']['layers'][1] is a builtins.object, which JSON cannot hold; "
                            "pass a str, number, bool, None, list or dict")
    with pytest.raises(FeatstoreError) as e:
        to_jsonable({(1, 2): 3}, where="meta")
    assert str(e.value) == "meta has a key of type builtins.tuple ((1, 2)), which JSON cannot hold; use str keys"


def test_recipe_with_an_unknown_object_is_an_error_not_a_str_in_the_hash():
    class Backbone:
        def __str__(self):
            return "resnet"

    with pytest.raises(FeatstoreError) as e:
        Recipe(extractor="grid", config={"backbone": Backbone()}).version_id
    assert str(e.value) == ("recipe['config']['backbone'] is a "
                            "test_jsonio.test_recipe_with_an_unknown_object_is_an_error_not_a_str_in_the_hash."
                            "<locals>.Backbone, which JSON cannot hold; pass a str, number, bool, None, list or dict")


def test_version_id_is_the_sha256_of_the_compact_sorted_text():
    r = Recipe(extractor="clip", config={"b": [1, 2.5], "a": "x"}, weights_fingerprint="w", tool_version="0")
    text = ('{"compute":{},"config":{"a":"x","b":[1,2.5]},"extractor":"clip","manifest_fingerprint":"",'
            '"preprocessing":{},"tool_version":"0","weights_fingerprint":"w"}')  # written out by hand
    assert r.version_id == hashlib.sha256(text.encode()).hexdigest()[:16]


def test_numpy_values_hash_like_python_values():
    py = Recipe(extractor="grid", config={"lr": 0.25, "n": 3, "sizes": [224, 224], "on": True})
    np_ = Recipe(extractor="grid", config={"lr": np.float32(0.25), "n": np.int64(3),
                                           "sizes": np.array([224, 224]), "on": np.bool_(True)})
    assert np_.version_id == py.version_id
    assert record_digest({"n": np.int32(4), "chunks": (1, 2)}) == record_digest({"n": 4, "chunks": [1, 2]})


def test_canonical_json_matches_json_for_native_values():
    obj = {"z": [1, -2.5e-7, None, True, "é"], "a": {"nested": {"k": 1e300}}, "m": math.inf, "3": "three"}
    assert canonical_json(obj) == json.dumps(obj, sort_keys=True, separators=(",", ":"))
    assert canonical_json(obj, compact=False) == json.dumps(obj, sort_keys=True)


def test_write_json_then_read_json_round_trip(tmp_path):
    p = tmp_path / "m.json"
    write_json(p, {"auroc": np.float64(0.75), "loss": math.nan, "seeds": (0, 1)})
    assert p.read_text() == '{\n  "auroc": 0.75,\n  "loss": null,\n  "seeds": [\n    0,\n    1\n  ]\n}\n'
    assert read_json(p, "{path} is missing") == {"auroc": 0.75, "loss": None, "seeds": [0, 1]}


def test_read_json_errors_are_the_given_lines(tmp_path):
    missing, broken = tmp_path / "none.json", tmp_path / "broken.json"
    broken.write_text('{"a": ')
    with pytest.raises(FeatstoreError) as e:
        read_json(missing, "{path} does not exist; pass a run folder", "{path} is not valid JSON ({err.msg}); redo it")
    assert str(e.value) == f"{missing} does not exist; pass a run folder"
    with pytest.raises(FeatstoreError) as e:
        read_json(broken, "{path} does not exist; pass a run folder", "{path} is not valid JSON ({err.msg}); redo it")
    assert str(e.value) == f"{broken} is not valid JSON (Expecting value); redo it"
    with pytest.raises(FeatstoreError) as e:
        read_json(missing, "cannot read {path} ({err}); pass run folders")
    assert str(e.value) == f"cannot read {missing} ([Errno 2] No such file or directory: '{missing}'); pass run folders"


def test_an_extractions_recipe_is_json_types_and_an_unknown_object_is_named():
    from types import SimpleNamespace

    import torch

    from featstore.runner.extract import _recipe

    ext = SimpleNamespace(config=_Opts(np.int64(224), Path("/w/resnet.pt")), weights_fingerprint=lambda: "sha:1",
                          preprocessing=lambda: {"mean": np.array([0.5, 0.25]), "size": (224, 224)})
    r = _recipe(ext, "grid", SimpleNamespace(fingerprint="m"), torch.float32)
    assert r.config == {"size": 224, "where": "/w/resnet.pt"} and type(r.config["size"]) is int
    assert r.preprocessing == {"mean": [0.5, 0.25], "size": [224, 224]}
    ext.preprocessing = lambda: {"interpolation": torch.float16}  # formerly written as the string "torch.float16"
    with pytest.raises(FeatstoreError) as e:
        _recipe(ext, "grid", SimpleNamespace(fingerprint="m"), torch.float32)
    assert str(e.value) == ("grid preprocessing['interpolation'] is a torch.dtype, which JSON cannot hold; pass a str, "
                            "number, bool, None, list or dict")


def test_a_version_with_numpy_values_in_its_recipe_reopens_under_its_digest(tmp_path):
    from featstore.store import open_store

    st = open_store(tmp_path / "s", create=True)
    recipe = Recipe("x", config={"k": np.float32(0.5), "n": np.int64(2)})
    st.write("a", recipe, ["1", "2"], {"pooled": np.zeros((2, 3), np.float32)}, key_kind="sample_id", modality="text")
    fs = open_store(tmp_path / "s").open("a")  # the record file and its digest agree: numbers, not "0.5"
    assert fs.record["recipe"]["config"] == {"k": 0.5, "n": 2}
    assert fs.version == Recipe("x", config={"k": 0.5, "n": 2}).version_id
    with pytest.raises(FeatstoreError) as e:
        st.write("b", Recipe("x", config={"k": object()}), ["1"], {"pooled": np.zeros((1, 3), np.float32)},
                 key_kind="sample_id", modality="text")
    assert str(e.value) == ("recipe['config']['k'] is a builtins.object, which JSON cannot hold; pass a str, number, "
                            "bool, None, list or dict")
    assert open_store(tmp_path / "s").feature_sets() == ["a"]  # refused before anything was written
