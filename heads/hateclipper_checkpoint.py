"""Load a Hate-CLIPper checkpoint (a file saved by gokulkarthik/hateclipper's ``main.py``) or an RGCL one
(JingbiaoMei/RGCL's ``run_rac.py``) into a ``cross`` head, whole, the output layer included.

The reference's model is ``engine.py``'s ``CLIPClassifier``, a LightningModule. ``main.py``'s ``ModelCheckpoint``
saves it with ``save_weights_only``, so the file is ``{"state_dict": ..., "epoch", "global_step", ...}`` (read by
``heads.checkpoints.read_weights``, which takes the ``state_dict``). Its keys map as follows:

* ``image_encoder.*`` / ``text_encoder.*`` (CLIP's vision / text models, frozen by default: ``--freeze_image_encoder``
  and ``--freeze_text_encoder`` are True) -> ignored "CLIP encoders (cached features are used)". The head reads the
  cached ``pooler_output`` of the same CLIP instead (``--image-pool pooler --text-pool pooler``).
* ``image_map`` / ``text_map`` (``nn.Sequential(Linear(D, n), Dropout[, ReLU, Linear(n, n), Dropout]...)``) ->
  ``img_proj.map`` / ``txt_proj.map``, at the same indices.
* ``pre_output`` (``nn.Sequential(Dropout, Linear(f, n), ReLU, Dropout[, Linear(n, n), ReLU, Dropout]...)``):
  the Linear at index 1 + 3k -> ``pre_output.linears.k``.
* ``output`` (``Linear(n, 1)``, trained with BCE) -> ``outputs.layers.<task>``, as it is: the cross head's binary
  output is that one unit (``binary_logits=1``, its logits ``[0, z]``). Into a ``binary_logits=2`` head it becomes
  rows ``[0, w]`` and bias ``[0, b]``, so ``softmax(z)[1] = sigmoid(w.h + b)``, exactly the reference's
  probability. A Linear of the head's own shape (22 fine-grained outputs) is copied as is. Any other label count
  is ignored "classifier of another label count" and left initialised.
* the auxiliary heads (``output_pc*``, ``output_attack*``, ``output_super``: fine-grained;
  ``pre_output_image`` / ``_text``, ``output_image`` / ``_text``: the unimodal losses) -> ignored "auxiliary heads
  (training losses only)". They never reach the reference's main logits.

Refused in one line: a ``use_pretrained_map`` file (``image_map`` = Linear(D, projection_dim), ReLU,
Linear(projection_dim, n): not this head's projection); ``attention_m`` (``gen_query`` / ``gen_key``);
``caption_mode replace_image`` (no ``image_map``); and a file that holds no
``image_map`` / ``text_map`` / ``pre_output`` / ``output``.

RGCL's own checkpoints (JingbiaoMei/RGCL ``src/run_rac.py`` saves ``model.state_dict()`` of
``src/model/classifier.py``'s ``classifier_hateClipper``: the same forward with one mapping layer and
``proj_dim`` wide pre-output layers) load the same way (``LAYOUTS["rgcl"]``): ``img_proj`` / ``text_proj``
(Linear, Dropout) -> ``img_proj.map`` / ``txt_proj.map``; ``mlp`` (Dropout, then Linear, ReLU, Dropout per
layer) -> ``pre_output.linears``; ``output_layer`` -> the output as above. A ``--batch_norm True`` RGCL file
(BatchNorm1d in ``mlp``) is refused in one line: the cross head has no BatchNorm there (the published run has
none).

``config_from_checkpoint`` reads the sizes from the shapes where the head config gives none: ``proj_dim`` (the
rows of ``image_map.0``), ``mapping_layers``, ``pre_output_layers``, ``pre_output_dim`` (RGCL's ``proj_dim``) and
``fusion`` (the width of the fused vector: n^2 cross, n align, 2n concat, 3n align_concat; where two coincide,
at n = 2 or 3, cross is assumed unless ``fusion`` is given). The shapes cannot tell ``cross_nd`` from ``cross``
(``cross_nd`` zeroes the diagonal and has the same shapes: pass ``--set fusion=cross_nd`` for such a file), nor
the ``drop_probs``, which are inactive in evaluation; the defaults are ``main.py``'s.

The cached features must be the ones the file was trained on: ``heads.clip_provenance`` checks them against
the file's own CLIP encoders (geometry refused in one line, weights compared and noted).
"""
from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from featstore.errors import FeatstoreError

from .checkpoints import LoadReport, head_from_checkpoint as build_from_checkpoint
from .clip_provenance import check_features, compare_encoders
from .models.cross import fused_width
from .visualbert_checkpoint import copy_tensors, finish_load

HOW_TO_GET = ("pass a checkpoint saved by gokulkarthik/hateclipper's main.py (checkpoints/<run>-epoch=NN.ckpt, "
              "a PyTorch Lightning file whose state_dict holds image_map, text_map, pre_output and output) or by "
              "JingbiaoMei/RGCL's run_rac.py (ckpt/best_model_*.pt: img_proj, text_proj, mlp, output_layer)")
