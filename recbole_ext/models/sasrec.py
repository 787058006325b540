"""SASRec: Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018 (Wang-Cheng Kang
and Julian McAuley). RecBole's implementation, trained on whole sequences by default.

Training regime (``train_regime``, harness key):

- ``users`` (this model's default): each training row is a window of a user's sequence; the
  causal Transformer (RecBole's unidirectional attention mask: position t sees items <= t) runs
  once over it and the loss is taken at every real position against that position's next item.
  This is "SASRec+" of Klenitskiy & Vasilev, "Turning Dross Into Gold Loss: is BERT4Rec really
  better than SASRec?", RecSys 2023: the targets of RecBole's per-prefix samples at one forward
  pass per window.
- ``interactions``: RecBole's per-prefix regime.

The loss in each regime, and what stays RecBole's (``forward``, ``predict``,
``full_sort_predict``, the parameters' names): :class:`~recbole_ext.layers.whole_sequence.
WholeSequenceLoss`.
"""

from __future__ import annotations

import torch
from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec

from recbole_ext.layers.whole_sequence import WholeSequenceLoss


class SASRec(WholeSequenceLoss, RecBoleSASRec):
    """RecBole's SASRec with a loss at every position under ``train_regime: users``."""

    accepts_trimmed_batches = True  # right padding, read through the length: width-independent

    def position_outputs(self, item_seq: torch.Tensor, item_len: torch.Tensor) -> torch.Tensor:
        """``[B, L, H]``: the last Transformer layer's output at every position (RecBole's
        ``forward`` before it picks the last real position)."""
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        input_emb = self.item_embedding(item_seq) + self.position_embedding(positions)
        input_emb = self.dropout(self.LayerNorm(input_emb))
        attention_mask = self.get_attention_mask(item_seq)
        return self.trm_encoder(input_emb, attention_mask, output_all_encoded_layers=False)[-1]

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        return self.gather_indexes(self.position_outputs(item_seq, item_seq_len), item_seq_len - 1)
