"""Hierarchical VampPrior VAE with gated layers ("H+Vamp (Gated)"): Daeryong Kim and Bongwon Suh,
"Enhancing VAEs for Collaborative Filtering: Flexible Priors & Gating Mechanisms", RecSys 2019
(official code: psywaves/EVCF, ``--model_name hvamp --gated``).

:class:`recbole_ext.models.hvamp.HVamp` with every hidden layer computing
linear(h) * sigmoid(gate(h)) (:class:`recbole_ext.layers.gated.GatedDense`) instead of
tanh(linear(h)); the mean, log-variance and output heads stay affine, as in EVCF. This is the
paper's best model (ML-20M Recall@20 0.413, NDCG@100 0.445 under strong generalisation).
"""

from __future__ import annotations

from recbole_ext.models.hvamp import HVamp


class HVampGated(HVamp):
    """H+Vamp with gated linear units in place of tanh layers."""

    gated = True
