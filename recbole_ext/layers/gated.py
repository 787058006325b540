"""Gated dense layer (Dauphin et al.'s gated linear unit), EVCF's replacement for tanh layers."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GatedDense(nn.Module):
    """out = linear(h) * sigmoid(gate(h)): two affine maps, one of them squashed into a gate."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(in_features, out_features)

    def forward(self, h: Tensor) -> Tensor:
        return self.linear(h) * torch.sigmoid(self.gate(h))


def hidden_layer(in_features: int, out_features: int, gated: bool) -> nn.Module:
    """One hidden layer of the EVCF networks: gated, or affine followed by tanh."""
    if gated:
        return GatedDense(in_features, out_features)
    return nn.Sequential(nn.Linear(in_features, out_features), nn.Tanh())


def hidden_stack(in_features: int, width: int, depth: int, gated: bool) -> nn.Sequential:
    """``depth`` hidden layers: in_features -> width, then width -> width."""
    dims = [in_features] + [width] * depth
    return nn.Sequential(
        *(hidden_layer(d_in, d_out, gated) for d_in, d_out in zip(dims[:-1], dims[1:], strict=True))
    )
