"""Mult-DAE: Dawen Liang, Rahul G. Krishnan, Matthew D. Hoffman and Tony Jebara, "Variational
Autoencoders for Collaborative Filtering", WWW 2018 (official code: dawenl/vae_cf).

The denoising counterpart of Mult-VAE: a user's whole training row x is L2-normalised, dropped out
and passed through [n_items -> 200 -> n_items] with tanh on the hidden layer; the loss is the
multinomial negative log-likelihood -sum_i x_i log softmax(logits)_i, averaged over the batch, plus

    (l2_lambda / train_batch_size) * sum of squared weight matrices (biases excluded).

This is vae_cf's parameterisation (notebook at commit ad103c5): it builds
``MultiDAE(p_dims, lam=0.01 / batch_size)`` with ``batch_size = 500`` and adds
``2 * l2_regularizer(lam)`` (TensorFlow's regulariser is ``lam * sum(W^2) / 2``), so ``l2_lambda``
is the notebook's 0.01 and the penalty applied at the paper's 500 users a batch is
2e-5 * sum(W^2).
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
    mlp,
    multinomial_log_likelihood,
    normalize_and_dropout,
)


class MultDAE(GeneralRecommender):
    """Mult-DAE with users' full interaction rows and an explicit L2 penalty on the weights."""

    input_type = InputType.POINTWISE

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.hidden_sizes = list(config["mlp_hidden_size"] or [])
        self.latent_dim = int(config["latent_dimension"])
        self.dropout_prob = float(config["dropout_prob"])
        self.l2_lambda = float(config["l2_lambda"] or 0.0)
        # vae_cf divides its lam by the (fixed) batch size once, not by each batch's length.
        self.l2_weight = self.l2_lambda / int(config["train_batch_size"])

        self.history = UserHistory.from_dataset(dataset)
        dims = [self.n_items, *self.hidden_sizes, self.latent_dim]
        self.network = mlp(dims + dims[::-1][1:])
        self.input_dropout = nn.Dropout(self.dropout_prob)
        init_liang_(self)
        self.last_loss_terms: dict[str, float] = {}

    def forward(self, rating_matrix: Tensor) -> Tensor:
        """Rows [B, n_items] -> logits [B, n_items]."""
        return self.network(normalize_and_dropout(rating_matrix, self.input_dropout))

    def l2_penalty(self) -> Tensor:
        """(l2_lambda / train_batch_size) * the sum of squared weight matrices."""
        weights = [m.weight for m in self.modules() if isinstance(m, torch.nn.Linear)]
        return self.l2_weight * sum(w.pow(2).sum() for w in weights)

    def calculate_loss(self, interaction: Any) -> Tensor:
        x = self.history(interaction[self.USER_ID])
        nll = -multinomial_log_likelihood(self.forward(x), x).mean()
        l2 = self.l2_penalty() if self.l2_lambda > 0 else torch.zeros((), device=x.device)
        total = nll + l2
        self.last_loss_terms = {"nll": nll.item(), "l2": l2.item(), "total": total.item()}
        return total

    def full_sort_predict(self, interaction: Any) -> Tensor:
        """Scores [B, n_items] (logits) from each user's training row."""
        return self.forward(self.history(interaction[self.USER_ID]))

    def predict(self, interaction: Any) -> Tensor:
        scores = self.full_sort_predict(interaction)
        return scores.gather(1, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)
