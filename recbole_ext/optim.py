"""Adam on per-tensor normalised gradients, EVCF's optimiser (Kim & Suh, RecSys 2019).

Each parameter's gradient g is replaced by g / (||g||_2 + 1e-7) before the Adam update. Two ways
to use it:

- :class:`AdamNormGrad`, a ``torch.optim.Optimizer`` (RecBole's trainer only builds its built-in
  optimisers from ``config["learner"]``, so selecting it needs the trainer to know the name
  ``adam_normgrad``; see :func:`build_optimizer`).
- :func:`attach_gradient_normalization`: hooks that normalise each gradient right after backward,
  so RecBole's own ``learner: adam`` performs the same update with no trainer support. The models
  turn this on with the config key ``normalize_gradients``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

GRAD_NORM_EPS = 1e-7


def normalize_gradient(grad: Tensor) -> Tensor:
    return grad / (torch.linalg.vector_norm(grad) + GRAD_NORM_EPS)


class AdamNormGrad(Optimizer):
    """Adam whose every step first scales each parameter's gradient to unit L2 norm.

    The moment updates follow EVCF's (the pre-1.0 PyTorch Adam): weight decay is added after the
    normalisation, and eps is added to sqrt(v) before the bias correction folded into the step.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = normalize_gradient(p.grad)
                if group["weight_decay"] != 0:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                t = state["step"]
                step_size = group["lr"] * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
                p.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(group["eps"]), value=-step_size)
        return loss


def build_optimizer(
    learner: str, params: Iterable[Any], learning_rate: float, weight_decay: float = 0.0
) -> Optimizer | None:
    """The optimiser this package adds for ``learner`` (``adam_normgrad``), or None if unknown.

    For a trainer patch: ``_build_optimizer`` can try this before RecBole's own names.
    """
    if learner.lower() == "adam_normgrad":
        return AdamNormGrad(params, lr=learning_rate, weight_decay=weight_decay)
    return None


def attach_gradient_normalization(module: nn.Module) -> list[Any]:
    """Normalise each parameter's accumulated gradient to unit L2 norm after every backward.

    With plain Adam this is AdamNormGrad (up to where eps sits, ~1e-8). Returns the hook handles.
    """

    def hook(param: Tensor) -> None:
        if param.grad is not None:
            param.grad.div_(torch.linalg.vector_norm(param.grad) + GRAD_NORM_EPS)

    return [
        p.register_post_accumulate_grad_hook(hook) for p in module.parameters() if p.requires_grad
    ]
