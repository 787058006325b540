"""Latent-variable helpers for sequential VAEs: reparameterised samples, KL terms, annealing,
the variational-dropout prior penalty, the per-position reconstruction loss and its negative
samplers (:func:`~recbole_ext.layers.next_item.uniform_negatives`: any item but the target;
:func:`sample_negatives_outside`:
any item outside a given set, such as the user's sequence)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import Dirichlet, kl_divergence

from recbole_ext.layers.next_item import next_item_loss

LATENTS = ("gaussian", "dirichlet")

# Kingma, Salimans & Welling (NeurIPS 2015), variational dropout: the polynomial fit of
# -KL(q(w | alpha) || log-uniform prior) = const + 0.5 log a + c1 a + c2 a^2 + c3 a^3.
_VD_C1, _VD_C2, _VD_C3 = 1.16145124, -1.50204118, 0.58629921


def kl_weight(step: int, total_steps: int, cap: float) -> float:
    """Linear KL annealing per optimizer step: ``min(cap, step / total_steps)``."""
    if total_steps <= 0:
        return float(cap)
    return float(min(cap, step / total_steps))


def gaussian_sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``mu + sigma * eps``, eps ~ N(0, I)."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)), summed over the last dimension."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=-1)


def dirichlet_concentration(
    raw: torch.Tensor, minimum: float = 1e-2, maximum: float = 1e3
) -> torch.Tensor:
    """Positive concentrations from unconstrained encoder outputs.

    The floor keeps ``rsample`` away from exact zeros (whose implicit-reparameterisation
    gradients are not finite); the ceiling keeps lgamma and digamma in range.
    """
    return (F.softplus(raw) + minimum).clamp(max=maximum)


def dirichlet_sample(concentration: torch.Tensor) -> torch.Tensor:
    """A reparameterised Dirichlet sample (implicit reparameterisation, ``rsample``)."""
    return Dirichlet(concentration).rsample()


def dirichlet_mean(concentration: torch.Tensor) -> torch.Tensor:
    return concentration / concentration.sum(dim=-1, keepdim=True)


def dirichlet_kl(concentration: torch.Tensor, prior: float) -> torch.Tensor:
    """KL(Dir(concentration) || Dir(prior * 1)), one value per distribution (last dim)."""
    prior_dist = Dirichlet(torch.full_like(concentration, prior))
    return kl_divergence(Dirichlet(concentration), prior_dist)


def variational_dropout_penalty(alpha: torch.Tensor) -> torch.Tensor:
    """The approximate KL of a variational-dropout noise scale ``alpha`` to its prior
    (minus the polynomial fit; constant dropped), averaged over its entries."""
    poly = 0.5 * torch.log(alpha) + _VD_C1 * alpha + _VD_C2 * alpha**2 + _VD_C3 * alpha**3
    return -poly.mean()


def logit_of_dropout_alpha(p: float) -> float:
    """Initial logit of the variational-dropout scale for a dropout rate p (Gaussian dropout has
    variance p / (1 - p); the scale is its square root), with p kept in (0, 0.5)."""
    p = min(max(p, 1e-4), 0.4999)
    alpha = math.sqrt(p / (1 - p))
    return math.log(alpha / (1 - alpha))


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``valid`` (same shape, bool) holds."""
    weights = valid.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def sample_negatives_outside(
    exclude: torch.Tensor, n_items: int, count: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``[B, count]`` negatives, each uniform over the items ``1 .. n_items - 1`` that are not in
    its row of ``exclude`` ``[B, K]`` (ids outside ``1 .. n_items - 1``, such as the padding 0,
    and repeats are ignored). Every row must leave at least one item.

    Exact and loop-free: the r-th allowed item (0-based) is ``r + 1`` plus the number of excluded
    items below it, and excluded item ``e_j`` (the j-th smallest, 0-based) is below it exactly
    when ``e_j - 1 - j`` (the allowed items below ``e_j``) is at most r.
    """
    batch, width = exclude.shape
    device = exclude.device
    ids = exclude.sort(dim=1).values
    repeat = torch.zeros_like(ids, dtype=torch.bool)
    repeat[:, 1:] = ids[:, 1:] == ids[:, :-1]
    dropped = repeat | (ids < 1) | (ids >= n_items)
    # The distinct excluded ids first, ascending; the dropped entries after them.
    ids = ids.masked_fill(dropped, n_items).sort(dim=1).values
    kept = ids < n_items
    allowed_below = ids - 1 - torch.arange(width, device=device)
    allowed_below = allowed_below.masked_fill(~kept, n_items + width)  # never counted
    n_allowed = (n_items - 1 - kept.sum(dim=1)).unsqueeze(1)
    uniform = torch.rand(batch, count, generator=generator, device=device, dtype=torch.float64)
    rank = (uniform * n_allowed).long().clamp(max=n_allowed - 1)
    return rank + 1 + torch.searchsorted(allowed_below, rank, right=True)


def reconstruction_loss(
    output: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    item_weight: torch.Tensor,
    kind: str = "bce",
    negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-item loss over the real positions of ``output`` ``[B, L, H]``.

    ``bce``: SASRec's binary cross-entropy with one negative item per position: ``negatives``
    ``[N]`` (one per real position, in the row-major order of ``valid``) if given, else drawn by
    :func:`~recbole_ext.layers.next_item.uniform_negatives`; ``ce``: softmax cross-entropy
    over all items.
    ``item_weight`` ``[n_items, H]`` is the (tied) item embedding table, row 0 the padding.
    """
    hidden = output[valid]  # only real positions: the mean Beauty sequence is ~6 of 50
    target = targets[valid]
    if kind not in ("bce", "ce"):
        raise ValueError(f"rec_loss must be 'bce' or 'ce', not {kind!r}")
    if kind == "ce" or negatives is None:
        return next_item_loss(hidden, target, item_weight, kind)
    negative = negatives
    pos_logit = (hidden * item_weight[target]).sum(-1)
    neg_logit = (hidden * item_weight[negative]).sum(-1)
    return -(F.logsigmoid(pos_logit) + F.logsigmoid(-neg_logit)).mean()
