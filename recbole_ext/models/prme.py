"""PRME: Personalized Ranking Metric Embedding.

Shanshan Feng, Xutao Li, Yifeng Zeng, Gao Cong, Yeow Meng Chee and Quan Yuan. "Personalized
Ranking Metric Embedding for Next New POI Recommendation." IJCAI 2015.

Users and items live in two latent spaces. In the preference space a user ``u`` is a point
``U_u`` and an item ``i`` a point ``X^P_i``; in the sequential space every item is a point
``X^S_i``. The distance of candidate ``i`` for user ``u`` whose last item is ``l`` is

    D(u, l, i) = alpha * ||U_u - X^P_i||^2 + (1 - alpha) * ||X^S_l - X^S_i||^2

and the score is ``-D``. Training maximises ``log sigmoid(D(u, l, neg) - D(u, l, pos))`` for one
sampled negative per positive (BPR), with an L2 penalty on the embeddings each sample uses.

Differences from the paper, kept on purpose: the paper drops the sequential term (alpha = 1) when
the gap to the previous check-in exceeds a threshold (6 hours for POIs); here the sequential term
always applies, since the next interaction's time is not known when ranking and the benchmark's
datasets are not check-ins. The paper trains by per-sample SGD; here by RecBole's mini-batch
optimiser on the batch-mean loss, the per-sample penalty averaged alike.
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


class PRME(SequentialRecommender):
    """Metric embedding of user preference and item-to-item transition, mixed by ``alpha``."""

    input_type = InputType.PAIRWISE

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.embedding_size = int(config["embedding_size"])
        self.alpha = float(config["alpha"])
        self.reg_weight = float(config["reg_weight"])
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"PRME alpha must lie in [0, 1], got {self.alpha}")

        self.n_users = dataset.user_num
        self.user_embedding = nn.Embedding(self.n_users, self.embedding_size)  # U
        self.item_pref_embedding = nn.Embedding(self.n_items, self.embedding_size)  # X^P
        self.item_seq_embedding = nn.Embedding(self.n_items, self.embedding_size)  # X^S
        for emb in (self.user_embedding, self.item_pref_embedding, self.item_seq_embedding):
            nn.init.xavier_normal_(emb.weight)
        self.last_loss_terms: dict[str, torch.Tensor] = {}

    def forward(self, user: torch.Tensor, last: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Score ``-D(u, l, i)`` of one candidate per row: ``[B], [B], [B] -> [B]``."""
        pref = squared_distance(self.user_embedding(user), self.item_pref_embedding(item))
        seq = squared_distance(self.item_seq_embedding(last), self.item_seq_embedding(item))
        return -(self.alpha * pref + (1.0 - self.alpha) * seq)

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
            self.item_seq_embedding(last),
            self.item_seq_embedding(pos),
            self.item_seq_embedding(neg),
        )
        self.last_loss_terms = {"bpr": bpr.detach(), "reg": reg.detach()}
        return bpr + self.reg_weight * reg

    def predict(self, interaction: Interaction) -> torch.Tensor:
        user, last = self._context(interaction)
        return self.forward(user, last, interaction[self.ITEM_ID])

    def full_sort_predict(self, interaction: Interaction) -> torch.Tensor:
        user, last = self._context(interaction)
        pref = squared_distance_to_all(self.user_embedding(user), self.item_pref_embedding.weight)
        seq = squared_distance_to_all(self.item_seq_embedding(last), self.item_seq_embedding.weight)
        return -(self.alpha * pref + (1.0 - self.alpha) * seq)  # [B, n_items]
