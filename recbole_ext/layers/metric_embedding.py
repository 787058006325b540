"""Metric-embedding pieces shared by PRME and FME: squared Euclidean distances between embeddings,
the last item of a padded sequence, and the L2 penalty on the embeddings a batch touches.

Both models score a (context, candidate) pair by the squared distance of their embeddings in a
latent space, so the same two distance functions serve ``predict`` (one candidate per row) and
``full_sort_predict`` (every item per row).
"""

from __future__ import annotations

import torch


def squared_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise ``||x - y||^2`` over the last dimension: ``[..., d], [..., d] -> [...]``."""
    return (x - y).pow(2).sum(dim=-1)


def squared_distance_to_all(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``||x_b - t_n||^2`` for every row ``x_b`` of ``x`` ``[B, d]`` and ``t_n`` of ``table``
    ``[N, d]``: ``[B, N]``.

    Expanded as ``|x|^2 - 2 x.t + |t|^2`` so that no ``[B, N, d]`` tensor is built; rounding can
    make the result slightly negative, hence the clamp.
    """
    cross = x @ table.t()
    sq = x.pow(2).sum(dim=1, keepdim=True) - 2.0 * cross + table.pow(2).sum(dim=1).unsqueeze(0)
    return sq.clamp_min(0.0)


def last_items(item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
    """The last real item of each left-aligned, zero-padded sequence: ``[B, L], [B] -> [B]``."""
    index = (item_seq_len.long() - 1).clamp_min(0).unsqueeze(1)
    return item_seq.gather(1, index).squeeze(1)


def l2_penalty(*embeddings: torch.Tensor) -> torch.Tensor:
    """Sum of squared norms of each sample's embeddings, averaged over the batch.

    Matches the per-sample ``lambda * ||theta||^2`` of the papers' SGD updates: only the rows a
    sample uses are regularised, as often as they are used.
    """
    total = sum(e.pow(2).sum(dim=-1) for e in embeddings)
    return total.mean()  # type: ignore[union-attr]
