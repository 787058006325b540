"""Hierarchical VAE with a VampPrior ("H+Vamp"): Daeryong Kim and Bongwon Suh, "Enhancing VAEs
for Collaborative Filtering: Flexible Priors & Gating Mechanisms", RecSys 2019 (official code:
psywaves/EVCF, model ``hvamp``).

Two stochastic layers (everything else as :mod:`recbole_ext.models.vamp`: input, likelihoods,
clipped log-variances, He init, pseudo-inputs, per-epoch beta warm-up, normalised gradients):

- q(z2 | x): x -> ``num_layers`` hidden layers -> (mean, logvar) of z2;
- q(z1 | x, z2): [one hidden layer of x ; one hidden layer of z2] -> max(1, num_layers - 1) joint
  hidden layers -> (mean, logvar) of z1;
- p(z2): VampPrior, (1/K) sum_k q(z2 | u_k);
- p(z1 | z2): z2 -> ``num_layers`` hidden layers -> (mean, logvar) of z1;
- p(x | z1, z2): [one hidden layer of z1 ; one of z2] -> max(1, num_layers - 1) joint layers ->
  item logits.

KL estimate per user at sampled (z1, z2): log q(z1 | x, z2) + log q(z2 | x) - log p(z1 | z2)
- log p(z2). At test z2 = its posterior mean and z1 = the mean of q(z1 | x, z2).
As in EVCF, the two branches that read x each apply their own dropout mask.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbole_ext.layers.gated import hidden_layer, hidden_stack
from recbole_ext.layers.vae import clip_logvar, log_normal_diag, reparameterize
from recbole_ext.models.vamp import Vamp


class HVamp(Vamp):
    """Two stochastic layers, VampPrior on the top one (EVCF's "H+Vamp")."""

    gated = False

    def _read_sizes(self, config: Any) -> None:
        super()._read_sizes(config)
        self.z2_size = int(config["z2_size"])

    def _build_networks(self) -> None:
        h, depth, g = self.hidden_size, self.num_layers, self.gated
        joint_depth = max(1, depth - 1)
        # q(z2 | x)
        self.q_z_layers = hidden_stack(self.n_items, h, depth, g)
        self.q_z_mean = nn.Linear(h, self.z2_size)
        self.q_z_logvar = nn.Linear(h, self.z2_size)
        # q(z1 | x, z2)
        self.q_z1_x = hidden_layer(self.n_items, h, g)
        self.q_z1_z2 = hidden_layer(self.z2_size, h, g)
        self.q_z1_joint = hidden_stack(2 * h, h, joint_depth, g)
        self.q_z1_mean = nn.Linear(h, self.z1_size)
        self.q_z1_logvar = nn.Linear(h, self.z1_size)
        # p(z1 | z2)
        self.p_z1_layers = hidden_stack(self.z2_size, h, depth, g)
        self.p_z1_mean = nn.Linear(h, self.z1_size)
        self.p_z1_logvar = nn.Linear(h, self.z1_size)
        # p(x | z1, z2)
        self.p_x_z1 = hidden_layer(self.z1_size, h, g)
        self.p_x_z2 = hidden_layer(self.z2_size, h, g)
        self.p_x_joint = hidden_stack(2 * h, h, joint_depth, g)
        self.p_x_out = nn.Linear(h, self.n_items)

    # q_z (inherited) is q(z2 | x); the VampPrior therefore sits on z2.
    def q_z1(self, x: Tensor, z2: Tensor) -> tuple[Tensor, Tensor]:
        hx = self.q_z1_x(self._dropout(x, True))
        h = self.q_z1_joint(torch.cat((hx, self.q_z1_z2(z2)), dim=1))
        return self.q_z1_mean(h), clip_logvar(self.q_z1_logvar(h))

    def p_z1(self, z2: Tensor) -> tuple[Tensor, Tensor]:
        h = self.p_z1_layers(z2)
        return self.p_z1_mean(h), clip_logvar(self.p_z1_logvar(h))

    def latents(self, x: Tensor) -> dict[str, Tensor]:
        x = F.normalize(x, dim=1)
        q2, q2_lv = self.q_z(x)
        z2 = reparameterize(q2, q2_lv, self.training)
        q1, q1_lv = self.q_z1(x, z2)
        z1 = reparameterize(q1, q1_lv, self.training)
        return {"z1": z1, "q1": q1, "q1_lv": q1_lv, "z2": z2, "q2": q2, "q2_lv": q2_lv}

    def kl_divergence(self, lat: dict[str, Tensor]) -> Tensor:
        p1, p1_lv = self.p_z1(lat["z2"])
        log_q = log_normal_diag(lat["z1"], lat["q1"], lat["q1_lv"]) + log_normal_diag(
            lat["z2"], lat["q2"], lat["q2_lv"]
        )
        log_p = log_normal_diag(lat["z1"], p1, p1_lv) + self.log_prior(lat["z2"])
        return log_q - log_p

    def decode(self, lat: dict[str, Tensor]) -> Tensor:
        h = torch.cat((self.p_x_z1(lat["z1"]), self.p_x_z2(lat["z2"])), dim=1)
        return self.p_x_out(self.p_x_joint(h))
