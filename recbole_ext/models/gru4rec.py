"""GRU4Rec: Hidasi, Karatzoglou, Baltrunas & Tikk, "Session-based Recommendations with Recurrent
Neural Networks", ICLR 2016, in RecBole's form (Tan, Xu & Liu, "Improved Recurrent Neural Networks
for Session-based Recommendations", DLRS 2016: prefix augmentation, an output projection scored
against the item embeddings). RecBole's implementation, trained on whole sequences by default.

Training regime (``train_regime``, harness key):

- ``users`` (this model's default): each training row is a window of a user's sequence; the GRU
  runs once over it (causal by construction: its state at t has seen items <= t) and the loss is
  taken at every real position against that position's next item, as the original GRU4Rec trains
  on every event of a session (and as "SASRec+", Klenitskiy & Vasilev, RecSys 2023).
- ``interactions``: RecBole's per-prefix regime.

The loss in each regime, and what stays RecBole's (``forward``, ``predict``,
``full_sort_predict``, the parameters' names): :class:`~recbole_ext.layers.whole_sequence.
WholeSequenceLoss`.
"""

from __future__ import annotations

import torch
from recbole.model.sequential_recommender.gru4rec import GRU4Rec as RecBoleGRU4Rec

from recbole_ext.layers.whole_sequence import WholeSequenceLoss


class GRU4Rec(WholeSequenceLoss, RecBoleGRU4Rec):
    """RecBole's GRU4Rec with a loss at every position under ``train_regime: users``."""

    accepts_trimmed_batches = True  # right padding, read through the length: width-independent

    def position_outputs(self, item_seq: torch.Tensor, item_len: torch.Tensor) -> torch.Tensor:
        """``[B, L, E]``: the projected GRU state at every position (RecBole's ``forward``
        before it picks the last real position)."""
        gru_output, _ = self.gru_layers(self.emb_dropout(self.item_embedding(item_seq)))
        return self.dense(gru_output)
