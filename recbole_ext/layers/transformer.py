"""A causal post-LayerNorm Transformer encoder (SASRec / ContrastVAE style) on fused primitives.

Sequences are right-padded (RecBole's layout: items first, padding after), so a causal mask alone
keeps every real position from seeing padding: padding only ever comes *after* a real position.
No key-padding mask is needed, which lets ``scaled_dot_product_attention`` run with
``is_causal=True`` (its fused kernels) instead of a materialised additive mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, then dropout, residual and LayerNorm (post-LN)."""

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        attn_dropout: float,
        hidden_dropout: float,
        layer_norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if hidden_size % n_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of n_heads {n_heads}")
        self.n_heads = n_heads
        self.attn_dropout = attn_dropout
        # One matmul for queries, keys and values instead of three.
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(hidden_dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``attn_mask`` (additive or boolean, broadcastable to ``[B, heads, L, L]``) replaces the
        causal mask, e.g. for left-padded sequences (ContrastVAE's official layout)."""
        batch, length, hidden = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.n_heads, hidden // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, L, head_dim]
        context = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.attn_dropout if self.training else 0.0,
            is_causal=attn_mask is None,
        )
        context = context.transpose(1, 2).reshape(batch, length, hidden)
        return self.norm(x + self.dropout(self.out(context)))


class FeedForward(nn.Module):
    """Position-wise GELU feed-forward, then dropout, residual and LayerNorm (post-LN)."""

    def __init__(
        self, hidden_size: int, inner_size: int, dropout: float, layer_norm_eps: float = 1e-12
    ) -> None:
        super().__init__()
        self.dense_1 = nn.Linear(hidden_size, inner_size)
        self.dense_2 = nn.Linear(inner_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.dense_2(F.gelu(self.dense_1(x)))))


class TransformerBlock(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        inner_size: int,
        hidden_dropout: float,
        attn_dropout: float,
        layer_norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.attention = CausalSelfAttention(
            hidden_size, n_heads, attn_dropout, hidden_dropout, layer_norm_eps
        )
        self.feed_forward = FeedForward(hidden_size, inner_size, hidden_dropout, layer_norm_eps)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.feed_forward(self.attention(x, attn_mask))


class CausalTransformerEncoder(nn.Module):
    """A stack of causal Transformer blocks: ``[B, L, H] -> [B, L, H]``.

    The output at position t depends only on inputs at positions <= t.
    """

    def __init__(
        self,
        n_layers: int,
        hidden_size: int,
        n_heads: int,
        inner_size: int,
        hidden_dropout: float,
        attn_dropout: float,
        layer_norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerBlock(
                hidden_size, n_heads, inner_size, hidden_dropout, attn_dropout, layer_norm_eps
            )
            for _ in range(n_layers)
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``attn_mask`` (optional) replaces the causal mask in every layer."""
        for layer in self.layers:
            x = layer(x, attn_mask)
        return x


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """N(0, std) for linear and embedding weights, zero biases, unit LayerNorm (BERT / SASRec).

    Use as ``model.apply(partial(init_weights, std=...))``.
    """
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
