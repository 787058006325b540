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

import torch

from recbole_ext.layers.metric_embedding import MetricEmbeddingRecommender


class FME(MetricEmbeddingRecommender):
    """Inner-product user preference plus Euclidean item-to-item transition, mixed by ``alpha``."""

    TRANSITION_TABLE = "item_trans_embedding"

    def preference(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return (user * item).sum(dim=-1)  # <U_u, V_i>

    def preference_to_all(self, user: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return user @ table.t()
