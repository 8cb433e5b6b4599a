"""``--init-checkpoint`` with Hate-CLIPper's or RGCL's own checkpoint for the ``cross`` head
(``heads.hateclipper_checkpoint``).

The file is written here as gokulkarthik/hateclipper's ``main.py`` saves it: ``ModelCheckpoint(save_weights_only=
True)`` of ``engine.py``'s ``CLIPClassifier``, i.e. ``{"state_dict", "epoch", "global_step",
"pytorch-lightning_version"}``. ``Reference`` below is that module tree, written out by hand from ``engine.py``
(image_map / text_map = Linear(D, n), Dropout, then ReLU, Linear(n, n), Dropout per extra mapping layer;
pre_output = Dropout, then Linear, ReLU, Dropout per layer; output = Linear(., 1); CLIP's encoders and the
auxiliary heads beside them), and ``Reference.logit`` its eval-mode forward in float64 (``F.normalize``, the
fusion, ``pre_output``, ``output``, ``squeeze(1)``): the head must give ``sigmoid`` of that logit as its
probability. ``RgclReference`` is RGCL's ``classifier_hateClipper`` (JingbiaoMei/RGCL src/model/classifier.py), also
written out by hand: img_proj / text_proj = Linear(D, map_dim), Dropout; mlp = Dropout, then Linear(., proj_dim),
[BatchNorm1d,] ReLU, Dropout per layer; output_layer = Linear(proj_dim, 1); the retrieval embedding ``mlp[:-2](x)``;
saved bare, as ``run_rac.py``'s ``torch.save(model.state_dict())``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cli.heads_cli import main as heads
from cli_helpers import invoke, invoke_result
from featstore.errors import FeatstoreError
from heads.hateclipper_checkpoint import BINARY_NOTE, head_from_checkpoint
from heads.spec import InputSpec, Task, TaskSpec
from test_cross_head import pooler_world  # noqa: F401

BINARY = TaskSpec([Task("label", "binary", 2, ["0", "1"])])
DI, DT, B = 7, 5, 6  # CLIP vision / text pooler widths (pooler_world's), rows


def randomise(module: nn.Module, seed: int) -> None:
    """Every parameter random (scale 0.4), then float64 and eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    module.double().eval()


class Reference(nn.Module):
    """engine.py's CLIPClassifier module tree (main.py's defaults: no pretrained map, caption_mode none)."""

    def __init__(self, n: int, mapping: int, pre: int, fusion: str, outputs: int = 1, aux: bool = True):
        super().__init__()
        self.fusion = fusion
        self.image_encoder = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))  # stand-ins for CLIP's models
        self.text_encoder = nn.Sequential(nn.Embedding(9, 4), nn.LayerNorm(4))
        self.image_map = self._map(DI, n, mapping)
        self.text_map = self._map(DT, n, mapping)
        width = {"align": n, "concat": 2 * n, "cross": n * n, "cross_nd": n * n, "align_concat": 3 * n}[fusion]
        layers = [nn.Dropout(0.4)]
        for i in range(pre):
            layers += [nn.Linear(width if i == 0 else n, n), nn.ReLU(), nn.Dropout(0.2)]
        self.pre_output = nn.Sequential(*layers)
        self.output = nn.Linear(n if pre else width, outputs)
        if aux:  # the fine-grained and unimodal heads (weight_*_loss > 0)
            self.output_pc1 = nn.Linear(n, 1)
            self.output_super = nn.Linear(15, 1)
            self.pre_output_image = nn.Sequential(nn.Dropout(0.4), nn.Linear(n, n))
            self.output_image = nn.Linear(n, 1)
        randomise(self, 5)

    @staticmethod
    def _map(d: int, n: int, layers: int) -> nn.Sequential:
        blocks = [nn.Linear(d, n), nn.Dropout(0.1)]
        for _ in range(1, layers):
            blocks += [nn.ReLU(), nn.Linear(n, n), nn.Dropout(0.1)]
        return nn.Sequential(*blocks)

    @torch.no_grad()
    def logit(self, x_img, x_txt):
        pi = F.normalize(self.image_map(x_img), p=2, dim=1)
        pt = F.normalize(self.text_map(x_txt), p=2, dim=1)
        if self.fusion == "align":
            f = torch.mul(pi, pt)
        elif self.fusion == "concat":
            f = torch.cat([pi, pt], dim=1)
        elif self.fusion == "align_concat":
            f = torch.cat([torch.mul(pi, pt), pi, pt], dim=1)
        else:
            f = torch.bmm(pi.unsqueeze(2), pt.unsqueeze(1))
            if self.fusion == "cross_nd":
                f[torch.eye(f.shape[1]).repeat(f.shape[0], 1, 1).bool()] = 0.0
            f = f.reshape(pi.shape[0], -1)
        return self.output(self.pre_output(f)).squeeze(dim=1)