WANTED = "Hate-CLIPper projections (keys image_map.0.weight, text_map.0.weight)"
POOLER = {"img_proj": "--image-pool pooler (CLIP's vision pooler_output)",
          "txt_proj": "--text-pool pooler (CLIP's text pooler_output)"}
AUXILIARY = ("output_pc", "output_attack", "output_super", "pre_output_image.", "pre_output_text.", "output_image.",
             "output_text.")
LAYOUTS = {  # the reference -> where it keeps (image map, text map, pre-output Sequential, output Linear)
    "hateclipper": ("image_map", "text_map", "pre_output", "output"),
    "rgcl": ("img_proj", "text_proj", "mlp", "output_layer"),
}
NAMES = {"hateclipper": "Hate-CLIPper", "rgcl": "RGCL"}
_SEQ = re.compile(r"^(image_map|text_map|pre_output|img_proj|text_proj|mlp)\.(\d+)\.(\w+)$")
NOTE = ("{name}'s own checkpoint: projections, pre-output layers and output layer load; its CLIP encoders "
        "are not read (the head reads cached CLIP pooler_output features)")
BINARY_NOTE = ("output: the reference's one BCE logit w.h + b became the two-logit rows [0, w] / [0, b], so "
               "softmax(z)[1] = sigmoid(w.h + b)")


def layout_of(keys) -> str:
    """``"rgcl"`` for RGCL's classifier_hateClipper names, else ``"hateclipper"`` (checked by ``check_layout``)."""
    keys = set(keys)
    return "rgcl" if "img_proj.0.weight" in keys and "output_layer.weight" in keys else "hateclipper"


def map_key(key: str, task: str, layout: str = "hateclipper") -> Tuple[Any, str]:
    """(our key or None, report group) of a reference key (module docstring)."""
    image, text, pre, out = LAYOUTS[layout]
    if key.startswith(("image_encoder.", "text_encoder.")):
        return None, "CLIP encoders (cached features are used)"
    if key.startswith(AUXILIARY):
        return None, "auxiliary heads (training losses only)"
    if key in (f"{out}.weight", f"{out}.bias"):
        return (f"outputs.layers.{task}.{key.rsplit('.', 1)[1]}" if task else None), "classifier"
    m = _SEQ.match(key)
    if m is None or m.group(1) not in (image, text, pre):
        return None, "other (not in the reference's forward)"
    part, index, leaf = m.group(1), int(m.group(2)), m.group(3)
    if part == pre:
        return f"pre_output.linears.{(index - 1) // 3}.{leaf}", "pre-output layers"
    return f"{'img_proj' if part == image else 'txt_proj'}.map.{index}.{leaf}", "projections"


def check_layout(keys, path: str) -> str:
    """The reference's layout of ``keys`` (``LAYOUTS``); one-line refusals of the variants this head does not
    compute (module docstring)."""
    keys = set(keys)
    layout = layout_of(keys)
    image, text, pre, out = LAYOUTS[layout]
    if f"{image}.0.weight" not in keys or f"{text}.0.weight" not in keys or f"{out}.weight" not in keys:
        raise FeatstoreError(f"checkpoint {path!r} has no image_map / text_map / output (a caption_mode "
                             f"replace_image run, or not Hate-CLIPper's); {HOW_TO_GET}")
    if f"{image}.2.weight" in keys:
        raise FeatstoreError(f"checkpoint {path!r} was trained with --use_pretrained_map (image_map = Linear, ReLU, "
                             "Linear from CLIP's projection), which the cross head does not build; retrain it with "
                             "--use_pretrained_map False")
    if any(k.startswith(("gen_query.", "gen_key.")) for k in keys):
        raise FeatstoreError(f"checkpoint {path!r} was trained with --fusion attention_m, which the cross head does "
                             "not build (it has cross, align and concat)")
    if any(k.startswith(pre + ".") and k.endswith("running_mean") for k in keys):
        raise FeatstoreError(f"checkpoint {path!r} was trained with --batch_norm True (BatchNorm1d in {pre}), which "
                             "the cross head does not build; retrain it with --batch_norm False, as the published run")
    return layout


def linear_indices(shapes: Dict[str, tuple], part: str):
    return sorted(int(m.group(2)) for k in shapes for m in [_SEQ.match(k)] if m and m.group(1) == part
                  and m.group(3) == "weight")


def fusion_of(width: int, n: int, given: Dict[str, Any], path: str) -> str:
    """The reference's fusion from the fused vector's ``width`` at projection width ``n``."""
    if "fusion" in given:
        return given["fusion"]
    told = ("align_concat", "align", "concat", "cross")  # cross_nd has cross's width; equal widths: cross wins
    by_width = {fused_width(f, n): f for f in told}
    if width not in by_width:
        raise FeatstoreError(f"checkpoint {path!r} fuses into {width} features at map_dim {n}; the cross head "
                             f"builds cross / cross_nd ({fused_width('cross', n)}), align ({n}), concat "
                             f"({fused_width('concat', n)}) and align_concat ({fused_width('align_concat', n)})")
    return by_width[width]


