"""``--init-checkpoint`` with MMF's own model files (an MMF run's ``model.pth``, the zoo's fine-tuned Hateful
Memes models) for ``text-bert``, ``concat-bert``, ``late-fusion`` and ``mmbt`` (``heads.text_bert_checkpoint``
over ``heads.mmf_checkpoint``; the region heads: tests/test_mmf_region_checkpoints.py).

Each file is written here in MMF's layout, its prefixes taken from MMF's module tree, not from the heads:

* ``UnimodalText``: ``base.encoder`` is the BertModel (``build_text_encoder`` returns ``TextEncoder.module``),
  ``classifier`` the MLPClassifer (``build_classifier_layer`` returns ``ClassifierLayer.module``):
  ``classifier.layers.N`` = Linear, BatchNorm1d, ReLU, Dropout per hidden layer, then the final Linear;
* ``ConcatBERT`` / ``LateFusion`` (``FusionBase``): ``base.text`` the BertModel, ``base.modal`` the ResNet-152
  (``ResNet152ImageEncoder.model``); ``classifier`` / ``text_classifier`` + ``modal_classifier``;
* ``MMBT``: ``model.bert.mmbt.transformer`` the BertModel, ``model.bert.mmbt.modal_encoder`` its
  ``proj_embeddings``, BERT's tables and embedding LayerNorm again (shared modules) and the ResNet under
  ``encoder``;
  ``model.classifier.0`` BertPredictionHeadTransform, ``model.classifier.1`` the Linear.

``wrapped``: the same with the encoder factory kept in the tree (``module.X`` next to ``_module.module.X`` and
``_module.embeddings.X``) and a DataParallel ``module.`` before every key. The BERT is transformers' own
(tiny, random); the references are computed from the file's tensors directly (transformers' BertModel,
``mlp_reference``, ``test_mmbt.mmbt_reference``), float64.
"""
from __future__ import annotations

import pytest
import torch

from featstore.errors import FeatstoreError
from heads.models import create_head
from heads.text_bert_checkpoint import head_from_checkpoint
from test_mmbt import CFG as MMBT_CFG
from test_mmbt import image_batch, mmbt_reference
from test_text_bert import B, BINARY, BOTH, CFG, DI, H, MLP, TEXT, bert_pooled, mlp_reference, tiny_bert, token_batch

IMAGE_GROUP = "ignored: fine-tuned ResNet-152 (featstore extract reads it)"
DUPLICATES = "ignored: duplicate registrations"
K = BINARY.tasks[0].num_outputs


def mlp_classifer(in_dim: int, seed: int, labels: int = K):
    """MLPClassifer's ``layers`` tensors (hidden ``MLP``, batch_norm) by their ``layers.N`` names, random;
    BatchNorm running statistics away from 0 / 1."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.4  # noqa: E731
    sd, n, d = {}, 0, in_dim
    for h in MLP:
        sd.update({f"layers.{n}.weight": r(h, d), f"layers.{n}.bias": r(h),
                   f"layers.{n + 1}.weight": 1 + r(h), f"layers.{n + 1}.bias": r(h),
                   f"layers.{n + 1}.running_mean": r(h),
                   f"layers.{n + 1}.running_var": 0.5 + torch.rand(h, generator=g),
                   f"layers.{n + 1}.num_batches_tracked": torch.tensor(7)})
        n, d = n + 4, h
    sd.update({f"layers.{n}.weight": r(labels, d), f"layers.{n}.bias": r(labels)})
    return sd


def under(prefix: str, sd):
    return {prefix + k: v for k, v in sd.items()}


def bert_tensors(prefix: str, bert, wrapped: bool):
    """The BertModel's tensors under MMF's text-encoder ``prefix``; ``wrapped``: the factory's three copies."""
    own = {k: v.clone() for k, v in bert.state_dict().items()}
    if not wrapped:
        return under(prefix, own)
    emb = {k: v for k, v in own.items() if k.startswith("embeddings.")}
    return {**under(prefix + "module.", own), **under(prefix + "_module.module.", own),
            **under(prefix + "_module.", emb)}


def resnet(prefix: str):
    g = torch.Generator().manual_seed(99)
    return {prefix + "model.0.weight": torch.randn(4, 3, 7, 7, generator=g),
            prefix + "model.1.running_mean": torch.randn(4, generator=g)}


