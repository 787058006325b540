"""FME: factorized preference plus metric-embedding transitions.

No single paper defines this model; it is the hybrid the benchmark's issue asks for, made of two
published parts: the item-to-item transition as a squared Euclidean distance between item points
(the metric embedding of Chen, Moore, Turnbull and Joachims, "Playlist Prediction via Metric
Embedding", KDD 2012, as used in the sequential space of PRME, Feng et al., IJCAI 2015) and the
user-to-item preference as an inner product (the matrix-factorisation term of FPMC, Rendle,
Freudenthaler and Schmidt-Thieme, "Factorizing Personalized Markov Chains for Next-Basket
Recommendation", WWW 2010). For user ``u`` whose last item is ``l``, candidate ``i`` scores

    s(u, l, i) = alpha * <U_u, V_i> - (1 - alpha) * ||X_l - X_i||^2

(alpha = 0.5 ranks as the unweighted ``<U_u, V_i> - ||X_l - X_i||^2``). Training maximises
``log sigmoid(s(u, l, pos) - s(u, l, neg))`` for one sampled negative per positive (BPR), with an
L2 penalty on the embeddings each sample uses.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from recbole.data.interaction import Interaction
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_ext.layers.metric_embedding import (
    l2_penalty,
    last_items,
    squared_distance,
    squared_distance_to_all,
)


class FME(SequentialRecommender):
    """Inner-product user preference plus Euclidean item-to-item transition, mixed by ``alpha``."""

    input_type = InputType.PAIRWISE

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.embedding_size = int(config["embedding_size"])
        self.alpha = float(config["alpha"])
        self.reg_weight = float(config["reg_weight"])
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"FME alpha must lie in [0, 1], got {self.alpha}")

        self.n_users = dataset.user_num
        self.user_embedding = nn.Embedding(self.n_users, self.embedding_size)  # U
        self.item_pref_embedding = nn.Embedding(self.n_items, self.embedding_size)  # V
        self.item_trans_embedding = nn.Embedding(self.n_items, self.embedding_size)  # X
        for emb in (self.user_embedding, self.item_pref_embedding, self.item_trans_embedding):
            nn.init.xavier_normal_(emb.weight)
        self.last_loss_terms: dict[str, torch.Tensor] = {}

    def forward(self, user: torch.Tensor, last: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Score of one candidate per row: ``[B], [B], [B] -> [B]``."""
        pref = (self.user_embedding(user) * self.item_pref_embedding(item)).sum(dim=-1)
        trans = squared_distance(self.item_trans_embedding(last), self.item_trans_embedding(item))
        return self.alpha * pref - (1.0 - self.alpha) * trans

    def _context(self, interaction: Interaction) -> tuple[torch.Tensor, torch.Tensor]:
        user = interaction[self.USER_ID]
        last = last_items(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return user, last

    def calculate_loss(self, interaction: Interaction) -> torch.Tensor:
        user, last = self._context(interaction)
        pos = interaction[self.POS_ITEM_ID]
        neg = interaction[self.NEG_ITEM_ID]
        bpr = -F.logsigmoid(self.forward(user, last, pos) - self.forward(user, last, neg)).mean()
        reg = l2_penalty(
            self.user_embedding(user),
            self.item_pref_embedding(pos),
            self.item_pref_embedding(neg),
            self.item_trans_embedding(last),
            self.item_trans_embedding(pos),
            self.item_trans_embedding(neg),
        )
        self.last_loss_terms = {"bpr": bpr.detach(), "reg": reg.detach()}
        return bpr + self.reg_weight * reg

    def predict(self, interaction: Interaction) -> torch.Tensor:
        user, last = self._context(interaction)
        return self.forward(user, last, interaction[self.ITEM_ID])

    def full_sort_predict(self, interaction: Interaction) -> torch.Tensor:
        user, last = self._context(interaction)
        pref = self.user_embedding(user) @ self.item_pref_embedding.weight.t()
        trans = squared_distance_to_all(
            self.item_trans_embedding(last), self.item_trans_embedding.weight
        )
        return self.alpha * pref - (1.0 - self.alpha) * trans  # [B, n_items]
