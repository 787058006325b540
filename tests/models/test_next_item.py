"""The shared next-item losses (recbole_ext.layers.next_item)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recbole_ext.layers import next_item
from recbole_ext.layers.next_item import full_softmax_cross_entropy, next_item_loss


def _inputs(n: int = 37, items: int = 53, width: int = 8):
    torch.manual_seed(0)
    hidden = torch.randn(n, width, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(items, width, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, items, (n,))
    return hidden, weight, targets


@pytest.mark.parametrize("chunk_bytes", [None, 1])  # one chunk; chunks of the 32-row minimum
def test_full_softmax_cross_entropy_equals_torchs_in_value_and_gradients(chunk_bytes, monkeypatch):
    if chunk_bytes is not None:
        monkeypatch.setitem(next_item._CHUNK_BYTES, "cpu", chunk_bytes)
    hidden, weight, targets = _inputs(n=101)
    expected = F.cross_entropy(hidden @ weight.T, targets)
    expected.backward(torch.tensor(0.7, dtype=torch.float64))
    want = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    loss = full_softmax_cross_entropy(hidden, weight, targets)
    loss.backward(torch.tensor(0.7, dtype=torch.float64))
    assert torch.allclose(loss, expected, atol=1e-12)
    assert torch.allclose(hidden.grad, want[0], atol=1e-12)
    assert torch.allclose(weight.grad, want[1], atol=1e-12)


def test_full_softmax_cross_entropy_gives_only_the_gradients_asked_and_can_be_retained():
    hidden, weight, targets = _inputs(n=5, items=7, width=3)
    frozen = weight.detach()
    loss = full_softmax_cross_entropy(hidden, frozen, targets)
    loss.backward(retain_graph=True)
    once = hidden.grad.clone()
    loss.backward()  # the saved gradients are not consumed
    assert torch.allclose(hidden.grad, 2 * once, atol=1e-12)
    with torch.no_grad():
        assert torch.allclose(
            full_softmax_cross_entropy(hidden, weight, targets),
            F.cross_entropy(hidden @ weight.T, targets),
            atol=1e-12,
        )


@pytest.mark.parametrize("kind", ["ce", "bce", "bpr"])
def test_next_item_loss_kinds_are_finite_and_train(kind):
    hidden, weight, targets = _inputs()
    targets = targets.clamp(min=1)
    loss = next_item_loss(hidden, targets, weight, kind)
    loss.backward()
    assert torch.isfinite(loss) and hidden.grad.abs().sum() > 0


def test_sampled_softmax_leaves_a_positions_own_target_out_of_its_negatives():
    hidden, weight, targets = _inputs(n=6, items=4)
    targets = targets.clamp(min=1)
    torch.manual_seed(1)
    # With 3 real items and many draws, every item is drawn: each row's own target among them
    # must not count against it, so the loss stays below the full softmax over the drawn set.
    loss = next_item_loss(hidden, targets, weight, "ce", negatives=200)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="loss must be one of"):
        next_item_loss(hidden, targets, weight, "hinge")
