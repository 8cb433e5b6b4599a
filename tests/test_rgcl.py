"""RGCL (heads.rgcl): retrieval vs a brute-force float64 search, the loss vs a hand computation, the bank's
refresh schedule, the kNN vote, training end to end, and a task where label-consistent neighbours beat the
classifier alone."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from featstore.errors import FeatstoreError
from heads.data import TrainData
from heads.models import create_head
from heads.rgcl import (RGCL_SETTINGS, RGCLConfig, RGCLObjective, encode, knn_vote, nearest, positives_negatives,
                        rgcl_loss)
from heads.spec import InputSpec, Task, TaskSpec
from heads.train import TrainConfig, train

BINARY = TaskSpec([Task("label", "binary", 2, ["0", "1"])])


def brute_force(bank, bank_labels, queries, labels, k_pos, k_neg, depth, self_rows=None):
    """Float64 cosine ranking of the whole bank, then the first same / other label rows in the top ``depth``."""
    b = np.asarray(bank, np.float64)
    q = np.asarray(queries, np.float64)
    pos, neg = [], []
    for i in range(len(q)):
        if np.linalg.norm(q[i]) == 0:
            pos.append([-1] * k_pos), neg.append([-1] * k_neg)
            continue
        ok = np.flatnonzero(np.linalg.norm(b, axis=1) > 0)
        sims = b[ok] @ q[i] / (np.linalg.norm(b[ok], axis=1) * np.linalg.norm(q[i]))
        ranked = [int(r) for r in ok[np.argsort(-sims, kind="stable")]][:depth]
        if self_rows is not None:
            ranked = [r for r in ranked if r != self_rows[i]]
        same = [r for r in ranked if bank_labels[r] == labels[i]][:k_pos]
        other = [r for r in ranked if bank_labels[r] != labels[i]][:k_neg]
        pos.append(same + [-1] * (k_pos - len(same)))
        neg.append(other + [-1] * (k_neg - len(other)))
    return np.array(pos), np.array(neg)


def planted(seed=0, n=40, h=6):
    g = np.random.default_rng(seed)
    bank = g.normal(size=(n, h)).astype(np.float32)
    bank[7] = 0.0  # an all-zero row is never retrieved
    labels = g.integers(0, 2, n)
    queries = np.concatenate([bank[[3, 11, 20]] + 0.05 * g.normal(size=(3, h)), g.normal(size=(4, h)),
                              np.zeros((1, h))]).astype(np.float32)
    qlabels = np.array([labels[3], 1 - labels[11], labels[20], 0, 1, 0, 1, 0])
    return bank, labels, queries, qlabels


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("k_pos,k_neg,multiple", [(1, 1, 12), (2, 3, 2), (0, 2, 3)])
def test_positives_and_negatives_equal_brute_force(backend, k_pos, k_neg, multiple):
    bank, labels, queries, qlabels = planted()
    cfg = RGCLConfig(k_pos=k_pos, k_neg=k_neg, search_multiple=multiple, backend=backend)
    pos, neg = positives_negatives(torch.from_numpy(bank), torch.from_numpy(labels), torch.from_numpy(queries),
                                   torch.from_numpy(qlabels), cfg)
    want_pos, want_neg = brute_force(bank, labels, queries, qlabels, k_pos, k_neg, cfg.depth)
    np.testing.assert_array_equal(pos.numpy(), want_pos.reshape(len(queries), k_pos))
    np.testing.assert_array_equal(neg.numpy(), want_neg)
    assert (pos[-1] == -1).all() and (neg[-1] == -1).all()  # the zero query retrieves nothing
    assert 7 not in pos.numpy() and 7 not in neg.numpy()
    if k_pos:
        assert pos[0, 0] == 3  # the planted near-duplicate with the same label comes first
    assert neg[1, 0] == 11  # ... and with the other label it is the hardest negative


def test_exclude_self_skips_the_own_bank_row():
    bank, labels, queries, qlabels = planted()
    self_rows = torch.tensor([3, 11, 20, -1, -1, -1, -1, -1])
    cfg = RGCLConfig(k_pos=2, k_neg=2, search_multiple=3, exclude_self=True, backend="torch")
    pos, neg = positives_negatives(torch.from_numpy(bank), torch.from_numpy(labels), torch.from_numpy(queries),
                                   torch.from_numpy(qlabels), cfg, self_rows)
    want_pos, want_neg = brute_force(bank, labels, queries, qlabels, 2, 2, cfg.depth + 1, self_rows.numpy())
    np.testing.assert_array_equal(pos.numpy(), want_pos)
    np.testing.assert_array_equal(neg.numpy(), want_neg)
    assert 3 not in pos[0].tolist()


def test_nearest_backends_agree_with_float64_sims():
    bank, _, queries, _ = planted(seed=1)
    for backend in ("faiss", "torch"):
        sims, idx = nearest(torch.from_numpy(bank), torch.from_numpy(queries[:-1]), 5, backend)
        b = bank.astype(np.float64)
        for i, q in enumerate(queries[:-1].astype(np.float64)):
            cos = b @ q / (np.maximum(np.linalg.norm(b, axis=1), 1e-300) * np.linalg.norm(q))
            cos[7] = -np.inf
            np.testing.assert_array_equal(idx[i].numpy(), np.argsort(-cos, kind="stable")[:5])
            np.testing.assert_allclose(sims[i].numpy(), np.sort(cos)[::-1][:5], rtol=1e-5, atol=1e-6)


def _cos(a, b):
    if np.linalg.norm(b) == 0:
        return 0.0
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_loss_equals_hand_computation():
    e = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    y = np.array([0, 1, 0, 1])
    bank = np.array([[1.0, 0.2, 0.0], [0.0, 0.0, 2.0], [-1.0, 0.5, 0.0], [0.3, 0.3, 0.3]])
    pos = np.array([[0, -1], [3, 2], [-1, -1], [1, 0]])  # k_pos = 2, empty slots add 0 to the mean
    neg = np.array([[2], [-1], [1], [0]])
    cfg = RGCLConfig(k_pos=2, k_neg=1, margin=0.3)
    et = torch.tensor(e, requires_grad=True)
    got = rgcl_loss(et, torch.tensor(y), torch.tensor(bank), torch.tensor(pos), torch.tensor(neg), cfg)
    terms = []
    for i in range(4):
        others = [j for j in range(4) if y[j] != y[i]]
        t = np.mean([_cos(e[i], e[j]) for j in others]) if others else 0.0
        t += sum(_cos(e[i], bank[n]) for n in neg[i] if n >= 0)
        t -= sum(_cos(e[i], bank[p]) for p in pos[i] if p >= 0) / 2
        terms.append(max(t + 0.3, 0.0))
    assert float(got.detach()) == pytest.approx(np.mean(terms), abs=1e-12)
    assert min(terms) == 0.0 < max(terms)  # the relu clips at least one sample here
    got.backward()
    assert torch.isfinite(et.grad).all() and et.grad.abs().sum() > 0
    no_batch = rgcl_loss(torch.tensor(e), torch.tensor(y), torch.tensor(bank), torch.tensor(pos), torch.tensor(neg),
                         RGCLConfig(k_pos=2, k_neg=1, margin=0.3, in_batch=False))
    hand = [max(sum(_cos(e[i], bank[n]) for n in neg[i] if n >= 0)
                - sum(_cos(e[i], bank[p]) for p in pos[i] if p >= 0) / 2 + 0.3, 0.0) for i in range(4)]
    assert float(no_batch) == pytest.approx(np.mean(hand), abs=1e-12)


def test_knn_vote_is_the_references_similarity_vote():
    sims = torch.tensor([[0.9, 0.5, 0.2], [0.8, -float("inf"), -float("inf")]])
    labels = torch.tensor([[1, 0, 1], [0, 1, 1]])
    # arithmetic weights 3, 2, 1; v = sum w (2y - 1) s / sum w; p = (v + 1) / 2
    v0 = (3 * 0.9 - 2 * 0.5 + 1 * 0.2) / 6
    np.testing.assert_allclose(knn_vote(sims, labels).numpy(), [(v0 + 1) / 2, (-0.8 * 3 / 3 + 1) / 2], rtol=1e-6)
    np.testing.assert_allclose(knn_vote(sims, labels, "mean").numpy()[0], ((0.9 - 0.5 + 0.2) / 3 + 1) / 2, rtol=1e-6)


# -------------------------------------------------------------------------------------- training


def cluster_task(seed=0, clusters=24, per=10, dim=8):
    """Tight clusters with random labels, train/dev/test rows drawn from every cluster: a row's neighbours
    share its label, while a small classifier trained briefly cannot carve 24 random-labelled cells."""
    g = np.random.default_rng(seed)
    centres = g.normal(size=(clusters, dim)) * 2.0
    lab = g.permutation(np.arange(clusters) % 2)
    c = np.repeat(np.arange(clusters), per)
    x = centres[c] + 0.15 * g.normal(size=(len(c), dim))
    t = g.normal(size=(len(c), 4))  # uninformative text
    r = np.tile(np.arange(per), clusters)
    splits = {"train": np.flatnonzero(r < 6), "dev": np.flatnonzero((r >= 6) & (r < 8)), "test": np.flatnonzero(r >= 8)}
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return TrainData({"img_pooled": f(x), "txt_pooled": f(t)}, [f"s{i}" for i in range(len(c))],
                     {"label": torch.tensor(lab[c], dtype=torch.long)},
                     {k: torch.tensor(v) for k, v in splits.items()}, BINARY)


def test_bank_refreshes_once_per_epoch_or_every_n_steps():
    data = cluster_task()
    torch.manual_seed(0)
    model = create_head("concat", data.input_spec(), BINARY, hidden=[16], dropout=0.0)
    tr = data.splits["train"]
    b = tr[:16]
    obj = RGCLObjective(RGCLConfig(), data, tr)
    obj.start_epoch()
    out = model(data.batch(b))
    obj.loss(model, out, b, torch.tensor(0.0))
    torch.testing.assert_close(obj.bank, encode(model, data, tr))  # built with the current head before the step
    first = obj.bank.clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    obj.loss(model, model(data.batch(b)), b, torch.tensor(0.0))
    assert torch.equal(obj.bank, first)  # same epoch: the bank stays
    obj.start_epoch()
    obj.loss(model, model(data.batch(b)), b, torch.tensor(0.0))
    torch.testing.assert_close(obj.bank, encode(model, data, tr))  # next epoch: re-encoded
    every = RGCLObjective(RGCLConfig(refresh=2), data, tr)
    banks = []
    for _ in range(3):
        every.loss(model, model(data.batch(b)), b, torch.tensor(0.0))
        banks.append(every.bank)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1)
    assert banks[0] is banks[1] and banks[2] is not banks[1]


def test_bank_grad_back_propagates_through_the_retrieved_rows_on_the_refresh_step_only():
    """bank_grad (the reference's GPU path: its bank is encoded with gradients and detached after that step): the
    refresh step's parameter gradients equal a transcription whose bank rows are the eval-mode forward with
    gradients (loss by hand from cosines), differ from the constant-bank gradients, and the next step's bank is
    a constant again."""
    data = cluster_task()
    tr = data.splits["train"]
    b = tr[:16]
    grads = {}
    for bank_grad in (True, False):
        torch.manual_seed(0)
        model = create_head("cross", data.input_spec(), BINARY, fusion="align", proj_dim=8, pre_output_layers=2,
                            proj_dropout=0.0, fusion_dropout=0.0, dropout=0.0)
        obj = RGCLObjective(RGCLConfig(bank_grad=bank_grad), data, tr)
        total, _ = obj.loss(model, model(data.batch(b)), b, torch.tensor(0.0))
        total.backward()
        grads[bank_grad] = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        assert not obj.bank.requires_grad  # what later steps use
        model.zero_grad()
        again, _ = obj.loss(model, model(data.batch(b)), b, torch.tensor(0.0))
        again.backward()  # step 2: the batch's own embeddings only
        if bank_grad:
            second = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    torch.manual_seed(0)  # the transcription, on the same initial head
    model = create_head("cross", data.input_spec(), BINARY, fusion="align", proj_dim=8, pre_output_layers=2,
                        proj_dropout=0.0, fusion_dropout=0.0, dropout=0.0)
    e = model(data.batch(b))["embed"]
    model.eval()
    bank = model(data.batch(tr))["embed"]  # with gradients
    model.train()
    labels = data.targets["label"]
    pos, neg = positives_negatives(bank.detach(), labels[tr], e.detach(), labels[b], RGCLConfig(), None)

    def cos(u, v):
        return (u * v).sum() / (u.norm() * v.norm())

    terms = []
    for i in range(len(b)):
        others = [j for j in range(len(b)) if labels[b[j]] != labels[b[i]]]
        t = torch.stack([cos(e[i], e[j]) for j in others]).mean() if others else e.new_zeros(())
        t = t + sum((cos(e[i], bank[n]) for n in neg[i] if n >= 0), e.new_zeros(()))
        t = t - sum((cos(e[i], bank[p]) for p in pos[i] if p >= 0), e.new_zeros(()))
        terms.append(torch.relu(t + 0.1))
    (0.5 * torch.stack(terms).mean()).backward()
    for k, p in model.named_parameters():
        if p.grad is not None and k in grads[True]:
            torch.testing.assert_close(grads[True][k], p.grad, rtol=1e-4, atol=1e-6, msg=k)
    assert any(not torch.allclose(grads[True][k], grads[False][k]) for k in grads[False])
    assert set(second) <= set(grads[True])


def test_combined_loss_weights_task_and_rgcl_terms():
    data = cluster_task()
    torch.manual_seed(0)
    model = create_head("cross", data.input_spec(), BINARY, fusion="align", proj_dim=8, pre_output_layers=2)
    tr = data.splits["train"]
    obj = RGCLObjective(RGCLConfig(ce_weight=0.25), data, tr)
    out = model(data.batch(tr[:16]))
    total, logged = obj.loss(model, out, tr[:16], torch.tensor(2.0))
    assert float(total.detach()) == pytest.approx(0.75 * float(logged["rgcl"].detach()) + 0.25 * 2.0)
    assert obj.bank.shape == (tr.numel(), 8)  # cross's "embed" (pre-ReLU), not "fused"


FAST = dict(epochs=4, batch_size=32, lr=3e-3, warmup_ratio=0.0, patience=0, threads=1)


def test_label_consistent_neighbours_beat_the_classifier_alone():
    data = cluster_task()
    head_cfg = {"hidden": [16], "dropout": 0.0}
    clf = train(TrainConfig(head="concat", head_cfg=head_cfg, **FAST), data, progress=False)
    knn = train(TrainConfig(head="concat", head_cfg=head_cfg, rgcl={"knn_k": 5}, predict="knn", **FAST), data,
                progress=False)
    y = data.targets["label"][data.splits["test"]].numpy()
    auc_clf = roc_auc_score(y, clf.probs["test"]["label"][:, 1])
    auc_knn = roc_auc_score(y, knn.probs["test"]["label"][:, 1])
    assert knn.metrics["test"]["label/auroc"] == pytest.approx(auc_knn)
    assert auc_knn > auc_clf + 0.1, (auc_knn, auc_clf)
    assert auc_knn > 0.9
    assert all("train_loss_rgcl" in r for r in knn.history)


def test_bad_rgcl_options_are_one_line_errors():
    with pytest.raises(FeatstoreError) as e:
        TrainConfig(rgcl={"topk": 3}).validate()
    assert str(e.value).startswith("rgcl has no option 'topk'; its options are: backend, bank_grad, ce_weight")
    with pytest.raises(FeatstoreError) as e:
        TrainConfig(rgcl={"ce_weight": 2}).validate()
    assert str(e.value) == "rgcl ce_weight=2 must be in [0, 1] and refresh=0 >= 0; use e.g. ce_weight=0.5, refresh=0"
    with pytest.raises(FeatstoreError) as e:
        TrainConfig(predict="vote").validate()
    assert str(e.value) == "predict 'vote' is unknown; pass classifier or knn"
    with pytest.raises(FeatstoreError) as e:
        RGCLConfig.from_dict({"k_pos": 0, "k_neg": 0})
    assert str(e.value) == "rgcl k_pos=0 and k_neg=0 retrieve nothing; use e.g. k_pos=1, k_neg=1"
    with pytest.raises(FeatstoreError) as e:
        RGCLConfig.from_dict({"k_neg": -1})
    assert str(e.value) == "rgcl k_neg=-1 is out of range; use e.g. k_neg=1"
    with pytest.raises(FeatstoreError) as e:
        RGCLConfig.from_dict({"backend": "gpu"})
    assert str(e.value) == ("rgcl backend='gpu' / vote='arithmetic' unknown; use backend one of auto, faiss, torch "
                            "and vote one of arithmetic, mean")


@pytest.mark.parametrize("option, message", [
    ({"k_pos": "2"}, "rgcl option k_pos='2' must be an int; e.g. --rgcl-set k_pos=1"),
    ({"knn_k": 1.5}, "rgcl option knn_k=1.5 must be an int; e.g. --rgcl-set knn_k=20"),
    ({"margin": "wide"}, "rgcl option margin='wide' must be a float; e.g. --rgcl-set margin=0.1"),
    ({"in_batch": "maybe"}, "rgcl option in_batch='maybe' must be a bool (true or false); e.g. --rgcl-set in_batch=true"),
    ({"backend": 3}, "rgcl option backend=3 must be a string; e.g. --rgcl-set backend=auto"),
])
def test_an_rgcl_option_of_the_wrong_type_is_a_one_line_error(option, message):
    """Before the range checks compare it (a str k_pos was a TypeError traceback from ``<``)."""
    with pytest.raises(FeatstoreError) as e:
        RGCLConfig.from_dict(option)
    assert str(e.value) == message
    with pytest.raises(FeatstoreError) as e:
        TrainConfig(rgcl=option).validate()
    assert str(e.value) == message


def test_rgcl_numbers_given_as_ints_stay_accepted():
    cfg = RGCLConfig.from_dict({"margin": 1, "ce_weight": 0, "k_pos": 2})
    assert (cfg.margin, cfg.ce_weight, cfg.k_pos) == (1, 0, 2)


def test_knn_needs_a_binary_task():
    data = cluster_task()
    three = TaskSpec([Task("label", "multiclass", 3, ["a", "b", "c"])])
    data3 = TrainData(data.features, data.ids, {"label": data.targets["label"]}, data.splits, three)
    with pytest.raises(FeatstoreError) as e:
        train(TrainConfig(head="concat", predict="knn", **FAST), data3, progress=False)
    assert str(e.value) == "predict=knn votes on a binary task; task 'label' is multiclass - use predict=classifier"


def test_rgcl_needs_one_single_label_task():
    data = cluster_task()
    multi = TaskSpec([Task("label", "binary", 2), Task("other", "binary", 2)])
    data2 = TrainData(data.features, data.ids, {"label": data.targets["label"], "other": data.targets["label"]},
                      data.splits, multi)
    with pytest.raises(FeatstoreError) as e:
        train(TrainConfig(head="concat", rgcl={}, **FAST), data2, progress=False)
    assert str(e.value) == ("rgcl / predict=knn need one binary or multiclass task; pass --task with one such label")


def test_published_settings_build_and_validate():
    cfg = TrainConfig(head=RGCL_SETTINGS["head"], head_cfg=RGCL_SETTINGS["head_cfg"], **RGCL_SETTINGS["train"])
    cfg.validate()
    with torch.device("meta"):
        head = create_head(cfg.head, InputSpec(1024, 768), BINARY, **cfg.head_cfg)
    assert head.pre_output.out_dim == 1024 and RGCLConfig.from_dict(cfg.rgcl) == RGCLConfig(bank_grad=True)


def test_cli_trains_with_rgcl_and_knn(tmp_path):
    from cli.heads_cli import main as heads
    from cli_helpers import invoke, make_hm_folder, one_line_error
    from featstore.datasets import load_dataset
    from featstore.store import Recipe, open_store

    data = make_hm_folder(tmp_path / "data")
    ds = load_dataset(data)
    st = open_store(tmp_path / "store", create=True)
    g = np.random.default_rng(0)
    keys = sorted({s.image_key for s in ds.samples})
    st.write("img", Recipe("x"), keys, {"pooled": g.normal(size=(6, 4)).astype(np.float32)},
             key_kind="image_key", modality="image")
    st.write("txt", Recipe("y"), [s.id for s in ds.samples], {"cls": g.normal(size=(len(ds), 5)).astype(np.float32)},
             key_kind="sample_id", modality="text")
    args = ["train", "--store", tmp_path / "store", "--dataset", data, "--image", "img", "--text", "txt", "--head",
            "cross", "--set", "fusion=align", "--set", "proj_dim=8", "--epochs", 2, "--quiet", "--device", "cpu",
            "--threads", 1, "--rgcl-set", "k_pos=2", "--predict", "knn"]
    invoke(heads, args + ["--out", tmp_path / "run"])
    cfg = json.loads(next((tmp_path / "run").rglob("config.json")).read_text())
    assert cfg["train"]["rgcl"] == {"k_pos": 2} and cfg["train"]["predict"] == "knn"
    line = one_line_error(heads, args + ["--rgcl-set", "kk=1", "--out", tmp_path / "bad"])
    assert line.startswith("error: rgcl has no option 'kk'")
    line = one_line_error(heads, args + ["--rgcl-set", "k_neg=two", "--out", tmp_path / "bad"])
    assert line == "error: rgcl option k_neg='two' must be an int; e.g. --rgcl-set k_neg=1"
    assert not (tmp_path / "bad").exists()


def test_a_saved_knn_run_evaluates_and_predicts_with_the_vote(tmp_path):
    """A run trained with predict=knn, reloaded from its folder, reports the vote's numbers (what it
    trained and early-stopped on), not its classifier's: the reloaded test probabilities equal the ones
    the run computed at the end of training, and its saved AUROC is sklearn's on them."""
    from heads.experiment import _run_probs, evaluate_run
    from heads.runs import load_run, save_run

    data = cluster_task()
    cfg = TrainConfig(head="concat", head_cfg={"hidden": [16], "dropout": 0.0}, rgcl={"knn_k": 5},
                      predict="knn", **FAST)
    result = train(cfg, data, progress=False)
    run = save_run(tmp_path / "run", result, data, plots=False)
    model, config = load_run(run)
    test = data.split("test")
    reloaded = _run_probs(model, data, test, config)["label"]
    np.testing.assert_allclose(reloaded, result.probs["test"]["label"], rtol=1e-5, atol=1e-6)
    y = data.targets["label"][test].numpy()
    assert evaluate_run(run, data, "test")["label/auroc"] == pytest.approx(roc_auc_score(y, reloaded[:, 1]))
    logits = model(data.batch(test))["logits"]["label"].softmax(-1)[:, 1].detach().numpy()
    assert not np.allclose(reloaded[:, 1], logits, atol=1e-3)  # the classifier's numbers differ
