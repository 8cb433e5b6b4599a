"""The optimiser's parameter groups: vilbert trains with MMF's BERT groups (``get_bert_configured_parameters``:
no weight decay on any parameter whose name contains "bias", "LayerNorm.bias" or "LayerNorm.weight"), every
other head with one group. The reference rule is MMF's name matching, written here, applied to the head's
own parameter names (they mirror MMF's, for its checkpoints), and checked on names MMF's module tree has
(the co-attention output's LayerNorm1 / LayerNorm2). The step test checks the optimiser that ``heads train`` builds against AdamW's decoupled decay by hand:
with zero gradients one step multiplies a decayed parameter by ``1 - lr * wd`` and leaves the others."""
import pytest
import torch

from heads.models import create_head
from heads.spec import InputSpec, Task, TaskSpec
from heads.train import TrainConfig, build_optimizer

BINARY = TaskSpec([Task("label", "binary", 2)])
INPUTS = InputSpec(img_dim=16, txt_dim=32, img_regions=5, txt_tokens=7, img_pooled=True, txt_pooled=True,
                   img_boxes=True)
TINY_VILBERT = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=3,
                    text_start_layer=1, v_hidden_size=24, v_num_attention_heads=2, v_intermediate_size=48,
                    bi_hidden_size=32, bi_num_attention_heads=2, v_feature_size=16, v_biattention_id=[0, 1],
                    t_biattention_id=[1, 2], v_num_hidden_layers=2)
MMF_NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")  # mmf/utils/modeling.py


def _groups_by_name(model, opt):
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["weight_decay"]: sorted(names[id(p)] for p in g["params"]) for g in opt.param_groups}


def _vilbert():
    torch.manual_seed(0)
    return create_head("vilbert", INPUTS, BINARY, **TINY_VILBERT)


def test_vilbert_groups_are_mmfs_bert_groups():
    model = _vilbert()
    opt = build_optimizer(model, TrainConfig(head="vilbert", lr=1e-5, weight_decay=0.01))
    names = [n for n, _ in model.named_parameters()]
    want = {0.01: sorted(n for n in names if not any(nd in n for nd in MMF_NO_DECAY)),
            0.0: sorted(n for n in names if any(nd in n for nd in MMF_NO_DECAY))}
    assert _groups_by_name(model, opt) == want
    assert len(want[0.0]) > 20 and "v_embeddings.LayerNorm.weight" in want[0.0]
    # MMF's quirk, kept: the co-attention output's LayerNorm1 / LayerNorm2 weights match no pattern, so decay
    assert {"encoder.c_layer.0.biOutput.LayerNorm1.weight", "encoder.c_layer.0.biOutput.LayerNorm2.weight"} <= set(
        want[0.01]) and "encoder.c_layer.0.biOutput.LayerNorm1.bias" in want[0.0]
    assert all(g["lr"] == 1e-5 and g["eps"] == 1e-8 for g in opt.param_groups)


@pytest.mark.parametrize("head", ["concat", "singlestream", "cross"])
def test_other_heads_decay_every_parameter(head):
    model = create_head(head, INPUTS, BINARY, **({"proj_dim": 8} if head == "cross" else {}))
    opt = build_optimizer(model, TrainConfig(head=head, weight_decay=0.05))
    assert _groups_by_name(model, opt) == {0.05: sorted(n for n, _ in model.named_parameters())}


def test_one_step_with_zero_gradients_decays_only_the_decayed_group():
    model = _vilbert()
    lr, wd = 0.1, 0.5
    opt = build_optimizer(model, TrainConfig(head="vilbert", lr=lr, weight_decay=wd))
    before = {n: p.detach().clone().double() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        factor = 1.0 if any(nd in n for nd in MMF_NO_DECAY) else 1.0 - lr * wd
        torch.testing.assert_close(p.detach().double(), before[n] * factor, rtol=1e-6, atol=1e-7, msg=n)