def save(path, ref: Reference, **extra_keys):
    sd = {k: v.float().clone() for k, v in ref.state_dict().items()}
    sd.update(extra_keys)
    torch.save({"state_dict": sd, "epoch": 7, "global_step": 1200, "pytorch-lightning_version": "1.6.5"}, str(path))
    return path


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return {"img_pooled": torch.randn(B, DI, generator=g, dtype=torch.float64),
            "txt_pooled": torch.randn(B, DT, generator=g, dtype=torch.float64)}


@pytest.mark.parametrize("n, mapping, pre, fusion", [(4, 1, 1, "cross"), (3, 2, 2, "cross"), (6, 1, 3, "align"),
                                                    (5, 2, 0, "concat"), (4, 1, 2, "align_concat"),
                                                    (4, 1, 1, "cross_nd")])
def test_the_checkpoint_loads_whole_and_gives_the_references_probability(tmp_path, n, mapping, pre, fusion):
    ref = Reference(n, mapping, pre, fusion)
    path = save(tmp_path / "hc.ckpt", ref)
    given = {"fusion": "cross_nd"} if fusion == "cross_nd" else {}  # the shapes are cross's (module docstring)
    for logits_n in (1, 2):  # the reference's one unit as it is; widened to [0, w] for a two-logit head
        head, report = head_from_checkpoint("cross", InputSpec(DI, DT), BINARY, {**given, "binary_logits": logits_n},
                                            path)
        c = head.config
        assert (c.proj_dim, c.mapping_layers, c.pre_output_layers, c.fusion) == (n, mapping, pre, fusion)
        assert report.missing_keys == []
        assert sorted(report.groups["ignored: CLIP encoders (cached features are used)"]) == sorted(
            k for k in ref.state_dict() if k.startswith(("image_encoder.", "text_encoder.")))
        assert sorted(report.groups["ignored: auxiliary heads (training losses only)"]) == sorted(
            k for k in ref.state_dict() if k.startswith(("output_pc1.", "output_super.", "pre_output_image.",
                                                          "output_image.")))
        assert sorted(report.groups["used: classifier"]) == ["output.bias", "output.weight"]
        assert (BINARY_NOTE in report.notes) == (logits_n == 2)
        assert head.outputs.layers["label"].weight.shape[0] == logits_n
        head = head.double().eval()
        bt = batch(n)
        with torch.no_grad():
            logits = head(bt)["logits"]["label"]
        want = ref.logit(bt["img_pooled"], bt["txt_pooled"])
        torch.testing.assert_close(logits[:, 1] - logits[:, 0], want, atol=1e-6, rtol=0)  # float32 file
        torch.testing.assert_close(torch.softmax(logits, -1)[:, 1], torch.sigmoid(want), atol=1e-6, rtol=0)
        if logits_n == 1:
            assert torch.equal(logits[:, 0], torch.zeros(B, dtype=torch.float64))


def test_an_output_of_the_heads_own_shape_copies_and_another_count_is_ignored(tmp_path):
    ref = Reference(4, 1, 1, "align", outputs=3, aux=False)
    three = TaskSpec([Task("label", "multiclass", 3, ["a", "b", "c"])])
    head, report = head_from_checkpoint("cross", InputSpec(DI, DT), three, {}, save(tmp_path / "a.ckpt", ref))
    torch.testing.assert_close(head.state_dict()["outputs.layers.label.weight"].double(), ref.output.weight,
                               atol=1e-7, rtol=0)
    assert report.missing_keys == [] and BINARY_NOTE not in report.notes
    _, report = head_from_checkpoint("cross", InputSpec(DI, DT), BINARY, {}, save(tmp_path / "b.ckpt", ref))
    assert report.missing_keys == ["outputs.layers.label.bias", "outputs.layers.label.weight"]
    assert report.groups["ignored: classifier of another label count"] == ["output.bias", "output.weight"]


