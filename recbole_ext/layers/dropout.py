"""Dropout whose mask is drawn with ``torch.rand`` on the CPU: the harness key ``fast_dropout``.

PyTorch's CPU dropout draws its mask with ``bernoulli_``, one generator call per element: on
a [768, 50, 64] activation (a SLIME4Rec batch on ml-1m) forward and backward take 29.1 ms on one
thread of a 2-core AMD EPYC, against 7.9 ms for a mask from ``torch.rand`` (vectorised) compared
with ``p`` and scaled in place; a SLIME4Rec training step there is 1.27x faster
(``benchmarks/dropout_speed.py``, ``results/perf/dropout_speed.md``). Same distribution (each
element kept with probability 1 - p, scaled by 1 / (1 - p)); another random stream, so a run
with it is not the same run as one without (the key changes results). On CUDA, and in eval
mode, it is PyTorch's own dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rand_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout of ``x`` with a mask from ``torch.rand`` (PyTorch's own off the CPU)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training=True)
    mask = torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))
    return x * mask


class RandDropout(nn.Dropout):
    """:class:`torch.nn.Dropout` with :func:`rand_dropout` (``inplace`` is not honoured: the
    product is a new tensor)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rand_dropout(x, self.p, self.training)


def use_rand_dropout(model: nn.Module) -> int:
    """Replace every :class:`torch.nn.Dropout` of ``model`` (RecBole's layers' as well as ours)
    by a :class:`RandDropout` of the same probability, in place; the number replaced.
    Dropout applied through ``F.dropout`` or inside ``scaled_dot_product_attention`` is left
    as it is."""
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, name, RandDropout(child.p))
                replaced += 1
    return replaced
