"""Fan-out cascade (``TaskSpec.feeds``, ``--feeds B>C``): Memotion 2.0's binary emotions (task B) feed every
intensity task (C_*), checked against a float64 numpy forward of the same layers; bad specs are one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from featstore.errors import FeatstoreError
from heads.outputs import PredictionLayers, logits_to_probs, probabilities, task_order
from heads.presets import load_preset
from heads.spec import Task, TaskSpec
from heads.tasks import with_feeds

TASKS = [Task("A", "multiclass", 3, ["neg", "neu", "pos"], 0.4),
         Task("B", "multilabel", 4, ["humour", "sarcasm", "offensive", "motivational"], 0.3),
         Task("C_humour", "multiclass", 4, ["0", "1", "2", "3"], 0.075),
         Task("C_sarcasm", "multiclass", 4, ["0", "1", "2", "3"], 0.075)]


def _f64(layer):
    return layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()


def test_b_feeds_every_intensity_task_as_a_float64_forward_computes_it():
    spec = with_feeds(TaskSpec(tasks=list(TASKS)), "B>C")
    assert spec.feeds == {"C_humour": ["B"], "C_sarcasm": ["B"]}
    torch.manual_seed(0)
    layers = PredictionLayers(spec, in_dim=6, dropout=0.3).eval()
    x = torch.randn(5, 6)
    out = layers(x)
    xd = x.double().numpy()

    def lin(name, inp):
        w, b = _f64(layers.layers[name])
        return inp @ w.T + b

    b_logits = lin("B", xd)
    p_b = 1.0 / (1.0 + np.exp(-b_logits))
    expected = {"A": lin("A", xd), "B": b_logits,
                "C_humour": lin("C_humour", np.concatenate([xd, p_b], 1)),
                "C_sarcasm": lin("C_sarcasm", np.concatenate([xd, p_b], 1))}
    for name, ref in expected.items():
        np.testing.assert_allclose(out[name].detach().double().numpy(), ref, rtol=1e-5, atol=1e-6)
    assert layers.layers["C_humour"].in_features == 6 + 4 and layers.layers["A"].in_features == 6
    # gradients flow from an intensity task back into B's layer (the probabilities are not detached)
    out["C_humour"].sum().backward()
    assert layers.layers["B"].weight.grad.abs().sum() > 0


def test_feeds_and_cascade_combine_and_run_feeders_first():
    spec = TaskSpec(tasks=list(TASKS), cascade=["A", "B"], feeds={"C_humour": ["B", "A"]})
    order = task_order(spec)
    assert order.index("A") < order.index("B") < order.index("C_humour")
    layers = PredictionLayers(spec, in_dim=6)
    assert layers.layers["B"].in_features == 6 + 3 and layers.layers["C_humour"].in_features == 6 + 4 + 3


@pytest.mark.parametrize("spec_kwargs, line", [
    ({"feeds": {"C_humour": ["Z"]}}, "feeds names task 'Z' which is not a task; choose from: A, B, C_humour, C_sarcasm"),
    ({"feeds": {"A": ["B"], "B": ["A"]}},
     "task feeds form a cycle (A -> B -> A); feed each task from tasks that do not depend on it"),
])
def test_bad_feeds_are_one_line(spec_kwargs, line):
    with pytest.raises(FeatstoreError) as e:
        PredictionLayers(TaskSpec(tasks=list(TASKS), **spec_kwargs), in_dim=4)
    assert str(e.value) == line


def test_bad_feeds_text_is_one_line():
    with pytest.raises(FeatstoreError) as e:
        with_feeds(TaskSpec(tasks=list(TASKS)), "B>D")
    assert str(e.value) == ("--feeds 'B>D': write SRC>DST with labels of the chosen tasks (e.g. B>C); "
                            "the tasks are A, B, C_humour, C_sarcasm")


def test_memotion_preset_cascades_emotions_into_intensities():
    p = load_preset("memotion2-multitask")
    assert p.data["feeds"] == "B>C" and p.data["task_weights"] == "A=0.4,B=0.3,C=0.3"


def test_probabilities_are_softmax_or_sigmoid_as_a_float64_numpy_forward_computes_them():
    spec = TaskSpec(tasks=[Task("label", "binary", 2), TASKS[0], TASKS[1]])
    g = torch.Generator().manual_seed(0)
    logits = {"label": torch.randn(5, 2, generator=g) * 3, "A": torch.randn(5, 3, generator=g) * 3,
              "B": torch.randn(5, 4, generator=g).to(torch.bfloat16)}  # bf16, as an autocast forward gives them
    x = {k: v.double().numpy() for k, v in logits.items()}
    want = {k: np.exp(x[k]) / np.exp(x[k]).sum(1, keepdims=True) for k in ("label", "A")}
    want["B"] = 1 / (1 + np.exp(-x["B"]))
    got = probabilities(spec, logits)
    assert list(got) == ["label", "A", "B"] and all(v.dtype == np.float32 for v in got.values())
    for k in got:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7)
    # the cascade's input keeps the logits' dtype (a float64 forward stays float64)
    assert logits_to_probs(TASKS[1], logits["B"].double()).dtype == torch.float64
