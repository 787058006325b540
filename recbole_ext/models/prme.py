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

import torch

from recbole_ext.layers.metric_embedding import (
    MetricEmbeddingRecommender,
    squared_distance,
    squared_distance_to_all,
)


class PRME(MetricEmbeddingRecommender):
    """Metric embedding of user preference and item-to-item transition, mixed by ``alpha``."""

    TRANSITION_TABLE = "item_seq_embedding"

    def preference(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return -squared_distance(user, item)  # -||U_u - X^P_i||^2

    def preference_to_all(self, user: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return -squared_distance_to_all(user, table)