def mlp_forward(x, sd, prefix: str):
    """``mlp_reference`` on MMF's ``<prefix>layers.N`` tensors: the hidden blocks, then the last Linear."""
    last = max(int(k[len(prefix):].split(".")[1]) for k in sd if k.startswith(prefix))
    hidden = {k: v for k, v in sd.items() if k.startswith(prefix) and not k.startswith(f"{prefix}layers.{last}.")}
    final = {"final.weight": sd[f"{prefix}layers.{last}.weight"], "final.bias": sd[f"{prefix}layers.{last}.bias"]}
    return mlp_reference(x, {**hidden, **final}, prefix=prefix + "layers.", out="final.")


def mmf_file(family: str, bert, wrapped: bool, labels: int = K):
    """(MMF's state_dict for ``family``, the forward of the reference on a batch)."""
    if family == "text-bert":
        sd = {**bert_tensors("base.encoder.", bert, wrapped), **under("classifier.", mlp_classifer(H, 5, labels))}
        ref = lambda bt, pooled: mlp_forward(pooled, sd, "classifier.")  # noqa: E731
    elif family == "concat-bert":
        sd = {**bert_tensors("base.text.", bert, wrapped), **resnet("base.modal."),
              **under("classifier.", mlp_classifer(H + DI, 6, labels))}
        ref = lambda bt, pooled: mlp_forward(torch.cat([pooled, bt["img_pooled"]], -1), sd, "classifier.")  # noqa: E731
    elif family == "late-fusion":
        sd = {**bert_tensors("base.text.", bert, wrapped), **resnet("base.modal."),
              **under("text_classifier.", mlp_classifer(H, 7, labels)),
              **under("modal_classifier.", mlp_classifer(DI, 8, labels))}
        ref = lambda bt, pooled: (mlp_forward(pooled, sd, "text_classifier.")  # noqa: E731
                                  + mlp_forward(bt["img_pooled"], sd, "modal_classifier.")) / 2
    else:
        sd = mmbt_file(bert, wrapped, labels)
        ref = None
    return sd, ref


