"""Metric-embedding pieces shared by PRME and FME: squared Euclidean distances between embeddings,
the last item of a padded sequence, the L2 penalty on the embeddings a batch touches, and the
skeleton both models share (:class:`MetricEmbeddingRecommender`).

Both models score a (context, candidate) pair by the squared distance of their embeddings in a
latent space, so the same two distance functions serve ``predict`` (one candidate per row) and
``full_sort_predict`` (every item per row).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from recbole.data.interaction import Interaction
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn


def squared_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise ``||x - y||^2`` over the last dimension: ``[..., d], [..., d] -> [...]``."""
    return (x - y).pow(2).sum(dim=-1)


def squared_distance_to_all(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``||x_b - t_n||^2`` for every row ``x_b`` of ``x`` ``[B, d]`` and ``t_n`` of ``table``
    ``[N, d]``: ``[B, N]``.

    Expanded as ``|x|^2 - 2 x.t + |t|^2`` so that no ``[B, N, d]`` tensor is built; rounding can
    make the result slightly negative, hence the clamp.
    """
    cross = x @ table.t()
    sq = x.pow(2).sum(dim=1, keepdim=True) - 2.0 * cross + table.pow(2).sum(dim=1).unsqueeze(0)
    return sq.clamp_min(0.0)


def last_items(item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
    """The last real item of each left-aligned, zero-padded sequence: ``[B, L], [B] -> [B]``."""
    index = (item_seq_len.long() - 1).clamp_min(0).unsqueeze(1)
    return item_seq.gather(1, index).squeeze(1)


def l2_penalty(*embeddings: torch.Tensor) -> torch.Tensor:
    """Sum of squared norms of each sample's embeddings, averaged over the batch.

    Matches the per-sample ``lambda * ||theta||^2`` of the papers' SGD updates: only the rows a
    sample uses are regularised, as often as they are used.
    """
    total = sum(e.pow(2).sum(dim=-1) for e in embeddings)
    return total.mean()  # type: ignore[union-attr]


class MetricEmbeddingRecommender(SequentialRecommender):
    """A user table ``U``, a preference item table and a transition item table; the score of
    candidate ``i`` for user ``u`` whose last item is ``l`` is

        alpha * preference(U_u, P_i) - (1 - alpha) * ||T_l - T_i||^2,

    trained by BPR (one sampled negative per positive) plus ``reg_weight`` times the per-sample L2
    penalty. Subclasses define the preference term and name the transition table
    (``TRANSITION_TABLE``) as their paper does. Not registered as a model itself: the registry
    takes the classes a model module defines.
    """

    input_type = InputType.PAIRWISE
    TRANSITION_TABLE = "item_transition_embedding"

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.embedding_size = int(config["embedding_size"])
        self.alpha = float(config["alpha"])
        self.reg_weight = float(config["reg_weight"])
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"{type(self).__name__} alpha must lie in [0, 1], got {self.alpha}")
        self.n_users = dataset.user_num
        self.user_embedding = nn.Embedding(self.n_users, self.embedding_size)
        self.item_pref_embedding = nn.Embedding(self.n_items, self.embedding_size)
        setattr(self, self.TRANSITION_TABLE, nn.Embedding(self.n_items, self.embedding_size))
        for emb in (self.user_embedding, self.item_pref_embedding, self.transition):
            nn.init.xavier_normal_(emb.weight)
        self.last_loss_terms: dict[str, torch.Tensor] = {}

    @property
    def transition(self) -> nn.Embedding:
        return getattr(self, self.TRANSITION_TABLE)

    def preference(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Preference of user embeddings for item embeddings, row-wise: ``[B, d] x2 -> [B]``."""
        raise NotImplementedError

    def preference_to_all(self, user: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Preference of each user embedding for every item: ``[B, d], [N, d] -> [B, N]``."""
        raise NotImplementedError

    def forward(self, user: torch.Tensor, last: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Score of one candidate per row: ``[B], [B], [B] -> [B]``."""
        pref = self.preference(self.user_embedding(user), self.item_pref_embedding(item))
        trans = squared_distance(self.transition(last), self.transition(item))
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
            self.transition(last),
            self.transition(pos),
            self.transition(neg),
        )
        self.last_loss_terms = {"bpr": bpr.detach(), "reg": reg.detach()}
        return bpr + self.reg_weight * reg

    def predict(self, interaction: Interaction) -> torch.Tensor:
        user, last = self._context(interaction)
        return self.forward(user, last, interaction[self.ITEM_ID])

    def full_sort_predict(self, interaction: Interaction) -> torch.Tensor:
        user, last = self._context(interaction)
        pref = self.preference_to_all(self.user_embedding(user), self.item_pref_embedding.weight)
        trans = squared_distance_to_all(self.transition(last), self.transition.weight)
        return self.alpha * pref - (1.0 - self.alpha) * trans  # [B, n_items]
