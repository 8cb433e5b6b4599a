"""Batches cut to their real tokens / regions (heads.batching): every head gives the untrimmed outputs and
gradients, padded positions change nothing, evaluation in length order comes back in row order, and
length bucketing covers every row once."""
from __future__ import annotations

import pytest
import torch

from featstore.errors import FeatstoreError
from heads.batching import bucketed_batches, gather_trimmed, length_key, length_sorted, row_lengths, trim_batch
from heads.data import TrainData
from heads.models import HEADS, create_head
from heads.spec import InputSpec, Task, TaskSpec
from heads.train import TrainConfig, predict_logits, train

DI, DT, R, T, N, V = 12, 16, 10, 24, 12, 40
SPEC = TaskSpec([Task("label", "binary", 2, ["0", "1"]), Task("genre", "multilabel", 3)])
VIL = dict(hidden_size=DT, num_attention_heads=2, intermediate_size=20, num_hidden_layers=4, text_start_layer=2,
           v_hidden_size=12, v_num_attention_heads=2, v_intermediate_size=14, v_num_hidden_layers=2,
           bi_hidden_size=8, bi_num_attention_heads=2, v_biattention_id=[0, 1], t_biattention_id=[2, 3],
           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, v_hidden_dropout_prob=0.0,
           v_attention_probs_dropout_prob=0.0)
# every registered head, dropout off so train-mode outputs and gradients are comparable too
CONFIGS = {
    "vilbert": ("vilbert", VIL),
    "vilbert-concat-noglobal": ("vilbert", dict(VIL, fusion_method="concat", global_region=False)),
    "singlestream": ("singlestream", dict(hidden=8, heads=2, layers=2, ffn=16, dropout=0.0, max_text_len=32)),
    "visualbert": ("visualbert", dict(hidden_size=8, num_attention_heads=2, num_hidden_layers=2, intermediate_size=16,
                                      vocab_size=V, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0)),
    "visualbert-vqa-pool": ("visualbert", dict(hidden_size=8, num_attention_heads=2, num_hidden_layers=1,
                                               intermediate_size=16, vocab_size=V, max_position_embeddings=32,
                                               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                               pooler_strategy="vqa")),
    "text-bert": ("text-bert", dict(hidden_size=8, num_attention_heads=2, num_hidden_layers=2, intermediate_size=16,
                                    vocab_size=V, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                    attention_probs_dropout_prob=0.0, hidden=[6, 5], dropout=0.0)),
    "concat-bert": ("concat-bert", dict(hidden_size=8, num_attention_heads=2, num_hidden_layers=1,
                                        intermediate_size=16, vocab_size=V, max_position_embeddings=32,
                                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, hidden=[6],
                                        dropout=0.0)),
    "late-fusion": ("late-fusion", dict(hidden_size=8, num_attention_heads=2, num_hidden_layers=1,
                                        intermediate_size=16, vocab_size=V, max_position_embeddings=32,
                                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, hidden=[6],
                                        dropout=0.0)),
    "mmbt": ("mmbt", dict(hidden_size=8, num_attention_heads=2, num_hidden_layers=2, intermediate_size=16,
                          vocab_size=V, max_position_embeddings=32, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0)),
    "mmbt-region": ("mmbt-region", dict(hidden_size=8, num_attention_heads=2, num_hidden_layers=2,
                                        intermediate_size=16, vocab_size=V, max_position_embeddings=32,
                                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_regions=R,
                                        fc7_dim=7)),
    "gnn": ("gnn", dict(hidden=8, num_layers=2, dropout=0.0)),
    "gnn-gat-knn": ("gnn", dict(hidden=8, layer="gat", gat_heads=2, region_edges="knn", knn_k=2, cross_all=True,
                                dropout=0.0)),
    "gnn-sage": ("gnn", dict(hidden=8, layer="sage", dropout=0.0)),
    "refnet": ("refnet", dict(base="vilbert", base_cfg=VIL, refiner_hidden=[6], zeta=0.0)),
    "concat": ("concat", dict(hidden=[8], dropout=0.0)),
    "cross": ("cross", dict(proj_dim=4, hidden=[8], dropout=0.0, proj_dropout=0.0)),
    "text-only": ("text-only", dict(hidden=[8], dropout=0.0)),
    "image-only": ("image-only", dict(hidden=[8], dropout=0.0)),
    "image-region": ("image-region", dict(hidden=[8], dropout=0.0, num_regions=R)),
}