def mmbt_file(bert, wrapped: bool, labels: int = K, encoder=None, width: int = DI):
    """MMF's MMBT file; ``encoder``: the modal encoder's tensors (a ResNet's unless given; MMBT-Region's fc7),
    ``width`` the modal width ``proj_embeddings`` reads."""
    g = torch.Generator().manual_seed(12)
    r = lambda *s: torch.randn(*s, generator=g) * 0.3  # noqa: E731
    own = bert.state_dict()  # ModalEmbeddings holds BERT's tables and LayerNorm again (shared: saved twice)
    tables = {f"{t}.weight": own[f"embeddings.{t}.weight"].clone()
              for t in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm")}
    tables["LayerNorm.bias"] = own["embeddings.LayerNorm.bias"].clone()
    return {**bert_tensors("model.bert.mmbt.transformer.", bert, wrapped),
            **under("model.bert.mmbt.modal_encoder.", tables),
            **(resnet("model.bert.mmbt.modal_encoder.encoder.") if encoder is None else encoder),
            "model.bert.mmbt.modal_encoder.proj_embeddings.weight": r(H, width),
            "model.bert.mmbt.modal_encoder.proj_embeddings.bias": r(H),
            "model.classifier.0.dense.weight": r(H, H), "model.classifier.0.dense.bias": r(H),
            "model.classifier.0.LayerNorm.weight": 1 + r(H), "model.classifier.0.LayerNorm.bias": r(H),
            "model.classifier.1.weight": r(labels, H), "model.classifier.1.bias": r(labels)}


def save(tmp_path, sd, wrapped: bool):
    if wrapped:
        sd = under("module.", sd)  # DataParallel
    path = tmp_path / "model.pth"
    torch.save({"model": sd}, str(path))
    return path


def build(family: str, path):
    inputs = TEXT if family == "text-bert" else BOTH
    cfg = MMBT_CFG if family == "mmbt" else CFG
    return head_from_checkpoint(family, inputs, BINARY, dict(cfg), path)


@pytest.mark.parametrize("wrapped", [False, True])
@pytest.mark.parametrize("family", ["text-bert", "concat-bert", "late-fusion", "mmbt"])
def test_mmf_model_file_loads_whole_and_computes_mmfs_forward(tmp_path, family, wrapped):
    bert = tiny_bert()
    sd, ref = mmf_file(family, bert, wrapped)
    head, report = build(family, save(tmp_path, sd, wrapped))
    assert report.missing_keys == []
    # the report names the keys without DataParallel's module.
    if family != "text-bert":
        assert sorted(report.groups[IMAGE_GROUP]) == sorted(k for k in sd if ".model." in k)
        # no run's image sets here: the note says where MMF's vectors come from (tests/test_mmf_finetuned_resnet.py)
        assert report.notes[-2].endswith("the classifier load")
        assert report.notes[-1] == (
            f"MMF's fine-tuned ResNet-152 ({len(report.groups[IMAGE_GROUP])} tensors) is read by featstore extract, "
            "not by the head: the cached image vectors are MMF's only when extracted from this file (`featstore "
            f"extract --extractor grid --set weights={report.path} --set preprocess=mmf-hateful-memes`)")
    else:
        assert report.notes[-1] == "MMF's own unimodal_text file (model.pth): BERT (pooler included) and the " \
            "classifier load"
    if wrapped:
        assert sorted(report.groups[DUPLICATES]) == sorted(k for k in sd if "._module." in k)
    else:
        assert DUPLICATES not in report.groups
    if family == "mmbt":
        shared = report.groups["ignored: shared copies of BERT's tables"]
        assert sorted(shared) == sorted(f"model.bert.mmbt.modal_encoder.{t}" for t in (
            "word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight",
            "LayerNorm.weight", "LayerNorm.bias"))
    head = head.double().eval()
    bt = image_batch(4) if family != "text-bert" else token_batch(seed=4)
    with torch.no_grad():
        out = head(bt)["logits"]["label"]
    if family == "mmbt":
        ours = {"modal_encoder.proj_embeddings.weight": sd["model.bert.mmbt.modal_encoder.proj_embeddings.weight"],
                "modal_encoder.proj_embeddings.bias": sd["model.bert.mmbt.modal_encoder.proj_embeddings.bias"],
                "outputs.layers.label.weight": sd["model.classifier.1.weight"],
                "outputs.layers.label.bias": sd["model.classifier.1.bias"],
                **{"transform." + k[len("model.classifier.0."):]: v for k, v in sd.items()
                   if k.startswith("model.classifier.0.")}}
        want, _ = mmbt_reference(bert, ours, bt["txt_ids"], bt["txt_mask"], bt["img_pooled"])
    else:
        want = ref(bt, bert_pooled(bert, bt["txt_ids"], bt["txt_mask"]))
    assert out.shape == (B, K)
    torch.testing.assert_close(out, want, atol=1e-8, rtol=0)


def test_a_classifier_of_another_label_count_is_ignored_and_left_initialised(tmp_path):
    sd, _ = mmf_file("text-bert", tiny_bert(), False, labels=3)
    path = save(tmp_path, sd, False)
    torch.manual_seed(21)
    head, report = build("text-bert", path)
    assert report.groups["ignored: classifier of another label count"] == ["classifier.layers.8.bias",
                                                                              "classifier.layers.8.weight"]
    assert report.missing_keys == ["outputs.layers.label.bias", "outputs.layers.label.weight"]
    assert any("another label count" in n for n in report.notes)
    torch.manual_seed(21)
    fresh = create_head("text-bert", TEXT, BINARY, **dict(CFG, hidden_size=H, num_hidden_layers=2,
                                                          intermediate_size=37, vocab_size=100,
                                                          max_position_embeddings=24))
    for k in report.missing_keys:
        torch.testing.assert_close(head.state_dict()[k], fresh.state_dict()[k], atol=0, rtol=0)
    torch.testing.assert_close(head.state_dict()["mlp.1.running_var"], sd["classifier.layers.1.running_var"])


def test_an_mmf_file_of_another_model_is_refused_naming_its_head(tmp_path):
    sd, _ = mmf_file("concat-bert", tiny_bert(), False)
    with pytest.raises(FeatstoreError, match="--head concat-bert"):
        build("text-bert", save(tmp_path, sd, False))
