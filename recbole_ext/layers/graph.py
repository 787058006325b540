"""The user-item graph of LightGCN and NGCF as a torch CSR matrix, and its products.

- :func:`normalized_adjacency`: ``D^-1/2 A D^-1/2`` of the bipartite user-item graph (users
  first, then items), the matrix RecBole's graph models build, straight from the interaction
  arrays with NumPy (RecBole fills a ``dok_matrix`` from a Python dict, slow on ml-1m).
- :func:`csr_matmul`: a CSR sparse-dense product whose backward pass multiplies by a given
  transposed matrix (the same matrix when it is symmetric), so autograd never transposes the
  sparse matrix.
- :func:`transpose_positions` and :func:`drop_edges`: RecBole's ``SparseDropout`` (node dropout)
  on such a matrix, with the dropped matrix's transpose for the backward pass.
- :func:`csr_identity`: a sparse identity matrix in CSR form.
- :class:`CsrAdjacency`: ``get_norm_adj_mat`` returning that matrix, mixed into a subclass of a
  RecBole graph model.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

# RecBole adds this to every degree before the inverse square root (no division by zero for the
# padding ids, which have no edge).
DEGREE_EPSILON = 1e-7

_INT32_MAX = np.iinfo(np.int32).max


def _csr_tensor(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():
        # Torch warns once per process that CSR support is "beta"; the products used here
        # (CSR @ dense on CPU and CUDA) are the stable part of it.
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


def normalized_adjacency(
    users: np.ndarray,
    items: np.ndarray,
    n_users: int,
    n_items: int,
    device: torch.device | str = "cpu",
) -> Tensor:
    """The symmetric normalised adjacency of the user-item graph as a float32 CSR tensor.

    Nodes are the ``n_users`` users then the ``n_items`` items; an interaction (u, i) is the two
    edges (u, n_users + i) and (n_users + i, u), repeated interactions count once. Entry (r, c) is
    ``1 / sqrt(deg(r) deg(c))`` with ``deg`` the number of neighbours plus 1e-7, computed in
    float64 and rounded to float32, as RecBole does. Columns are sorted within each row; indices
    are int32 unless the graph is too large for them.
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    n_nodes = n_users + n_items
    # Sorted unique (user, item) pairs (a sort, not np.unique: its hashing is seconds on ml-1m).
    pairs = np.sort(users * n_items + items)
    pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))]
    user_ids, item_ids = pairs // n_items, pairs % n_items
    # The user rows are in CSR order (row, then column) already; a stable sort by item keeps the
    # users ascending within each item row. User nodes come before item nodes.
    by_item = np.argsort(item_ids, kind="stable")
    rows = np.concatenate([user_ids, item_ids[by_item] + n_users])
    cols = np.concatenate([item_ids + n_users, user_ids[by_item]])

    neighbours = np.bincount(rows, minlength=n_nodes)
    inv_sqrt_degree = np.power(neighbours.astype(np.float64) + DEGREE_EPSILON, -0.5)
    values = (inv_sqrt_degree[rows] * inv_sqrt_degree[cols]).astype(np.float32)
    crow = np.zeros(n_nodes + 1, dtype=np.int64)
    np.cumsum(neighbours, out=crow[1:])

    index_dtype = np.int32 if max(len(values), n_nodes) <= _INT32_MAX else np.int64
    return _csr_tensor(
        torch.from_numpy(crow.astype(index_dtype)).to(device),
        torch.from_numpy(cols.astype(index_dtype)).to(device),
        torch.from_numpy(values).to(device),
        (n_nodes, n_nodes),
    )


def csr_identity(n: int, device: torch.device | str = "cpu") -> Tensor:
    """The n x n identity matrix as a float32 CSR tensor."""
    index = torch.arange(n + 1, dtype=torch.int32, device=device)
    return _csr_tensor(index, index[:n], torch.ones(n, device=device), (n, n))


