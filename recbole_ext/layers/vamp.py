"""VampPrior (Tomczak & Welling, AISTATS 2018) as used by EVCF (Kim & Suh, RecSys 2019).

The prior is the mixture of the encoder's posteriors at K learned pseudo-inputs:
p(z) = (1/K) sum_k q(z | u_k).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LOG_2PI = math.log(2.0 * math.pi)


class PseudoInputs(nn.Module):
    """K pseudo-inputs: a bias-free linear map of the K x K identity, then hardtanh(0, 1).

    ``linear(eye(K))`` is just the transposed weight, so the K x K x n_items product of the
    official code is skipped; the weight has nn.Linear(K, n_items)'s layout and EVCF's
    N(mean, std^2) initialisation.
    """

    def __init__(self, n_components: int, input_size: int, mean: float, std: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(input_size, n_components))
        nn.init.normal_(self.weight, mean, std)

    @property
    def n_components(self) -> int:
        return self.weight.shape[1]

    def forward(self) -> Tensor:
        """[K, input_size] pseudo-inputs in [0, 1]."""
        return F.hardtanh(self.weight.t(), 0.0, 1.0)


def vamp_log_prior(z: Tensor, means: Tensor, logvars: Tensor) -> Tensor:
    """log (1/K) sum_k N(z; means_k, diag(exp(logvars_k))) for each row of z.

    z: [B, D]; means, logvars: [K, D] (the encoder's posteriors at the pseudo-inputs). Returns [B].
    """
    # Broadcasting (z - means_k)^2 / var_k to [B, K, D] costs B*K*D memory and time (160 MB a
    # tensor at B=200, K=1000, D=200); the quadratic form expands into [B, D] x [D, K] products.
    # The expansion subtracts terms up to |z|^2 / var with var down to e^-12, so it runs in
    # float64, where that cancellation stays far below float32 resolution.
    zd, md, lvd = z.double(), means.double(), logvars.double()
    precision = torch.exp(-lvd)
    quad = (zd * zd) @ precision.t() - 2.0 * zd @ (md * precision).t()
    quad = quad + (md * md * precision).sum(1)
    log_det = lvd.sum(1) + z.shape[1] * _LOG_2PI
    log_components = -0.5 * (quad + log_det)  # [B, K]
    log_prior = torch.logsumexp(log_components, dim=1) - math.log(means.shape[0])
    return log_prior.to(z.dtype)
