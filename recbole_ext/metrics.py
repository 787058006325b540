"""Metrics this package adds to RecBole's evaluator.

``RecallCap``: Recall@K with the denominator min(K, |R(u)|), the definition of Mult-VAE (Liang et
al., WWW 2018), EVCF (Kim & Suh, RecSys 2019) and RecVAE; RecBole's ``Recall`` divides by |R(u)|.
Use it as ``metrics: [RecallCap, NDCG]`` -> keys ``recallcap@20`` etc. (NDCG@100 needs only
``topk`` to contain 100: RecBole's NDCG already uses the min(K, |R(u)|) ideal DCG.)

RecBole discovers metrics once, when ``recbole.evaluator.register`` is imported, from the classes
of ``recbole.evaluator.metrics``; :func:`register_metrics` (run by ``recbole_ext.compat.apply``)
adds ours to the same tables in place, so every module that imported them sees the new names.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from recbole.evaluator import register
from recbole.evaluator.base_metric import TopkMetric


class RecallCap(TopkMetric):
    r"""Recall@K = |top-K(u) \cap R(u)| / min(K, |R(u)|), averaged over users."""

    def calculate_metric(self, dataobject: Any) -> dict[str, float]:
        pos_index, pos_len = self.used_info(dataobject)
        return self.topk_result("recallcap", self.metric_info(pos_index, pos_len))

    def metric_info(self, pos_index: np.ndarray, pos_len: np.ndarray) -> np.ndarray:
        """[users, max K] hits in the top k divided by min(k, |R(u)|), for k = 1..max K."""
        cutoffs = np.arange(1, pos_index.shape[1] + 1).reshape(1, -1)
        return np.cumsum(pos_index, axis=1) / np.minimum(cutoffs, pos_len.reshape(-1, 1))


METRICS = (RecallCap,)


def register_metrics() -> None:
    """Add :data:`METRICS` to RecBole's metric tables (idempotent)."""
    for cls in METRICS:
        name = cls.__name__.lower()
        register.metrics_dict[name] = cls
        register.metric_information[name] = cls.metric_need
        register.metric_types[name] = cls.metric_type
        if cls.smaller and name not in register.smaller_metrics:
            register.smaller_metrics.append(name)
