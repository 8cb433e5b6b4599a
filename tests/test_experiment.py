"""heads.experiment: the fused embeddings of a head come from the evaluation loop (trimmed, length-ordered
batches) and equal those of plain untrimmed batches in row order."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from heads.experiment import fused_embeddings
from heads.models import create_head
from test_trim import CONFIGS, _data


@pytest.mark.parametrize("key", ["vilbert", "singlestream", "gnn"])
def test_fused_embeddings_equal_the_untrimmed_batches_in_row_order(key):
    data = _data()
    name, cfg = CONFIGS[key]
    torch.manual_seed(0)
    model = create_head(name, data.input_spec(), data.task_spec, **cfg).eval()
    with torch.no_grad():  # the reference: rows in order, batches of 5, padded to the stored lengths
        idx = torch.arange(len(data))
        want = torch.cat([model(data.batch(idx[s:s + 5], trim=False))["fused"] for s in range(0, len(data), 5)])
    assert data.batch(idx[:5], trim=True)["txt_tokens"].shape[1] < data.batch(idx[:5], trim=False)["txt_tokens"].shape[1]
    got = fused_embeddings(model.train(), data, batch_size=5)  # eval mode is its own business
    assert got.dtype == np.float32 and got.shape == tuple(want.shape)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)
    assert not model.training