def features(seed: int = 0, pooled: bool = False) -> dict:
    """N rows stored at T tokens / R regions; real runs much shorter (one region mask with a gap), padded
    positions filled with large garbage."""
    g = torch.Generator().manual_seed(seed)
    t_len = torch.tensor([2, 5, 7, 3, 4, 6, 2, 3, 5, 7, 4, 3])
    r_len = torch.tensor([1, 4, 6, 2, 3, 5, 6, 1, 2, 3, 4, 5])
    t_mask = torch.arange(T)[None] < t_len[:, None]
    r_mask = torch.arange(R)[None] < r_len[:, None]
    r_mask[2, 3] = False  # not a prefix: a hole inside the real run
    ids = torch.where(t_mask, torch.randint(1, V, (N, T), generator=g), torch.randint(0, V, (N, T), generator=g))
    f = dict(txt_tokens=torch.randn(N, T, DT, generator=g), txt_mask=t_mask, txt_ids=ids,
             img_regions=torch.randn(N, R, DI, generator=g), img_mask=r_mask, img_boxes=torch.rand(N, R, 5, generator=g))
    for k, m in (("txt_tokens", t_mask), ("img_regions", r_mask), ("img_boxes", r_mask)):
        f[k] = torch.where(m[..., None], f[k], 100 * torch.randn(f[k].shape, generator=g))
    if pooled:
        f["img_pooled"], f["txt_pooled"] = torch.randn(N, DI, generator=g), torch.randn(N, DT, generator=g)
    return f


def build(key: str, seed: int = 0):
    name, cfg = CONFIGS[key]
    torch.manual_seed(seed)
    return create_head(name, InputSpec(img_dim=DI, txt_dim=DT, img_regions=R, txt_tokens=T, img_boxes=True,
                                       img_pooled=False, txt_pooled=False, txt_ids=True), SPEC, **cfg)


def test_every_registered_head_is_covered():
    assert {name for name, _ in CONFIGS.values()} == set(HEADS.names())


def test_row_lengths_and_cuts_by_hand():
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    assert row_lengths(mask).tolist() == [2, 3, 0]
    f = {"txt_tokens": torch.arange(15.0).view(3, 5, 1), "txt_mask": mask, "txt_pooled": torch.ones(3, 2)}
    lengths = {"txt_mask": row_lengths(mask)}
    got = gather_trimmed(f, torch.tensor([0, 1]), lengths)
    assert got["txt_tokens"].shape == (2, 3, 1) and got["txt_mask"].shape == (2, 3)
    assert got["txt_tokens"][:, :, 0].tolist() == [[0.0, 1.0, 2.0], [5.0, 6.0, 7.0]]
    assert got["txt_pooled"].shape == (2, 2)
    # a row with no real token keeps one position (attention over all-masked keys is not padding-free)
    assert gather_trimmed(f, torch.tensor([2]), lengths)["txt_tokens"].shape == (1, 1, 1)
    assert trim_batch({k: v[:2] for k, v in f.items()})["txt_tokens"].shape == (2, 3, 1)


@pytest.mark.parametrize("key", list(CONFIGS))
def test_trimmed_batch_gives_untrimmed_outputs_and_gradients(key):
    f = features(pooled=key in ("concat", "cross"))
    lengths = {m: row_lengths(f[m]) for m in ("txt_mask", "img_mask")}
    idx = torch.tensor([0, 3, 4, 6, 7, 11])  # longest text 4 of 24, regions 6 of 10
    full = {k: v.index_select(0, idx) for k, v in f.items()}
    cut = gather_trimmed(f, idx, lengths)
    assert cut["txt_tokens"].shape[1] == 4 and cut["img_regions"].shape[1] == 6 and cut["txt_ids"].shape[1] == 4
    outs, grads = [], []
    for batch in (full, cut):
        head = build(key)  # same seed: same weights
        head.train()
        out = head(batch)
        (sum(v.sum() for v in out["logits"].values()) + out["fused"].pow(2).sum()).backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in head.named_parameters() if p.grad is not None})
    a, b = outs
    torch.testing.assert_close(b["fused"], a["fused"], atol=1e-5, rtol=1e-4)
    for t in a["logits"]:
        torch.testing.assert_close(b["logits"][t], a["logits"][t], atol=1e-5, rtol=1e-4)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-4, rtol=1e-3, msg=f"gradient of {n}")


@pytest.mark.parametrize("key", ["vilbert", "singlestream", "visualbert", "visualbert-vqa-pool", "gnn-gat-knn",
                                 "refnet"])
