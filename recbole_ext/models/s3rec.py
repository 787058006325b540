"""S3Rec: Zhou et al., "S^3-Rec: Self-Supervised Learning for Sequential Recommendation with
Mutual Information Maximization", CIKM 2020 (Kun Zhou, Hui Wang, Wayne Xin Zhao, Yutao Zhu, Sirui
Wang, Fuzheng Zhang, Zhongyuan Wang and Ji-Rong Wen). RecBole's implementation, made to work on
data without item attributes.

S3Rec pre-trains a bidirectional Transformer with four self-supervised objectives, then fine-tunes
it for next-item prediction:

- AAP, associated attribute prediction: an item's attributes from its position's output;
- MIP, masked item prediction: a masked item from its context;
- MAP, masked attribute prediction: a masked item's attributes from its context;
- SP, segment prediction: a masked contiguous segment from the rest of the sequence.

AAP and MAP need item attributes (``item_attribute``, a field of the ``.item`` file, ``class`` by
default). RecBole's ``S3Rec`` reads that field unconditionally and fails without it, yet the
benchmark datasets hold only user, item and time. When the dataset lacks the field, this class
pre-trains with MIP and SP alone: ``aap_weight`` and ``map_weight`` are forced to 0, the attribute
tensors, the attribute embedding and the AAP / MAP heads are never built, and a warning says so
once per dataset. Fine-tuning never used attributes and is unchanged. When the field exists,
everything is RecBole's: ``__init__`` and the pre-training data are RecBole's own code, and the
pre-training loss is the same computation (a test checks the two agree exactly).

Without attributes the pre-training data are drawn with vectorised tensor operations instead of
RecBole's per-position Python loops (a large saving on long sequences), from the same
distributions: each item is masked with probability ``mask_ratio`` and paired with a uniformly
drawn negative item that is not in the sequence (never the mask token, which RecBole's sampler can
return); for SP a segment of uniform length in [1, len // 2] at a uniform start is masked and its
negative is a segment of the same length from the batch's concatenated sequences. As in RecBole,
pre-training sequences are padded on the left.

Training regime (``train_regime``, harness key), both stages:

- ``users`` (this model's default): each training row is a window of a user's sequence.
  Pre-training works on ``window + its following item``, so every item takes part (RecBole's
  windows leave out the item they precede); a sequence longer than ``MAX_ITEM_LIST_LENGTH`` drops
  its oldest item, the position embedding's size. Fine-tuning runs the causal Transformer
  (``bidirectional=False``, as RecBole's fine-tuning) once over the window and takes the
  next-item loss at every real position ("SASRec+", Klenitskiy & Vasilev, RecSys 2023).
- ``interactions``: RecBole's per-prefix samples; fine-tuning's loss is then RecBole's own.

Pre-training sequences are left-padded, as RecBole's, so their positions count back from
``MAX_ITEM_LIST_LENGTH``: a batch narrower than that (the harness pads each batch only to its own
longest sequence) is encoded with the positions it would have at full width, which gives the
same outputs at a fraction of the cost.

Fine-tuning loss: ``loss_type: CE`` (default), softmax cross-entropy over the whole item table (the
padding row and the mask token included, as RecBole); ``sampled_negatives: n > 0`` a sampled
softmax against ``n`` uniform negatives (never the mask token) shared by the batch, in both
regimes; ``loss_type: BPR`` one negative per position (in ``users``, drawn uniformly by the
model).

The model reports its unweighted pre-training terms (``aap``, ``mip``, ``map``, ``sp``) in
``last_loss_terms``, so the harness records them per pre-training epoch.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder
from recbole.model.loss import BPRLoss
from recbole.model.sequential_recommender.s3rec import S3Rec as RecBoleS3Rec
from torch import nn

from recbole_ext.layers.next_item import next_item_loss
from recbole_ext.layers.whole_sequence import (
    drop_padding_columns,
    real_position_targets,
    sampled_negatives_setting,
    trains_on_whole_sequences,
    window_with_next_item,
)

logger = logging.getLogger(__name__)

# (dataset, attribute field) pairs already warned about: each model is built twice per run
# (pre-training, fine-tuning) and once more per seed, but the message matters once.
_WARNED: set[tuple[str, str]] = set()

# Rejection rounds for negative items; a sequence that holds nearly every item can exhaust them,
# and then a few negatives may be items of the sequence (RecBole's sampler would loop forever).
_NEGATIVE_ROUNDS = 20


def has_item_attribute(dataset: Any, field: str) -> bool:
    """Whether ``field`` is a loaded column of the dataset's item features."""
    item_feat = getattr(dataset, "item_feat", None)
    return item_feat is not None and field in item_feat


