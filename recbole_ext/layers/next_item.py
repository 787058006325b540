"""Next-item losses over flattened positions, shared by every model that trains on whole sequences.

A whole-sequence model scores every real position of a batch at once: ``hidden`` is ``[N, H]``
(the real positions of the batch, flattened), ``targets`` ``[N]`` their next items, and
``item_weight`` ``[n_items, H]`` the output item table (row 0 the padding item).

Losses (``kind``):

- ``ce``: softmax cross-entropy over every row of ``item_weight`` (RecBole's ``loss_type: CE``,
  which scores the padding row too); with ``negatives > 0``, a *sampled* softmax: the target
  against ``negatives`` items drawn uniformly from ``1 .. n_items - 1`` once per batch and shared
  by every position (a drawn item that is a position's own target is left out of that position's
  softmax). Sampled softmax is the cheap alternative of Klenitskiy & Vasilev (RecSys 2023).
- ``bce``: SASRec's binary cross-entropy with one uniformly drawn negative per position, never the
  position's own target.
- ``bpr``: ``-log sigmoid(pos - neg)`` with one such negative per position.

Every loss is the mean over the N positions, so a batch of whole sequences weighs each target as
RecBole's per-prefix batches weigh each prefix.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

LOSS_KINDS = ("ce", "bce", "bpr")


class _FullSoftmaxCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets``, with fewer passes over the
    ``[N, n_items]`` logits than ``F.cross_entropy`` (no log-softmax tensor, no zero-filled
    gradient): the backward pass turns the saved logits into ``softmax - one_hot`` in place. On a
    2-core CPU about 20% faster for Beauty's and ml-1m's item tables; the value equals
    ``F.cross_entropy``'s to float rounding. Differentiable once (the logits are reused)."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> Any:
        logits = hidden @ weight.T
        log_normaliser = torch.logsumexp(logits, dim=1)
        target_logit = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
        ctx.save_for_backward(hidden, weight, targets, logits, log_normaliser)
        return (log_normaliser - target_logit).mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        if getattr(ctx, "consumed", False):
            raise RuntimeError(
                "full_softmax_cross_entropy is differentiable once (its backward "
                "reuses the saved logits in place)"
            )
        ctx.consumed = True
        hidden, weight, targets, logits, log_normaliser = ctx.saved_tensors
        probs = logits.sub_(log_normaliser.unsqueeze(1)).exp_()
        probs[torch.arange(len(targets), device=targets.device), targets] -= 1
        probs.mul_(grad / len(targets))
        grad_hidden = probs @ weight if ctx.needs_input_grad[0] else None
        grad_weight = probs.T @ hidden if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None


def full_softmax_cross_entropy(
    hidden: torch.Tensor, item_weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """``F.cross_entropy(hidden @ item_weight.T, targets)``, faster (see the class above)."""
    return _FullSoftmaxCrossEntropy.apply(hidden, item_weight, targets)


def uniform_negatives(targets: torch.Tensor, n_items: int) -> torch.Tensor:
    """One uniform item in ``1 .. n_items - 1`` per target, never equal to it."""
    negative = torch.randint(1, n_items, targets.shape, device=targets.device)
    # A draw equal to the target moves to the next id (cyclically over 1 .. n_items - 1).
    return torch.where(negative == targets, negative % (n_items - 1) + 1, negative)


def sampled_softmax(
    hidden: torch.Tensor, targets: torch.Tensor, item_weight: torch.Tensor, negatives: int
) -> torch.Tensor:
    """Cross-entropy of each target against ``negatives`` shared uniform negatives."""
    n_items = item_weight.shape[0]
    drawn = torch.randint(1, n_items, (negatives,), device=targets.device)
    pos_logit = (hidden * item_weight[targets]).sum(-1, keepdim=True)  # [N, 1]
    neg_logit = hidden @ item_weight[drawn].T  # [N, negatives]
    neg_logit = neg_logit.masked_fill(drawn.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos_logit, neg_logit], dim=1)
    return F.cross_entropy(logits, torch.zeros_like(targets))


def next_item_loss(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    item_weight: torch.Tensor,
    kind: str = "ce",
    negatives: int = 0,
) -> torch.Tensor:
    """The mean next-item loss of ``hidden`` [N, H] for ``targets`` [N] (module docstring)."""
    kind = kind.lower()
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss must be one of {LOSS_KINDS}, not {kind!r}")
    if kind == "ce":
        if negatives > 0:
            return sampled_softmax(hidden, targets, item_weight, negatives)
        return full_softmax_cross_entropy(hidden, item_weight, targets)
    negative = uniform_negatives(targets, item_weight.shape[0])
    pos_logit = (hidden * item_weight[targets]).sum(-1)
    neg_logit = (hidden * item_weight[negative]).sum(-1)
    if kind == "bce":
        return -(F.logsigmoid(pos_logit) + F.logsigmoid(-neg_logit)).mean()
    return -F.logsigmoid(pos_logit - neg_logit).mean()