class _CsrMatmul(torch.autograd.Function):
    """``matrix @ dense`` whose gradient is ``transposed @ grad``; no gradient for the matrix."""

    @staticmethod
    def forward(ctx: Any, matrix: Tensor, transposed: Tensor, dense: Tensor) -> Tensor:
        # A constant of the graph, not an input to differentiate: no save_for_backward needed.
        ctx.transposed = transposed
        return matrix @ dense

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, None, Tensor | None]:
        if not ctx.needs_input_grad[2]:
            return None, None, None
        return None, None, ctx.transposed @ grad.contiguous()


def csr_matmul(matrix: Tensor, dense: Tensor, transposed: Tensor | None = None) -> Tensor:
    """``matrix @ dense`` for a CSR ``matrix``, differentiable in ``dense``.

    The backward pass multiplies the incoming gradient by ``transposed`` (``matrix`` itself when
    omitted: pass it only when the matrix is not symmetric), a CSR product like the forward one.
    """
    return _CsrMatmul.apply(matrix, matrix if transposed is None else transposed, dense)


def transpose_positions(matrix: Tensor) -> Tensor:
    """For a CSR matrix whose sparsity pattern is symmetric (sorted columns in each row):
    the positions in ``matrix.values()`` of the transpose's stored entries, in its CSR order.

    ``values()[positions]`` with the matrix's own indices is then the transposed matrix.
    """
    crow, col = matrix.crow_indices(), matrix.col_indices()
    n_rows = matrix.size(0)
    rows = torch.repeat_interleave(
        torch.arange(n_rows, device=crow.device), crow[1:].long() - crow[:-1].long()
    )
    # The transpose stores entry (c, r) of the matrix at the place of (c, r) sorted by row then
    # column, that is, the matrix's entries sorted by (column, row). Kept in the index dtype
    # (int32 mostly): a gather through int32 positions is several times faster on the CPU.
    return torch.argsort(col.long() * n_rows + rows).to(col.dtype)


def drop_edges(matrix: Tensor, positions: Tensor, drop_prob: float) -> tuple[Tensor, Tensor]:
    """RecBole's ``SparseDropout`` on a CSR matrix: each stored entry is zeroed with probability
    ``drop_prob`` and the others are scaled by ``1 / (1 - drop_prob)``.

    The mask is drawn as RecBole draws it (``floor(U + keep)`` over the stored values, one uniform
    number each, in the matrix's storage order). Dropped entries stay stored as zeros, so the
    matrix keeps its indices. Returns the dropped matrix and its transpose (``positions`` from
    :func:`transpose_positions`), which is what the backward pass multiplies by: dropping makes
    the matrix unsymmetric.
    """
    keep = 1.0 - drop_prob
    values = matrix.values()
    # floor(U + keep) is 1 (kept) or 0 (dropped); times 1 / keep it is each entry's factor, and
    # value * factor rounds as RecBole's value * (1 / keep).
    factor = (torch.rand(values.size(), device=values.device) + keep).floor_().mul_(1.0 / keep)
    dropped = values * factor
    crow, col, size = matrix.crow_indices(), matrix.col_indices(), tuple(matrix.shape)
    return (
        _csr_tensor(crow, col, dropped, size),
        _csr_tensor(crow, col, dropped.index_select(0, positions), size),
    )


class CsrAdjacency:
    """Mix in before a RecBole graph model (``class LightGCN(CsrAdjacency, RecBoleLightGCN)``):
    the model's ``get_norm_adj_mat``, which RecBole's ``__init__`` calls, returns
    :func:`normalized_adjacency` of ``interaction_matrix`` on the model's device."""

    interaction_matrix: Any
    n_users: int
    n_items: int
    device: Any

    def get_norm_adj_mat(self) -> Tensor:
        """``D^-1/2 A D^-1/2`` of the training interactions as a float32 CSR tensor on the
        model's device (RecBole's method returns a COO tensor on the CPU)."""
        return normalized_adjacency(
            self.interaction_matrix.row,
            self.interaction_matrix.col,
            self.n_users,
            self.n_items,
            device=self.device,
        )