class S3Rec(RecBoleS3Rec):
    """RecBole's S3Rec; without the ``item_attribute`` field, pre-trains with MIP and SP only;
    whole sequences in both stages under ``train_regime: users``."""

    # Fine-tuning is right-padded and causal, pre-training encodes at full-width positions: the
    # padded width changes no output (tested), so batches may be padded to their own longest.
    accepts_trimmed_batches = True

    def __init__(self, config: Any, dataset: Any) -> None:
        if has_item_attribute(dataset, config["item_attribute"]):
            super().__init__(config, dataset)
            self.use_attributes = True
        else:
            self._init_without_attributes(config, dataset)
            self.use_attributes = False
        self.last_loss_terms: dict[str, torch.Tensor] = {}
        self.whole_sequence = trains_on_whole_sequences(config)
        self.sampled_negatives = sampled_negatives_setting(config, self.loss_type)

    def _init_without_attributes(self, config: Any, dataset: Any) -> None:
        """RecBole's ``__init__`` minus everything that touches attributes."""
        SequentialRecommender.__init__(self, config, dataset)
        field = config["item_attribute"]
        if config["aap_weight"] or config["map_weight"]:
            key = (str(config["dataset"]), str(field))
            if key not in _WARNED:
                _WARNED.add(key)
                logger.warning(
                    "S3Rec: dataset %s has no item attribute field %r; pre-training uses masked "
                    "item prediction and segment prediction only (AAP and MAP need item "
                    "attributes: aap_weight and map_weight set to 0)",
                    config["dataset"],
                    field,
                )

        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.hidden_size = config["hidden_size"]
        self.inner_size = config["inner_size"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]

        self.FEATURE_FIELD = field
        self.FEATURE_LIST = field + config["LIST_SUFFIX"]
        self.train_stage = config["train_stage"]
        self.pre_model_path = config["pre_model_path"]
        self.mask_ratio = config["mask_ratio"]
        self.aap_weight = 0.0
        self.mip_weight = config["mip_weight"]
        self.map_weight = 0.0
        self.sp_weight = config["sp_weight"]
        self.initializer_range = config["initializer_range"]
        self.loss_type = config["loss_type"]

        # The extra id is the mask token, as in RecBole.
        self.n_items = dataset.item_num + 1
        self.mask_token = self.n_items - 1
        self.n_features = 0
        self.item_feat = None

        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.trm_encoder = TransformerEncoder(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            hidden_size=self.hidden_size,
            inner_size=self.inner_size,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attn_dropout_prob=self.attn_dropout_prob,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
        )
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)
        self.mip_norm = nn.Linear(self.hidden_size, self.hidden_size)
        self.sp_norm = nn.Linear(self.hidden_size, self.hidden_size)

        if self.train_stage == "pretrain":
            self.loss_fct = nn.BCEWithLogitsLoss(reduction="none")
        elif self.train_stage == "finetune" and self.loss_type == "BPR":
            self.loss_fct = BPRLoss()
        elif self.train_stage == "finetune" and self.loss_type == "CE":
            self.loss_fct = nn.CrossEntropyLoss()
        elif self.train_stage == "finetune":
            raise NotImplementedError("Make sure 'loss_type' in ['BPR', 'CE']!")
        else:
            raise ValueError(f"train_stage must be pretrain or finetune, not {self.train_stage!r}")

        if self.train_stage == "pretrain":
            self.apply(self._init_weights)
        else:
            # The harness saves tensors only, so weights-only loading works; loading onto the CPU
            # lets weights pre-trained on one device fine-tune on another.
            pretrained = torch.load(self.pre_model_path, map_location="cpu", weights_only=True)
            self.logger.info(f"Load pretrained model from {self.pre_model_path}")
            self.load_state_dict(pretrained["state_dict"])

    def forward(
        self, item_seq: torch.Tensor, bidirectional: bool = True, first_position: int = 0
    ) -> torch.Tensor:
        """RecBole's encoder; ``first_position`` is the position id of the first column (a
        left-padded batch narrower than ``MAX_ITEM_LIST_LENGTH`` is the right end of the
        full-width one)."""
        positions = torch.arange(
            first_position, first_position + item_seq.size(1), device=item_seq.device
        )
        input_emb = self.item_embedding(item_seq) + self.position_embedding(positions)
        input_emb = self.dropout(self.LayerNorm(input_emb))
        attention_mask = self.get_attention_mask(item_seq, bidirectional=bidirectional)
        return self.trm_encoder(input_emb, attention_mask, output_all_encoded_layers=True)[-1]

    # --- pre-training objectives (RecBole's computations, one per term) ---

    def _aap_loss(
        self, sequence_output: torch.Tensor, features: torch.Tensor, masked: torch.Tensor
    ) -> torch.Tensor:
        score = self._associated_attribute_prediction(
            sequence_output, self.feature_embedding.weight
        )
        loss = self.loss_fct(score, features.view(-1, self.n_features).float())
        # Only the positions that are neither masked nor padding.
        mask = (masked != self.mask_token).float() * (masked != 0).float()
        return torch.sum(loss * mask.flatten().unsqueeze(-1))

    def _mip_loss(
        self,
        sequence_output: torch.Tensor,
        masked: torch.Tensor,
        pos_items: torch.Tensor,
        neg_items: torch.Tensor,
    ) -> torch.Tensor:
        pos_score = self._masked_item_prediction(sequence_output, self.item_embedding(pos_items))
        neg_score = self._masked_item_prediction(sequence_output, self.item_embedding(neg_items))
        distance = pos_score - neg_score
        loss = self.loss_fct(distance, torch.ones_like(distance, dtype=torch.float32))
        mask = (masked == self.mask_token).float()
        return torch.sum(loss * mask.flatten())

    def _map_loss(
        self, sequence_output: torch.Tensor, features: torch.Tensor, masked: torch.Tensor
    ) -> torch.Tensor:
        score = self._masked_attribute_prediction(sequence_output, self.feature_embedding.weight)
        loss = self.loss_fct(score, features.view(-1, self.n_features).float())
        mask = (masked == self.mask_token).float()
        return torch.sum(loss * mask.flatten().unsqueeze(-1))

    def _sp_loss(
        self,
        masked_segment: torch.Tensor,
        pos_segment: torch.Tensor,
        neg_segment: torch.Tensor,
        first_position: int = 0,
    ) -> torch.Tensor:
        # The last position's output summarises each (left-padded) sequence.
        context = self.forward(masked_segment, first_position=first_position)[:, -1, :]
        pos_emb = self.forward(pos_segment, first_position=first_position)[:, -1, :]
        neg_emb = self.forward(neg_segment, first_position=first_position)[:, -1, :]
        distance = self._segment_prediction(context, pos_emb) - self._segment_prediction(
            context, neg_emb
        )
        return torch.sum(self.loss_fct(distance, torch.ones_like(distance, dtype=torch.float32)))

    def pretrain(
        self,
        features: torch.Tensor | None,
        masked_item_sequence: torch.Tensor,
        pos_items: torch.Tensor,
        neg_items: torch.Tensor,
        masked_segment_sequence: torch.Tensor,
        pos_segment: torch.Tensor,
        neg_segment: torch.Tensor,
    ) -> torch.Tensor:
        """The weighted sum of the pre-training terms; AAP and MAP only with attributes.

        The sequences are left-padded; narrower than ``MAX_ITEM_LIST_LENGTH``, they are the right
        end of the full-width batch and keep its positions. The forward passes run in RecBole's
        order (masked sequence, then the three segment sequences), so dropout draws the same
        random numbers and, with attributes, the loss equals RecBole's exactly.
        """
        first = self.max_seq_length - masked_item_sequence.size(1)
        sequence_output = self.forward(masked_item_sequence, first_position=first)
        mip = self._mip_loss(sequence_output, masked_item_sequence, pos_items, neg_items)
        if self.use_attributes:
            aap = self._aap_loss(sequence_output, features, masked_item_sequence)
            map_ = self._map_loss(sequence_output, features, masked_item_sequence)
        sp = self._sp_loss(masked_segment_sequence, pos_segment, neg_segment, first)
        if self.use_attributes:
            loss = (
                self.aap_weight * aap
                + self.mip_weight * mip
                + self.map_weight * map_
                + self.sp_weight * sp
            )
            terms = {"aap": aap, "mip": mip, "map": map_, "sp": sp}
        else:
            loss = self.mip_weight * mip + self.sp_weight * sp
            terms = {"mip": mip, "sp": sp}
        self.last_loss_terms = {name: value.detach() for name, value in terms.items()}
        return loss

    # --- both stages ---

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        item_seq = interaction[self.ITEM_SEQ]
        item_len = interaction[self.ITEM_SEQ_LEN]
        if self.train_stage == "pretrain":
            if self.whole_sequence:
                pos_items = interaction[self.POS_ITEM_ID]
                item_seq, item_len = window_with_next_item(
                    item_seq, item_len, pos_items, self.max_seq_length
                )
            elif not self.use_attributes:
                # Encoded at full-width positions anyway: the all-padding columns are wasted.
                item_seq = drop_padding_columns(item_seq, item_len)
            return self.pretrain(*self.reconstruct_pretrain_data(item_seq, item_len))
        if self.whole_sequence:
            item_seq = drop_padding_columns(item_seq, item_len)
            real, targets = real_position_targets(item_seq, item_len, interaction[self.POS_ITEM_ID])
            hidden = self.forward(item_seq, bidirectional=False)[real]
        elif self.sampled_negatives:
            output = self.forward(item_seq, bidirectional=False)
            hidden = self.gather_indexes(output, item_len - 1)
            targets = interaction[self.POS_ITEM_ID]
        else:
            return super().calculate_loss(interaction)  # RecBole's fine-tuning
        weight = self.item_embedding.weight
        if self.sampled_negatives:
            weight = weight[: self.mask_token]  # negatives are items, never the mask token
        kind = "ce" if self.loss_type == "CE" else "bpr"
        return next_item_loss(hidden, targets, weight, kind, self.sampled_negatives)

    # --- pre-training data without attributes ---

    def reconstruct_pretrain_data(
        self, item_seq: torch.Tensor, item_seq_len: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        """RecBole's pre-training batch; without attributes the same tensors, features None."""
        if self.use_attributes:
            return super().reconstruct_pretrain_data(item_seq, item_seq_len)
        lengths = item_seq_len.to(item_seq.device)
        positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)
        in_sequence = positions < lengths.unsqueeze(1)
        # RecBole reads only each row's first item_seq_len entries; so does this.
        items = item_seq * in_sequence
        masked, pos_items, neg_items = self._masked_items(items, in_sequence)
        segments = self._segments(items, lengths, in_sequence)
        return (
            None,
            _pad_left(masked, lengths),
            _pad_left(pos_items, lengths),
            _pad_left(neg_items, lengths),
            *(_pad_left(s, lengths) for s in segments),
        )

    def _masked_items(
        self, items: torch.Tensor, in_sequence: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MIP inputs (items left-aligned): masked sequence, positives, negatives."""
        mask = in_sequence & (torch.rand(items.shape, device=items.device) < self.mask_ratio)
        return items.masked_fill(mask, self.mask_token), items, self._negative_items(items, mask)

    def _negative_items(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``items`` with each masked position replaced by a uniform item id in [1, mask_token)
        that is not in its row's sequence."""
        rows, cols = mask.nonzero(as_tuple=True)
        # [B, n_items]: which ids each row holds; far cheaper than comparing every pair.
        in_row = torch.zeros(items.size(0), self.n_items, dtype=torch.bool, device=items.device)
        in_row.scatter_(1, items, True)

        def draw() -> torch.Tensor:
            return torch.randint(1, self.mask_token, rows.shape, device=items.device)

        drawn = draw()
        for _ in range(_NEGATIVE_ROUNDS):
            clash = in_row[rows, drawn]
            if not clash.any():
                break
            drawn = torch.where(clash, draw(), drawn)
        negatives = items.clone()
        negatives[rows, cols] = drawn
        return negatives

    def _segments(
        self, items: torch.Tensor, lengths: torch.Tensor, in_sequence: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SP inputs (items left-aligned): masked-segment sequence, positive and negative
        segments, each kept at its place in the sequence with the mask token elsewhere."""
        device = items.device
        batch = items.size(0)
        # Every item of the batch, row after row: where negative segments come from.
        pool = items[in_sequence]
        long_enough = lengths >= 2
        half = torch.clamp(lengths // 2, min=1)
        # Uniform integers via floor(u * n): length in [1, len // 2], start in [0, len - length],
        # negative start in [0, pool size - length].
        seg_len = 1 + (torch.rand(batch, device=device) * half).long()
        start = (torch.rand(batch, device=device) * (lengths - seg_len + 1)).long()
        neg_start = (torch.rand(batch, device=device) * (pool.numel() - seg_len + 1)).long()

        positions = torch.arange(items.size(1), device=device).unsqueeze(0)
        offset = positions - start.unsqueeze(1)
        in_segment = (offset >= 0) & (offset < seg_len.unsqueeze(1)) & long_enough.unsqueeze(1)
        outside = in_sequence & ~in_segment & long_enough.unsqueeze(1)
        pool_index = (neg_start.unsqueeze(1) + offset).clamp(0, max(pool.numel() - 1, 0))

        masked_segment = items.masked_fill(in_segment, self.mask_token)
        pos_segment = items.masked_fill(outside, self.mask_token)
        neg_segment = torch.where(in_segment, pool[pool_index], items)
        neg_segment = neg_segment.masked_fill(outside, self.mask_token)
        # Rows shorter than 2 keep their sequence in all three, as in RecBole.
        return masked_segment, pos_segment, neg_segment


def _pad_left(sequence: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Move each row's first ``length`` entries to the right end, zeros before them."""
    width = sequence.size(1)
    positions = torch.arange(width, device=sequence.device).unsqueeze(0)
    source = positions - (width - lengths).unsqueeze(1)
    return torch.gather(sequence, 1, source.clamp(min=0)) * (source >= 0)
