"""``fast_dropout``: masks from ``torch.rand`` on the CPU, swapped into every model's dropout."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench import api, contract
from recbole_ext.data import HarnessSettings
from recbole_ext.layers.dropout import RandDropout, rand_dropout, use_rand_dropout
from tests.helpers import TINY


def test_rand_dropout_keeps_each_element_with_probability_1_minus_p_and_scales_it():
    torch.manual_seed(0)
    x = torch.ones(200_000, requires_grad=True)
    y = rand_dropout(x, 0.3)
    kept = y != 0
    low, high = torch.unique(y).tolist()
    assert low == 0.0 and high == pytest.approx(1 / 0.7)
    # Binomial(200,000, 0.7): the std of the kept fraction is about 0.001.
    assert abs(kept.float().mean().item() - 0.7) < 0.005
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(x * mask) / dx = mask, scaled
    assert rand_dropout(x, 0.3, training=False) is x and rand_dropout(x, 0.0) is x
    assert torch.count_nonzero(rand_dropout(x, 1.0)) == 0


def test_the_mask_comes_from_torchs_generator():
    torch.manual_seed(1)
    first = rand_dropout(torch.ones(1_000), 0.5)
    torch.manual_seed(1)
    assert torch.equal(first, rand_dropout(torch.ones(1_000), 0.5))
    assert not torch.equal(first, rand_dropout(torch.ones(1_000), 0.5))


def test_every_dropout_module_is_swapped_nested_ones_and_recboles_too():
    from recbole.model.layers import TransformerEncoder

    model = nn.Sequential(
        nn.Dropout(0.2),
        nn.ModuleList([nn.Linear(4, 4), nn.Dropout(0.4)]),
        TransformerEncoder(n_layers=2, n_heads=2, hidden_size=8, inner_size=16),
    )
    replaced = use_rand_dropout(model)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert replaced == len(dropouts) > 2
    assert all(type(m) is RandDropout for m in dropouts)
    assert [m.p for m in dropouts[:2]] == [0.2, 0.4]
    model.eval()  # eval mode: the identity, as nn.Dropout
    x = torch.randn(3, 4)
    assert torch.equal(model[0](x), x)


def test_a_record_without_the_key_means_pytorchs_dropout():
    """Runs recorded before the key existed reproduce with PyTorch's dropout."""
    assert HarnessSettings.from_mapping({}).fast_dropout is False
    assert HarnessSettings.from_mapping({"fast_dropout": True}).fast_dropout is True


def test_runs_use_it_by_default_and_the_key_changes_the_run(tiny_sequences):
    common = dict(epochs=2, data_dir=tiny_sequences, device="cpu")
    runs = {}
    for fast in (True, False):
        out = tiny_sequences / f"out-{fast}"
        settings = {**TINY, "fast_dropout": fast}
        (runs[fast],) = api.run(["SASRec"], "tiny", settings=settings, out=out, **common).results
    default_out = tiny_sequences / "out-default"
    (default,) = api.run(["SASRec"], "tiny", settings=dict(TINY), out=default_out, **common).results
    assert default.config["fast_dropout"] is True
    assert [e.train_loss for e in default.epochs] == [e.train_loss for e in runs[True].epochs]
    losses = [e.train_loss for e in runs[False].epochs]
    assert all(math.isfinite(v) for v in losses)
    assert losses != [e.train_loss for e in runs[True].epochs]  # another random stream
    assert contract.config_hash(runs[True].config) != contract.config_hash(runs[False].config)