def config_from_checkpoint(shapes: Dict[str, tuple], given: Dict[str, Any], path: str = "") -> Dict[str, Any]:
    """``given`` completed with ``proj_dim``, ``mapping_layers``, ``pre_output_layers``, ``pre_output_dim`` and
    ``fusion`` as the reference's shapes imply them."""
    image, _, pre, out = LAYOUTS[check_layout(shapes, path)]
    n = int(shapes[f"{image}.0.weight"][0])
    layers = linear_indices(shapes, pre)
    width = int(shapes[f"{pre}.1.weight"][1] if layers else shapes[f"{out}.weight"][1])
    found = {"proj_dim": n, "mapping_layers": len(linear_indices(shapes, image)), "pre_output_layers": len(layers)}
    if layers and int(shapes[f"{pre}.1.weight"][0]) != n:
        found["pre_output_dim"] = int(shapes[f"{pre}.1.weight"][0])  # RGCL's proj_dim; Hate-CLIPper's is map_dim
    found = dict(found, **given)
    found["fusion"] = fusion_of(width, int(found["proj_dim"]), given, path)
    return found


def placed(report: LoadReport, key: str, target: str, have, want) -> bool:
    """Whether ``key`` (shape ``have``) fits ``target`` (``want``): the one-logit output fits a two-logit binary
    task (widened by ``widen_binary``); another label count is ignored; a projection's input width names the
    pooled array the reference reads; any other mismatch is refused in one line."""
    if have == want:
        return True
    if target.startswith("outputs.layers."):
        if have[0] == 1 and want[0] == 2 and have[1:] == want[1:]:
            report.note(BINARY_NOTE)
            return True
        return report.other_label_count(key, have, want)
    side = target.split(".")[0]
    if target.endswith(".map.0.weight") and have[0] == want[0]:
        raise FeatstoreError(f"checkpoint key {key!r} reads {have[1]}-wide vectors but the cached "
                             f"{'image' if side == 'img_proj' else 'text'} features are {want[1]}-wide; feed the "
                             f"features it was trained on: {POOLER[side]} of the same CLIP")
    raise FeatstoreError(f"checkpoint key {key!r} has shape {tuple(have)} but the head's {target!r} has "
                         f"{tuple(want)}; build the head with the checkpoint's sizes (proj_dim, mapping_layers, "
                         "pre_output_layers, fusion)")


def widen_binary(mapped: Dict[str, Tensor], own: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """The one-logit output rows put behind a zero row, where the head has two (``placed``)."""
    out = dict(mapped)
    for k, v in mapped.items():
        if k.startswith("outputs.layers.") and v.shape[0] == 1 and own[k].shape[0] == 2:
            out[k] = torch.cat([torch.zeros_like(v), v], dim=0)
    return out


def load_state(head: nn.Module, sd: Dict[str, Tensor], path: str,
               features: Optional[Dict[str, Any]] = None) -> LoadReport:
    """Copy the reference's tensors of ``sd`` into the ``cross`` ``head`` (in place) and report; ``features``
    (``TrainData.meta["features"]``) is checked against the file's CLIP first (``check_features``)."""
    if getattr(head, "head_name", "") != "cross":
        raise FeatstoreError("heads.hateclipper_checkpoint loads a 'cross' head; build the run with --head cross")
    layout = check_layout(sd, path)
    checked = check_features({k: tuple(v.shape) for k, v in sd.items()}, features, layout, path)
    checked += compare_encoders(sd, features)
    tasks = [t.name for t in head.outputs.tasks]
    task = tasks[0] if len(tasks) == 1 else ""
    report, mapped = copy_tensors(head, sd, path, lambda key: map_key(key, task, layout), placed, WANTED,
                                  HOW_TO_GET, "layer counts (mapping_layers, pre_output_layers)", absent_ok=(),
                                  required="projections")
    report.note(NOTE.format(name=NAMES[layout]))
    for note in checked:
        report.note(note)
    return finish_load(head, widen_binary(mapped, head.state_dict()), report)


def head_from_checkpoint(name: str, inputs, spec, head_cfg: Dict[str, Any], path, *, trust_pickle: bool = False,
                         features: Optional[Dict[str, Any]] = None) -> Tuple[nn.Module, LoadReport]:
    """Build the cross head with the sizes the checkpoint at ``path`` implies where ``head_cfg`` gives none,
    and load it -> (head, report); ``features``: the cached sets' provenance (``load_state``)."""
    sizes = lambda shapes, given: config_from_checkpoint(shapes, given, str(path))  # noqa: E731
    load = lambda head, sd, p: load_state(head, sd, p, features)  # noqa: E731
    return build_from_checkpoint("cross", name, inputs, spec, head_cfg, path, trust_pickle=trust_pickle,
                                 config_from_checkpoint=sizes, load_state=load, how_to_get=HOW_TO_GET)