def test_masked_positions_change_no_output(key):
    head = build(key).eval()
    f = features()
    other = features(seed=1)  # other garbage in every padded position, same real values
    for k, m in (("txt_tokens", "txt_mask"), ("img_regions", "img_mask"), ("img_boxes", "img_mask")):
        other[k] = torch.where(f[m][..., None], f[k], other[k] * 7)
        other[m] = f[m]
    other["txt_ids"] = torch.where(f["txt_mask"], f["txt_ids"], (f["txt_ids"] + 7) % V)
    assert not torch.equal(other["txt_ids"], f["txt_ids"])
    with torch.no_grad():
        a, b = head(f), head(other)
        changed = dict(f, txt_tokens=f["txt_tokens"] + 3 * f["txt_mask"][..., None],  # real tokens moved
                       txt_ids=torch.where(f["txt_mask"], f["txt_ids"] % (V - 1) + 1, f["txt_ids"]))
        c = head(changed)
    torch.testing.assert_close(b["fused"], a["fused"], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(c["fused"], a["fused"], atol=1e-4)  # the real positions do count


def _data(pooled: bool = False) -> TrainData:
    f = features(pooled=pooled)
    y = torch.tensor([0, 1] * (N // 2))
    genre = (torch.arange(N * 3).view(N, 3) % 2).float()
    return TrainData(f, [f"s{i}" for i in range(N)], {"label": y, "genre": genre},
                     {"train": torch.arange(8), "dev": torch.arange(8, N)}, SPEC)


@pytest.mark.parametrize("key", ["vilbert", "singlestream", "visualbert", "gnn"])
def test_predict_in_length_order_comes_back_in_row_order(key):
    data, head = _data(), build(key)
    idx = torch.tensor([11, 0, 5, 2, 9, 3, 7, 1, 10])
    a = predict_logits(head, data, idx, batch_size=3, trim=False)
    b = predict_logits(head, data, idx, batch_size=3, trim=True)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4)


def test_training_trimmed_equals_untrimmed_without_dropout():
    data = _data()
    cfg = TrainConfig(head="vilbert", head_cfg=VIL, epochs=3, batch_size=4, patience=0, lr=1e-2, threads=1)
    a = train(cfg, data, progress=False)
    b = train(TrainConfig(**dict(cfg.to_dict(), trim=False)), data, progress=False)
    for ra, rb in zip(a.history, b.history):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)
        assert ra["val_loss"] == pytest.approx(rb["val_loss"], rel=1e-4)
    for s in a.probs:
        torch.testing.assert_close(torch.as_tensor(a.probs[s]["label"]), torch.as_tensor(b.probs[s]["label"]),
                                   atol=1e-4, rtol=1e-3)


def test_bucketed_batches_cover_every_row_once_sorted_within_windows():
    key = torch.tensor([5, 1, 9, 3, 7, 2, 8, 0, 6, 4, 1, 3])
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    batches = bucketed_batches(order, key, 2, 3, torch.Generator().manual_seed(1))
    assert sorted(torch.cat(batches).tolist()) == list(range(12))
    assert [len(b) for b in batches] == [2] * 6
    for w in (order[:6], order[6:]):  # each window of 3 batches holds its own rows, in length order
        mine = [b for b in batches if set(b.tolist()) <= set(w.tolist())]
        assert len(mine) == 3
        assert all(key[b].max() <= key[c].min() or key[c].max() <= key[b].min() for b in mine for c in mine if b is not c)
    again = bucketed_batches(order, key, 2, 3, torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(batches, again))
    plain = bucketed_batches(order, key, 5, 0, torch.Generator())
    assert [b.tolist() for b in plain] == [order[:5].tolist(), order[5:10].tolist(), order[10:].tolist()]


def test_length_sorted_inverse_and_key():
    lengths = {"txt_mask": torch.tensor([3, 1, 2, 1]), "img_mask": torch.tensor([1, 2, 1, 1])}
    key = length_key(lengths)
    assert key.tolist() == [3 * 3 + 1, 1 * 3 + 2, 2 * 3 + 1, 1 * 3 + 1]
    idx = torch.tensor([0, 1, 2, 3])
    s, inv = length_sorted(idx, key)
    assert s.tolist() == [3, 1, 2, 0]
    assert s[inv].tolist() == idx.tolist()


def test_bucketed_training_runs_and_bad_bucket_is_one_line():
    data = _data()
    res = train(TrainConfig(head="singlestream", head_cfg=CONFIGS["singlestream"][1], epochs=2, batch_size=4,
                            patience=0, bucket=2, threads=1), data, progress=False)
    assert len(res.history) == 2
    with pytest.raises(FeatstoreError, match=r"^bucket=-1 must be >= 0 \(0 = no length bucketing\); pass e\.g\. 20$"):
        train(TrainConfig(head="concat", bucket=-1), _data(pooled=True), progress=False)
