"""Building blocks of the Mult-VAE family (Liang et al., WWW 2018; Kim & Suh, RecSys 2019).

- :class:`UserHistory`: each user's training items as a dense 0/1 row, built per batch from a CSR
  matrix kept on the model's device.
- :func:`mlp`: the tanh MLPs of Mult-VAE / Mult-DAE.
- :func:`reparameterize`, :func:`log_normal_diag`, :func:`kl_standard_normal`: Gaussian latents.
- :func:`multinomial_log_likelihood`, :func:`bernoulli_log_likelihood`: the two likelihoods.
- :func:`linear_anneal` (Mult-VAE's per-step beta) and :func:`warmup_beta` (EVCF's per-epoch beta).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# EVCF clips every log-variance head to this range (hardtanh) to keep exp(logvar) finite.
LOGVAR_MIN = -12.0
LOGVAR_MAX = 4.0

# EVCF clamps Bernoulli means to [1e-5, 1 - 1e-5]; clamping the logits at the matching value is
# the same function (sigmoid is monotone) and keeps the loss on the stable logits path.
_BERNOULLI_EPS = 1e-5
_BERNOULLI_LOGIT_BOUND = math.log((1.0 - _BERNOULLI_EPS) / _BERNOULLI_EPS)

_LOG_2PI = math.log(2.0 * math.pi)


def binary_interaction_matrix(dataset: Any) -> sp.csr_matrix:
    """The dataset's user x item interactions as a CSR matrix of ones (repeats count once)."""
    matrix = dataset.inter_matrix(form="csr").astype(np.float32)
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    matrix.eliminate_zeros()
    return matrix


class UserHistory(nn.Module):
    """Users' item sets as dense rows on demand.

    RecBole's ``AutoEncoderMixin`` pads every user's history to the longest one ([users x max
    length] ids), which does not fit for large catalogues; a CSR matrix holds exactly the
    interactions. The buffers are not persistent: they are data, not weights, so checkpoints
    stay small, and :meth:`set_matrix` can swap in other histories (e.g. fold-in rows for
    held-out users).
    """

    indptr: Tensor
    indices: Tensor

    def __init__(self, matrix: sp.csr_matrix) -> None:
        super().__init__()
        self.register_buffer("indptr", torch.zeros(1, dtype=torch.long), persistent=False)
        self.register_buffer("indices", torch.zeros(0, dtype=torch.long), persistent=False)
        self.n_items = 0
        self.set_matrix(matrix)

    @classmethod
    def from_dataset(cls, dataset: Any) -> UserHistory:
        return cls(binary_interaction_matrix(dataset))

    def set_matrix(self, matrix: sp.csr_matrix) -> None:
        """Replace the histories (rows: user ids, columns: item ids; nonzero = interacted)."""
        matrix = sp.csr_matrix(matrix)
        matrix.sum_duplicates()
        matrix.eliminate_zeros()
        device = self.indptr.device
        self.indptr = torch.as_tensor(matrix.indptr, dtype=torch.long, device=device)
        self.indices = torch.as_tensor(matrix.indices, dtype=torch.long, device=device)
        self.n_items = matrix.shape[1]

    def forward(self, users: Tensor) -> Tensor:
        """[B] user ids -> [B, n_items] float rows with 1 at the user's items."""
        users = users.to(self.indptr.device)
        starts = self.indptr[users]
        counts = self.indptr[users + 1] - starts
        batch = users.shape[0]
        rows = torch.repeat_interleave(torch.arange(batch, device=users.device), counts)
        # Position of each gathered entry inside its user's slice of ``indices``.
        first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        offsets = torch.arange(rows.shape[0], device=users.device) - first
        cols = self.indices[torch.repeat_interleave(starts, counts) + offsets]
        out = torch.zeros(batch, self.n_items, device=users.device)
        out[rows, cols] = 1.0
        return out


def normalize_and_dropout(x: Tensor, dropout: nn.Module) -> Tensor:
    """Mult-VAE's input: each row scaled to unit L2 norm, then ``dropout`` (a module, so that
    ``fast_dropout`` can swap it: :mod:`recbole_ext.layers.dropout`)."""
    return dropout(F.normalize(x, dim=1))


def mlp(dims: list[int], activation: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    """Linear layers through ``dims`` with ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def init_liang_(module: nn.Module) -> None:
    """vae_cf's initialisation: Glorot-uniform weights, biases N(0, 0.001^2) truncated at 2 std."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.trunc_normal_(m.bias, std=0.001, a=-0.002, b=0.002)


def he_init_(module: nn.Module) -> None:
    """EVCF's initialisation: Linear weights N(0, 2 / fan_in); biases keep PyTorch's default."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.in_features))


def clip_logvar(logvar: Tensor) -> Tensor:
    return F.hardtanh(logvar, LOGVAR_MIN, LOGVAR_MAX)


def reparameterize(mu: Tensor, logvar: Tensor, training: bool) -> Tensor:
    """z = mu + eps * sigma with eps ~ N(0, I) in training; z = mu otherwise."""
    if not training:
        return mu
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


def log_normal_diag(x: Tensor, mean: Tensor, logvar: Tensor, dim: int = -1) -> Tensor:
    """log N(x; mean, diag(exp(logvar))), summed over ``dim`` (with the 2*pi constant)."""
    return -0.5 * (_LOG_2PI + logvar + (x - mean).pow(2) * torch.exp(-logvar)).sum(dim)


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per row."""
    return 0.5 * (torch.exp(logvar) + mu.pow(2) - 1.0 - logvar).sum(-1)


def multinomial_log_likelihood(logits: Tensor, x: Tensor) -> Tensor:
    """sum_i x_i log softmax(logits)_i per row."""
    return (F.log_softmax(logits, dim=-1) * x).sum(-1)


def bernoulli_log_likelihood(logits: Tensor, x: Tensor) -> Tensor:
    """sum_i x_i log p_i + (1 - x_i) log(1 - p_i) per row, p = sigmoid(logits) clamped as EVCF."""
    clamped = logits.clamp(-_BERNOULLI_LOGIT_BOUND, _BERNOULLI_LOGIT_BOUND)
    return -F.binary_cross_entropy_with_logits(clamped, x, reduction="none").sum(-1)


LIKELIHOODS = {
    "multinomial": multinomial_log_likelihood,
    "bernoulli": bernoulli_log_likelihood,
}


def linear_anneal(step: int, total_steps: int, cap: float) -> float:
    """Mult-VAE's KL weight: min(cap, step / total_steps); ``cap`` when total_steps <= 0.

    ``step`` counts the optimizer steps already taken, so the first step uses beta = 0.
    """
    if total_steps <= 0:
        return float(cap)
    return float(min(cap, step / total_steps))


def warmup_beta(epoch: int, warmup: int, max_beta: float) -> float:
    """EVCF's KL weight in (1-based) ``epoch``: max_beta * epoch / warmup, capped at max_beta."""
    if warmup <= 0:
        return float(max_beta)
    return float(min(max_beta, max_beta * epoch / warmup))
