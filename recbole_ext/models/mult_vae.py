"""Mult-VAE: Dawen Liang, Rahul G. Krishnan, Matthew D. Hoffman and Tony Jebara, "Variational
Autoencoders for Collaborative Filtering", WWW 2018 (official code: dawenl/vae_cf).

A user's whole training row x (0/1 over items) is L2-normalised, dropped out and encoded by a tanh
MLP into q(z | x) = N(mu, diag(sigma^2)); z = mu + eps * sigma (eps ~ N(0, I)) in training and
z = mu at test; a tanh MLP decodes z to item logits with a multinomial likelihood. The loss is
-sum_i x_i log softmax(logits)_i + beta * KL(q(z | x) || N(0, I)), averaged over the batch, with
beta = min(anneal_cap, step / total_anneal_steps) where step counts the optimizer steps taken.

Batches: under the harness's ``train_regime: users`` each row of a batch is one distinct user
(the paper's batches of users); under ``interactions`` a user appears once per interaction.
Either way the model reads the user's full row from the training interactions.
"""

from __future__ import annotations

from typing import Any

import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType
from torch import Tensor, nn

from recbole_ext.layers.vae import (
    UserHistory,
    init_liang_,
    kl_standard_normal,
    linear_anneal,
    mlp,
    multinomial_log_likelihood,
    normalize_and_dropout,
    reparameterize,
)


class MultVAE(GeneralRecommender):
    """Mult-VAE^PR with users' full interaction rows, N(0, 1) noise and per-step KL annealing."""

    input_type = InputType.POINTWISE

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.hidden_sizes = list(config["mlp_hidden_size"])
        self.latent_dim = int(config["latent_dimension"])
        self.dropout_prob = float(config["dropout_prob"])
        self.anneal_cap = float(config["anneal_cap"])
        self.total_anneal_steps = int(config["total_anneal_steps"])
        self.l2_lambda = float(config["l2_lambda"] or 0.0)

        self.history = UserHistory.from_dataset(dataset)
        # One encoder output layer of width 2 * latent (mu, logvar), as in vae_cf.
        self.encoder = mlp([self.n_items, *self.hidden_sizes, 2 * self.latent_dim])
        self.decoder = mlp([self.latent_dim, *self.hidden_sizes[::-1], self.n_items])
        self.input_dropout = nn.Dropout(self.dropout_prob)
        init_liang_(self)
        # Optimizer steps taken so far; a buffer so that checkpoints resume the schedule.
        self.register_buffer("anneal_step", torch.zeros((), dtype=torch.long))
        self.last_loss_terms: dict[str, float] = {}

    def encode(self, rating_matrix: Tensor) -> tuple[Tensor, Tensor]:
        h = normalize_and_dropout(rating_matrix, self.input_dropout)
        h = self.encoder(h)
        return h[:, : self.latent_dim], h[:, self.latent_dim :]

    def forward(self, rating_matrix: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Rows [B, n_items] -> (logits [B, n_items], mu [B, D], logvar [B, D])."""
        mu, logvar = self.encode(rating_matrix)
        z = reparameterize(mu, logvar, self.training)
        return self.decoder(z), mu, logvar

    def current_beta(self) -> float:
        return linear_anneal(int(self.anneal_step), self.total_anneal_steps, self.anneal_cap)

    def l2_penalty(self) -> Tensor:
        """l2_lambda * sum of squared weight matrices (biases excluded), as vae_cf's 2 * reg."""
        weights = [m.weight for m in self.modules() if isinstance(m, torch.nn.Linear)]
        return self.l2_lambda * sum(w.pow(2).sum() for w in weights)

    def calculate_loss(self, interaction: Any) -> Tensor:
        x = self.history(interaction[self.USER_ID])
        logits, mu, logvar = self.forward(x)
        nll = -multinomial_log_likelihood(logits, x).mean()
        kl = kl_standard_normal(mu, logvar).mean()
        beta = self.current_beta()
        total = nll + beta * kl
        l2 = self.l2_penalty() if self.l2_lambda > 0 else torch.zeros((), device=x.device)
        total = total + l2
        if self.training:
            self.anneal_step += 1
        self.last_loss_terms = {
            "nll": nll.item(),
            "kl": kl.item(),
            "beta": beta,
            "l2": l2.item(),
            "total": total.item(),
        }
        return total

    def full_sort_predict(self, interaction: Any) -> Tensor:
        """Scores [B, n_items] (logits: the softmax is monotone) from each user's training row."""
        logits, _, _ = self.forward(self.history(interaction[self.USER_ID]))
        return logits

    def predict(self, interaction: Any) -> Tensor:
        scores = self.full_sort_predict(interaction)
        items = interaction[self.ITEM_ID]
        return scores.gather(1, items.unsqueeze(1)).squeeze(1)