def test_variants_the_head_does_not_build_are_refused_in_one_line(tmp_path):
    ref = Reference(4, 1, 1, "cross", aux=False)
    sd = {k: v.float() for k, v in ref.state_dict().items()}
    cases = {
        "pretrained_map": ({**sd, "image_map.2.weight": torch.zeros(4, 4), "image_map.2.bias": torch.zeros(4)},
                           "was trained with --use_pretrained_map (image_map = Linear, ReLU, Linear from CLIP's "
                           "projection), which the cross head does not build; retrain it with --use_pretrained_map "
                           "False"),
        "attention_m": ({**sd, "gen_query.weight": torch.zeros(1, 4)}, "was trained with --fusion attention_m, which "
                        "the cross head does not build (it has cross, align and concat)"),
        "odd_width": ({**sd, "pre_output.1.weight": torch.zeros(4, 7)}, "fuses into 7 features at map_dim 4; the "
                      "cross head builds cross / cross_nd (16), align (4), concat (8) and align_concat (12)"),
        "replace_image": ({k: v for k, v in sd.items() if not k.startswith("image_map.")},
                          "has no image_map / text_map / output (a caption_mode replace_image run, or not "
                          "Hate-CLIPper's); pass a checkpoint saved by gokulkarthik/hateclipper's main.py"),
    }
    for name, (state, message) in cases.items():
        path = tmp_path / f"{name}.ckpt"
        torch.save({"state_dict": state}, str(path))
        with pytest.raises(FeatstoreError) as e:
            head_from_checkpoint("cross", InputSpec(DI, DT), BINARY, {}, path)
        assert str(e.value).startswith(f"checkpoint {str(path)!r} {message}"), name
        assert "\n" not in str(e.value)


def test_projected_features_are_refused_naming_the_pooler_array(tmp_path):
    path = save(tmp_path / "hc.ckpt", Reference(4, 1, 1, "cross"))
    with pytest.raises(FeatstoreError) as e:
        head_from_checkpoint("cross", InputSpec(4, DT), BINARY, {}, path)
    assert str(e.value) == ("checkpoint key 'image_map.0.weight' reads 7-wide vectors but the cached image features "
                            "are 4-wide; feed the features it was trained on: --image-pool pooler (CLIP's vision "
                            "pooler_output) of the same CLIP")


