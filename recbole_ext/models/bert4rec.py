"""BERT4Rec: Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder
Representations from Transformer", CIKM 2019 (Fei Sun, Jun Liu, Jian Wu, Changhua Pei, Xiao Lin,
Wenwu Ou and Peng Jiang). RecBole's implementation, trained on whole sequences by default.

BERT4Rec learns by the cloze task: some items of a sequence are replaced by a mask token and the
bidirectional Transformer predicts them from both sides. RecBole 1.2.1 masks in the dataloader
(``transform: mask_itemseq``, a per-item Python loop on every training *and* evaluation batch); this
class masks inside ``calculate_loss`` instead, so its YAML sets ``transform: ~`` and no loader pays
for a transform:

- ``train_regime: users`` (this model's default): each training row is a window of a user's
  sequence and becomes ``window + its following item`` (RecBole's windows leave out the item they
  precede, so that item would never be seen); a sequence longer than ``MAX_ITEM_LIST_LENGTH``
  drops its oldest item, since RecBole's position embedding has ``MAX_ITEM_LIST_LENGTH`` rows (its
  evaluation likewise drops the first item to append the mask token). The model masks each real
  item with probability ``mask_ratio`` (at least one a sequence, else the sequence teaches
  nothing); with probability ``ft_ratio`` a batch masks only each sequence's last item instead, as
  RecBole does, which matches how the model is evaluated. The loss is taken at every masked
  position (position 0 included, which RecBole's padded index format leaves out), vectorised.
- ``train_regime: interactions``: RecBole's regime and masking exactly: RecBole's own
  ``MaskItemSequence`` runs on the batch in ``calculate_loss`` (the same code and the same random
  draws as in RecBole's dataloader), then RecBole's loss. A batch the dataloader already masked
  (``transform: mask_itemseq`` set again) is used as it comes. A batch in which RecBole's loss
  counts no position (RecBole never counts position 0, so a batch of 1-item windows, which length
  bucketing makes, has none) gives a zero loss where RecBole's would be NaN.

Loss: ``loss_type: CE`` (default), softmax cross-entropy over the item table plus RecBole's output
bias (the padding row included, as RecBole); ``sampled_negatives: n > 0`` a sampled softmax against
``n`` uniform negatives shared by the batch (Klenitskiy & Vasilev, RecSys 2023), in both regimes;
``loss_type: BPR`` one negative per masked position (in ``users``, drawn uniformly by the model).

``forward``, ``predict`` and ``full_sort_predict`` are RecBole's (a mask token appended after the
history), and every parameter keeps RecBole's name, so RecBole's state dicts load.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from recbole.data.interaction import Interaction
from recbole.data.transform import MaskItemSequence
from recbole.model.sequential_recommender.bert4rec import BERT4Rec as RecBoleBERT4Rec

from recbole_ext.layers.next_item import next_item_loss
from recbole_ext.layers.whole_sequence import (
    sampled_negatives_setting,
    trains_on_whole_sequences,
    window_with_next_item,
)

logger = logging.getLogger(__name__)

# Datasets already warned about a dataloader transform the whole-sequence regime ignores: the
# model is built once per seed, the message matters once.
_WARNED: set[str] = set()


class _ItemCount:
    """What RecBole's ``MaskItemSequence`` reads from the dataset: the number of item ids."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items

    def num(self, field: str) -> int:
        return self.n_items


