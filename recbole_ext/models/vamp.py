"""VAE with a VampPrior for collaborative filtering ("Vamp"): Daeryong Kim and Bongwon Suh,
"Enhancing VAEs for Collaborative Filtering: Flexible Priors & Gating Mechanisms", RecSys 2019
(official code: psywaves/EVCF), building on Mult-VAE (Liang et al., WWW 2018) and the VampPrior
(Tomczak & Welling, AISTATS 2018).

Architecture (EVCF's ``vamp`` with ``num_layers`` hidden layers): x (a user's 0/1 training row) is
L2-normalised, dropped out (p = 0.5) and encoded by tanh (or gated) layers of width ``hidden_size``
into q(z | x) = N(mu, diag(exp(logvar))), logvar clipped to [-12, 4] by hardtanh; z is decoded by
the mirrored layers to item logits. Weights: He initialisation; the K pseudo-inputs u_k =
hardtanh_{[0,1]}(W e_k), W ~ N(0.05, 0.01^2).

Loss per user: -log p(x | z) + beta * (log q(z | x) - log p(z)) at a sampled z, with the VampPrior
p(z) = (1/K) sum_k q(z | u_k) (logsumexp); averaged over the batch. The likelihood is ``bernoulli``
(EVCF's default, sigmoid means clamped to [1e-5, 1 - 1e-5]) or ``multinomial`` (Mult-VAE's).

beta warm-up per epoch, as EVCF: beta = min(max_beta, max_beta * epoch / warmup), epoch 1-based.
The model counts epochs itself: RecBole's trainer calls ``model.train()`` exactly once at the
start of every training epoch (``Trainer._train_epoch``), so each ``train(True)`` call starts a
new epoch. The count is a buffer (checkpoints resume it); :meth:`Vamp.set_epoch` overrides it.

Optimiser: EVCF uses Adam on per-tensor normalised gradients. With ``normalize_gradients: true``
the model normalises each parameter's gradient after backward (hooks), so RecBole's ``learner:
adam`` performs exactly that update; :class:`recbole_ext.optim.AdamNormGrad` is the same update
as an optimiser class for a trainer that can build it.

Official-code behaviour kept (and why): the pseudo-inputs go through the encoder's dropout in
training, because EVCF's dropout is the encoder's first layer (``pseudo_input_dropout: true``;
set false to encode them without dropout); the pseudo-inputs are not L2-normalised, as in EVCF.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType
from torch import Tensor, nn

from recbole_ext.layers.gated import hidden_stack
from recbole_ext.layers.vae import (
    LIKELIHOODS,
    UserHistory,
    clip_logvar,
    he_init_,
    log_normal_diag,
    reparameterize,
    warmup_beta,
)
from recbole_ext.layers.vamp import PseudoInputs, vamp_log_prior
from recbole_ext.optim import attach_gradient_normalization


class Vamp(GeneralRecommender):
    """One stochastic layer with a VampPrior (EVCF's "Vamp")."""

    input_type = InputType.POINTWISE
    gated = False  # EVCF's gating is a different model (HVampGated), not a hyperparameter here

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self._read_sizes(config)
        self.dropout_prob = float(config["dropout_prob"])
        self.input_dropout = nn.Dropout(self.dropout_prob)
        self.likelihood = str(config["likelihood"]).lower()
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {sorted(LIKELIHOODS)}: {self.likelihood}")
        self.max_beta = float(config["max_beta"])
        self.warmup = int(config["warmup"])
        self.pseudo_input_dropout = bool(config["pseudo_input_dropout"])
        self.normalize_gradients = bool(config["normalize_gradients"])

        self.history = UserHistory.from_dataset(dataset)
        self._build_networks()
        he_init_(self)
        self.pseudo_inputs = PseudoInputs(
            int(config["number_components"]),
            self.n_items,
            float(config["pseudoinputs_mean"]),
            float(config["pseudoinputs_std"]),
        )
        self.register_buffer("epochs_started", torch.zeros((), dtype=torch.long))
        self._grad_hooks: list[Any] | None = None
        self.last_loss_terms: dict[str, float] = {}

    # --- networks -------------------------------------------------------------------------------
    def _read_sizes(self, config: Any) -> None:
        self.hidden_size = int(config["hidden_size"])
        self.num_layers = int(config["num_layers"])
        self.z1_size = int(config["z1_size"])

    def _build_networks(self) -> None:
        h, depth = self.hidden_size, self.num_layers
        self.q_z_layers = hidden_stack(self.n_items, h, depth, self.gated)
        self.q_z_mean = nn.Linear(h, self.z1_size)
        self.q_z_logvar = nn.Linear(h, self.z1_size)
        self.p_x_layers = hidden_stack(self.z1_size, h, depth, self.gated)
        self.p_x_out = nn.Linear(h, self.n_items)

    def _dropout(self, x: Tensor, active: bool) -> Tensor:
        return self.input_dropout(x) if active else x

    def q_z(self, x: Tensor, dropout: bool = True) -> tuple[Tensor, Tensor]:
        """Posterior parameters (mean, clipped logvar) of an already normalised input."""
        h = self.q_z_layers(self._dropout(x, dropout))
        return self.q_z_mean(h), clip_logvar(self.q_z_logvar(h))

    def prior_components(self) -> tuple[Tensor, Tensor]:
        """The VampPrior's K components: q(z | u_k) for each pseudo-input, ([K, D], [K, D])."""
        return self.q_z(self.pseudo_inputs(), dropout=self.pseudo_input_dropout)

    def log_prior(self, z: Tensor) -> Tensor:
        return vamp_log_prior(z, *self.prior_components())

    def latents(self, x: Tensor) -> dict[str, Tensor]:
        """Encode rows [B, n_items]: z (sampled in training, the mean at test) and q's params."""
        mean, logvar = self.q_z(F.normalize(x, dim=1))
        return {"z1": reparameterize(mean, logvar, self.training), "q1": mean, "q1_lv": logvar}

    def kl_divergence(self, lat: dict[str, Tensor]) -> Tensor:
        """Single-sample KL estimate log q(z | x) - log p(z) per row."""
        return log_normal_diag(lat["z1"], lat["q1"], lat["q1_lv"]) - self.log_prior(lat["z1"])

    def decode(self, lat: dict[str, Tensor]) -> Tensor:
        return self.p_x_out(self.p_x_layers(lat["z1"]))

    def forward(self, rating_matrix: Tensor) -> Tensor:
        """Rows [B, n_items] -> item logits [B, n_items] (z = posterior mean outside training)."""
        return self.decode(self.latents(rating_matrix))

    # --- training -------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Vamp:
        # RecBole's Trainer calls model.train() once at the start of each training epoch.
        if mode and "epochs_started" in self._buffers:
            self.epochs_started += 1
        return super().train(mode)

    def set_epoch(self, epoch: int) -> None:
        """Set the (1-based) epoch the beta warm-up reads, for trainers that drive it directly."""
        self.epochs_started.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return max(1, int(self.epochs_started))

    def current_beta(self) -> float:
        return warmup_beta(self.epoch, self.warmup, self.max_beta)

    def calculate_loss(self, interaction: Any) -> Tensor:
        if self.normalize_gradients and self._grad_hooks is None:
            # Attached here, after RecBole has moved the model to its device.
            self._grad_hooks = attach_gradient_normalization(self)
        x = self.history(interaction[self.USER_ID])
        lat = self.latents(x)
        logits = self.decode(lat)
        nll = -LIKELIHOODS[self.likelihood](logits, x).mean()
        kl = self.kl_divergence(lat).mean()
        beta = self.current_beta()
        total = nll + beta * kl
        self.last_loss_terms = {
            "nll": nll.item(),
            "kl": kl.item(),
            "beta": beta,
            "epoch": float(self.epoch),
            "total": total.item(),
        }
        return total

    # --- scoring --------------------------------------------------------------------------------
    def full_sort_predict(self, interaction: Any) -> Tensor:
        """Scores [B, n_items]: logits (monotone in the Bernoulli means and softmax alike)."""
        return self.forward(self.history(interaction[self.USER_ID]))

    def predict(self, interaction: Any) -> Tensor:
        scores = self.full_sort_predict(interaction)
        return scores.gather(1, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)