def test_heads_train_starts_from_the_checkpoint_and_predicts_the_references_probabilities(
        pooler_world, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    w = pooler_world
    ref = Reference(3, 1, 1, "cross")
    path = save(tmp_path / "hc.ckpt", ref)
    args = ["train", "--store", w["store"], "--dataset", w["data"], "--image", "clip-img", "--text", "clip-txt",
            "--image-pool", "pooler", "--text-pool", "pooler", "--head", "cross", "--init-checkpoint", path,
            "--epochs", 1, "--lr", 1e-30, "--warmup", 0, "--quiet", "--device", "cpu", "--threads", 1,
            "--out", tmp_path / "run"]
    printed = invoke(heads, args)
    run = tmp_path / "run" / "seed_0"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["head_config"]["proj_dim"] == 3 and cfg["head_config"]["fusion"] == "cross"
    assert cfg["checkpoint_load"]["missing_keys"] == [] and cfg["checkpoint_load"]["summary"][0] in printed
    saved = load_file(str(run / "model.safetensors"))
    torch.testing.assert_close(saved["outputs.layers.label.weight"].double(), ref.output.weight.detach(), atol=1e-6,
                               rtol=0)  # the reference's one unit, as it is (one AdamW step of lr 1e-30)

    import csv

    with open(run / "predictions_test.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    by_id = {s.id: s for s in w["ds"].samples}
    img = w["st"].open("clip-img").select([by_id[r[0]].image_key for r in rows], ["pooler"])["pooler"]
    txt = w["st"].open("clip-txt").select([r[0] for r in rows], ["pooler"])["pooler"]
    want = torch.sigmoid(ref.logit(torch.from_numpy(img).double(), torch.from_numpy(txt).double())).numpy()
    np.testing.assert_allclose([float(r[1]) for r in rows], want, atol=1e-5, rtol=0)

    res = invoke_result(heads, [a if a != "pooler" else "pooled" for a in args[:-1]] + [tmp_path / "again"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.splitlines()[-1] == (
        "error: checkpoint key 'image_map.0.weight' reads 7-wide vectors but the cached image features are 4-wide; "
        "feed the features it was trained on: --image-pool pooler (CLIP's vision pooler_output) of the same CLIP")


class RgclReference(nn.Module):
    """RGCL's classifier_hateClipper (module docstring)."""

    def __init__(self, map_dim: int, proj_dim: int, layers: int, fusion: str, batch_norm: bool = False):
        super().__init__()
        self.fusion = fusion
        self.img_proj = nn.Sequential(nn.Linear(DI, map_dim), nn.Dropout(0.2))
        self.text_proj = nn.Sequential(nn.Linear(DT, map_dim), nn.Dropout(0.2))
        d = {"align": map_dim, "concat": 2 * map_dim, "cross": map_dim ** 2}[fusion]
        blocks = [nn.Dropout(0.4)]
        for _ in range(layers):
            blocks += [nn.Linear(d, proj_dim)] + ([nn.BatchNorm1d(proj_dim)] if batch_norm else []) + [
                nn.ReLU(), nn.Dropout(0.1)]
            d = proj_dim
        self.mlp = nn.Sequential(*blocks)
        self.output_layer = nn.Linear(proj_dim, 1)
        randomise(self, 8)

    @torch.no_grad()
    def forward(self, x_img, x_txt):
        pi = F.normalize(self.img_proj(x_img), p=2, dim=1)
        pt = F.normalize(self.text_proj(x_txt), p=2, dim=1)
        if self.fusion == "concat":
            x = torch.cat((pi, pt), dim=1)
        elif self.fusion == "align":
            x = torch.mul(pi, pt)
        else:
            x = torch.bmm(pi.unsqueeze(2), pt.unsqueeze(1)).flatten(1, 2)
        return self.output_layer(self.mlp(x)).squeeze(1), self.mlp[:-2](x)


@pytest.mark.parametrize("map_dim, proj_dim, layers, fusion", [(4, 6, 2, "cross"), (5, 5, 1, "align")])
def test_an_rgcl_checkpoint_loads_whole_with_its_logit_and_retrieval_embedding(tmp_path, map_dim, proj_dim, layers,
                                                                                 fusion):
    ref = RgclReference(map_dim, proj_dim, layers, fusion)
    path = tmp_path / "best_model_3_0.75.pt"
    torch.save({k: v.float() for k, v in ref.state_dict().items()}, str(path))
    head, report = head_from_checkpoint("cross", InputSpec(DI, DT), BINARY, {}, path)
    c = head.config
    assert (c.proj_dim, c.widths(), c.mapping_layers, c.fusion) == (map_dim, [proj_dim] * layers, 1, fusion)
    assert report.missing_keys == [] and not report.ignored_keys
    assert report.notes[-1].startswith("RGCL's own checkpoint")
    head = head.double().eval()
    bt = batch(9)
    with torch.no_grad():
        out = head(bt)
    logit, embed = ref(bt["img_pooled"], bt["txt_pooled"])
    z = out["logits"]["label"]
    torch.testing.assert_close(z[:, 1] - z[:, 0], logit, atol=1e-6, rtol=0)
    torch.testing.assert_close(out["embed"], embed, atol=1e-6, rtol=0)  # what RGCL retrieves with


def test_an_rgcl_checkpoint_with_batch_norm_is_refused(tmp_path):
    path = tmp_path / "bn.pt"
    torch.save(RgclReference(4, 4, 1, "align", batch_norm=True).state_dict(), str(path))
    with pytest.raises(FeatstoreError) as e:
        head_from_checkpoint("cross", InputSpec(DI, DT), BINARY, {}, path)
    assert str(e.value) == (f"checkpoint {str(path)!r} was trained with --batch_norm True (BatchNorm1d in mlp), which "
                            "the cross head does not build; retrain it with --batch_norm False, as the published run")


def test_another_head_is_refused(tmp_path):
    from heads.hateclipper_checkpoint import load_state
    from heads.models import create_head

    with pytest.raises(FeatstoreError) as e:
        load_state(create_head("concat", InputSpec(DI, DT), BINARY), {}, "x.ckpt")
    assert str(e.value) == "heads.hateclipper_checkpoint loads a 'cross' head; build the run with --head cross"
