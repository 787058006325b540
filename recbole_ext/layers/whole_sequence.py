"""Whole-sequence training of causal next-item models (``train_regime: users``).

Under the harness's ``train_regime: users`` each training row is a *window* of one user's
sequence: ``item_seq`` right-padded (items first, zeros after), ``item_len`` and ``pos_items``,
the item that follows the window. A causal model (position t sees items <= t only) scores every
real position of the window in one pass and takes the next-item loss at each, which carries the
same targets as RecBole's per-prefix samples at a fraction of the forward passes ("SASRec+",
Klenitskiy & Vasilev, RecSys 2023). Under ``train_regime: interactions`` the rows are RecBole's
prefixes and the loss is at the last position only.

- :func:`trains_on_whole_sequences`: whether a config asks for the whole-sequence regime.
- :func:`drop_padding_columns`: drop the all-padding columns of a right-padded batch.
- :func:`sampled_negatives_setting`: the checked ``sampled_negatives`` of a config.
- :func:`real_position_targets`: the real positions of a batch and their next items.
- :func:`window_with_next_item`: each window followed by its next item (BERT4Rec's cloze
  sequences, S3Rec's pre-training sequences).
- :class:`WholeSequenceLoss`: a ``calculate_loss`` for both regimes, mixed into a subclass of a
  RecBole sequential model that provides ``position_outputs``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from recbole_ext.layers.contrastive import next_item_targets
from recbole_ext.layers.next_item import next_item_loss

WHOLE_SEQUENCE_REGIME = "users"
PREFIX_REGIME = "interactions"


def trains_on_whole_sequences(config: Any) -> bool:
    """Whether ``config["train_regime"]`` is the whole-sequence regime (unset: RecBole's)."""
    regime = config["train_regime"] or PREFIX_REGIME
    if regime not in (PREFIX_REGIME, WHOLE_SEQUENCE_REGIME):
        raise ValueError(
            f"train_regime must be {PREFIX_REGIME!r} or {WHOLE_SEQUENCE_REGIME!r}, not {regime!r}"
        )
    return regime == WHOLE_SEQUENCE_REGIME


def drop_padding_columns(item_seq: torch.Tensor, item_len: torch.Tensor) -> torch.Tensor:
    """The right-padded ``item_seq`` without the columns past its longest sequence."""
    return item_seq[:, : int(item_len.max())]


def real_position_targets(
    item_seq: torch.Tensor, item_len: torch.Tensor, pos_items: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask, targets)``: ``mask`` ``[B, L]`` marks the real positions of the right-padded
    batch, ``targets`` ``[N]`` their next items in the row-major order of ``mask`` (so
    ``output[mask]`` lines up with them)."""
    targets = next_item_targets(item_seq, item_len, pos_items)
    mask = torch.arange(item_seq.shape[1], device=item_seq.device) < item_len.unsqueeze(1)
    return mask, targets[mask]


def sampled_negatives_setting(config: Any, loss_type: str) -> int:
    """``sampled_negatives`` (0: the full softmax), refused when negative or without CE."""
    negatives = int(config["sampled_negatives"] or 0)
    if negatives < 0:
        raise ValueError(f"sampled_negatives must be >= 0, not {negatives}")
    if negatives and loss_type != "CE":
        raise ValueError("sampled_negatives replaces the full softmax: it needs loss_type CE")
    return negatives


def window_with_next_item(
    item_seq: torch.Tensor, item_len: torch.Tensor, pos_items: torch.Tensor, max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sequence, length)``: each right-padded window followed by its next item, keeping the
    last ``max_length`` items of a longer one; the batch is as wide as its longest sequence."""
    item_seq = drop_padding_columns(item_seq, item_len)
    width = item_seq.shape[1]
    positions = torch.arange(width + 1, device=item_seq.device)
    full = item_seq.new_zeros(item_seq.shape[0], width + 1)
    full[:, :width] = item_seq * (positions[:width] < item_len.unsqueeze(1))
    full.scatter_(1, item_len.unsqueeze(1), pos_items.unsqueeze(1))
    length = item_len + 1
    # A window of max_length items drops its first one to make room for the next item.
    overflow = (length - max_length).clamp(min=0)
    source = positions.unsqueeze(0) + overflow.unsqueeze(1)
    length = length - overflow
    full = torch.gather(full, 1, source.clamp(max=width)) * (positions < length.unsqueeze(1))
    return full[:, : min(width + 1, max_length)], length


class WholeSequenceLoss(ABC):
    """``calculate_loss`` in both training regimes, for a subclass of a RecBole sequential model.

    Mix in before the RecBole class (``class SASRec(WholeSequenceLoss, RecBoleSASRec)``) and
    implement :meth:`position_outputs`; the RecBole class's ``__init__`` runs first, then the
    regime is read. The output item table is ``self.item_embedding``.

    - ``train_regime: users``: the network runs once over each window and the loss is the mean
      over every real position (``loss_type: CE`` full softmax; ``BPR`` one uniform negative per
      position, drawn here since RecBole's sampler only serves the window's last target).
    - ``train_regime: interactions``: RecBole's own ``calculate_loss``.
    - ``sampled_negatives: n > 0`` (CE only): a sampled softmax against ``n`` uniform negatives
      shared by the batch instead of the full softmax, in both regimes (Klenitskiy & Vasilev's
      cheap variant).

    ``loss_type: CE`` scores every item row, the padding row included, as RecBole does. The
    RecBole class's ``forward``, ``predict`` and ``full_sort_predict`` (the output at the last
    real position) are kept, and so are its parameters' names: RecBole's state dicts load.
    """

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)  # type: ignore[call-arg]
        self.whole_sequence = trains_on_whole_sequences(config)
        self.sampled_negatives = sampled_negatives_setting(config, self.loss_type)

    @abstractmethod
    def position_outputs(self, item_seq: torch.Tensor, item_len: torch.Tensor) -> torch.Tensor:
        """``[B, L, H]``: at each real position t the model's output from items <= t (what
        ``forward`` returns for the prefix ending at t); padding positions are arbitrary."""

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        item_seq = interaction[self.ITEM_SEQ]
        item_len = interaction[self.ITEM_SEQ_LEN]
        pos_items = interaction[self.POS_ITEM_ID]
        if self.whole_sequence:
            item_seq = drop_padding_columns(item_seq, item_len)
            mask, targets = real_position_targets(item_seq, item_len, pos_items)
            hidden = self.position_outputs(item_seq, item_len)[mask]
        elif self.sampled_negatives:
            hidden, targets = self.forward(item_seq, item_len), pos_items
        else:
            return super().calculate_loss(interaction)
        kind = "ce" if self.loss_type == "CE" else "bpr"
        weight = self.item_embedding.weight
        return next_item_loss(hidden, targets, weight, kind, self.sampled_negatives)