class BERT4Rec(RecBoleBERT4Rec):
    """RecBole's BERT4Rec, masking in the model; whole sequences under ``train_regime: users``."""

    # Right padding and a bidirectional mask over real items only: the padded width changes no
    # output (tested), so the harness may pad each batch only to its own longest sequence.
    accepts_trimmed_batches = True

    def __init__(self, config: Any, dataset: Any) -> None:
        # RecBole's transform names the masked fields in the config when it is built; build it
        # before RecBole's __init__ reads those names, whether or not a dataloader has one.
        recbole_masking = MaskItemSequence(config)
        super().__init__(config, dataset)
        self.recbole_masking = recbole_masking
        self.whole_sequence = trains_on_whole_sequences(config)
        self.ft_ratio = float(config["ft_ratio"] or 0.0)
        self.sampled_negatives = sampled_negatives_setting(config, self.loss_type)
        if self.whole_sequence and config["transform"]:
            key = str(config["dataset"])
            if key not in _WARNED:
                _WARNED.add(key)
                logger.warning(
                    "BERT4Rec: transform %r is set, but train_regime users masks whole sequences "
                    "in the model and ignores the dataloader's masking (set transform: ~ to save "
                    "its cost)",
                    config["transform"],
                )

    # --- whole sequences ---

    def cloze_mask(
        self, sequence: torch.Tensor, length: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masked, targets)`` ``[B, L]`` for right-padded sequences: ``masked`` has the mask
        token at the chosen positions, ``targets`` their items there and 0 elsewhere."""
        positions = torch.arange(sequence.shape[1], device=sequence.device).unsqueeze(0)
        real = positions < length.unsqueeze(1)
        if float(torch.rand(())) < self.ft_ratio:
            chosen = positions == (length - 1).unsqueeze(1)
        else:
            chosen = real & (torch.rand(sequence.shape, device=sequence.device) < self.mask_ratio)
            # A sequence with no masked item gets one, at a uniform real position.
            fallback = torch.rand(sequence.shape, device=sequence.device)
            pick = fallback.masked_fill(~real, -1.0).argmax(dim=1, keepdim=True)
            missed = ~chosen.any(dim=1, keepdim=True)
            chosen = chosen | (missed & (positions == pick))
        return sequence.masked_fill(chosen, self.mask_token), sequence * chosen

    def cloze_loss(self, masked: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean loss over the positions with a target (``targets > 0``) of ``masked``."""
        where = targets > 0
        return self._masked_item_loss(self.forward(masked)[where], targets[where])

    def _masked_item_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """RecBole's scores (item table ``[: n_items]`` plus the output bias) through
        :func:`next_item_loss`: the bias rides along as one more column of both sides."""
        weight = torch.cat(
            [self.item_embedding.weight[: self.n_items], self.output_bias.unsqueeze(1)], dim=1
        )
        hidden = torch.cat([hidden, hidden.new_ones(hidden.shape[0], 1)], dim=1)
        kind = "ce" if self.loss_type == "CE" else "bpr"
        return next_item_loss(hidden, targets, weight, kind, self.sampled_negatives)

    # --- RecBole's regime ---

    def _recbole_masked(self, interaction: Interaction) -> Interaction:
        """The batch as RecBole's dataloader would hand it over: masked by RecBole's own
        transform, unless the dataloader already did."""
        if self.MASK_ITEM_SEQ in interaction:
            return interaction
        return self.recbole_masking(_ItemCount(self.n_items), interaction)

    def _sampled_recbole_loss(self, interaction: Interaction) -> torch.Tensor:
        """RecBole's masked positions and targets, scored by the sampled softmax."""
        masked_index = interaction[self.MASK_INDEX]
        output = self.forward(interaction[self.MASK_ITEM_SEQ])
        # RecBole's index 0 is padding (its loss weighs positions by masked_index > 0).
        where = masked_index > 0
        rows = torch.arange(masked_index.shape[0], device=masked_index.device).unsqueeze(1)
        hidden = output[rows.expand_as(masked_index)[where], masked_index[where]]
        return self._masked_item_loss(hidden, interaction[self.POS_ITEMS][where])

    def calculate_loss(self, interaction: Interaction) -> torch.Tensor:
        if self.whole_sequence:
            sequence, length = window_with_next_item(
                interaction[self.ITEM_SEQ],
                interaction[self.ITEM_SEQ_LEN],
                interaction[self.POS_ITEM_ID],
                self.max_seq_length,
            )
            return self.cloze_loss(*self.cloze_mask(sequence, length))
        interaction = self._recbole_masked(interaction)
        if not bool((interaction[self.MASK_INDEX] > 0).any()):
            # RecBole's loss would be 0 / 0: its index format cannot hold position 0, the only
            # one a batch of 1-item windows masks (length-bucketed batches hold such batches).
            # No target, no update.
            return self.output_bias.sum() * 0.0
        if self.sampled_negatives:
            return self._sampled_recbole_loss(interaction)
        return super().calculate_loss(interaction)
