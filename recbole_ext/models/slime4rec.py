"""SLIME4Rec: Contrastive Enhanced Slide Filter Mixer for Sequential Recommendation.

Xinyu Du, Huanhuan Yuan, Pengpeng Zhao, Jianfeng Qu, Fuzhen Zhuang, Guanfeng Liu, Yanchi Liu and
Victor S. Sheng, ICDE 2023 (official code: github.com/sudaada/SLIME4Rec, a RecBole fork).

Self-attention replaced by the slide filter mixer (:mod:`recbole_ext.layers.filter_mixer`):
dynamic (``G``), static (``L``) or mixed (``M``) frequency windows per layer. Loss: softmax
cross-entropy at the last position over all items, plus DuoRec's contrastive term; with the
paper's ``contrast: us_x``, InfoNCE (dot product, ``tau``) between a second dropout pass of the
sequence and a *semantic positive*, another training sequence with the same target item.

Semantic positives (``semantic_positive``):

- ``dataset`` (default, as DuoRec and the official code): at init, the training samples of
  ``dataset.inter_feat`` are grouped by target item; each step draws, for every sequence, a
  random training sample with the same target (redrawing up to a few times when the draw is the
  sequence itself; a target seen once keeps the sequence itself, as the official code does).
  The sequences stay on the model's device as non-persistent buffers (not in checkpoints).
- ``batch``: another sequence of the same batch with the same target, else the sequence itself;
  no memory, but far fewer true positives.

All passes of a step (the sequence, its second dropout pass, the semantic positive) run as one
batched encoder call. Deliberate deviation: padded positions are zeroed before every filter, so
the output does not depend on the padding (the official code filters the padding's position
embeddings); with right padding only real items reach the last real position.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_ext.layers.contrastive import info_nce
from recbole_ext.layers.filter_mixer import FilterMixerEncoder
from recbole_ext.layers.next_item import full_softmax_cross_entropy
from recbole_ext.layers.transformer import init_weights

CONTRAST_MODES = ("us_x", "us", "un", "su", "none")


class SLIME4Rec(SequentialRecommender):
    """SLIME4Rec; see the module docstring."""

    input_type = InputType.POINTWISE
    # The filters run at MAX_ITEM_LIST_LENGTH whatever the batch's width (layers.filter_mixer).
    accepts_trimmed_batches = True

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.hidden_size = config["hidden_size"]
        self.contrast = config["contrast"]
        if self.contrast not in CONTRAST_MODES:
            raise ValueError(f"contrast must be one of {CONTRAST_MODES}, not {self.contrast!r}")
        if config["loss_type"] != "CE":
            raise ValueError("SLIME4Rec trains with loss_type CE")
        self.lmd = config["lmd"]
        self.lmd_sem = config["lmd_sem"]
        self.tau = config["tau"]
        self.sim = config["sim"]
        self.semantic_positive = config["semantic_positive"]
        eps = config["layer_norm_eps"]

        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.embedding_norm = nn.LayerNorm(self.hidden_size, eps=eps)
        self.embedding_dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.encoder = FilterMixerEncoder(
            n_layers=config["n_layers"],
            hidden_size=self.hidden_size,
            max_len=self.max_seq_length,
            inner_size=config["inner_size"],
            hidden_dropout=config["hidden_dropout_prob"],
            filter_dropout=config["attn_dropout_prob"],
            filter_mixer=config["filter_mixer"],
            dynamic_ratio=config["dynamic_ratio"],
            slide_mode=config["slide_mode"],
            layer_norm_eps=eps,
            causal=False,
        )
        self._index_same_targets(dataset)
        self.last_loss_terms: dict[str, float] = {}
        self.apply(partial(init_weights, std=config["initializer_range"]))

    def _index_same_targets(self, dataset: Any) -> None:
        feat = dataset.inter_feat
        has_sequences = feat is not None and self.ITEM_SEQ in feat
        if self.semantic_positive == "dataset" and has_sequences:
            targets = feat[self.POS_ITEM_ID].numpy()
            order = np.argsort(targets, kind="stable")
            counts = np.bincount(targets, minlength=self.n_items)
            starts = np.cumsum(counts) - counts
            self.register_buffer("same_order", torch.as_tensor(order), persistent=False)
            self.register_buffer("same_start", torch.as_tensor(starts), persistent=False)
            self.register_buffer("same_count", torch.as_tensor(counts), persistent=False)
            self.register_buffer("train_seqs", feat[self.ITEM_SEQ].clone(), persistent=False)
            self.register_buffer("train_lens", feat[self.ITEM_SEQ_LEN].clone(), persistent=False)
        elif self.semantic_positive == "dataset":
            # A model built on a dataset without sequences (not RecBole's training split).
            self.semantic_positive = "batch"
        elif self.semantic_positive != "batch":
            raise ValueError("semantic_positive must be 'dataset' or 'batch'")

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """The representation at the last real position, ``[B, H]``."""
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        valid = (
            (positions < item_seq_len.unsqueeze(1))
            .unsqueeze(-1)
            .to(self.item_embedding.weight.dtype)
        )
        emb = self.item_embedding(item_seq) + self.position_embedding(positions)
        emb = self.embedding_dropout(self.embedding_norm(emb))
        return self.gather_indexes(self.encoder(emb, valid), item_seq_len - 1)

    def semantic_positives(
        self, item_seq: torch.Tensor, item_len: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For each sequence, another one with the same target item (see the module docstring)."""
        batch = item_seq.shape[0]
        if self.semantic_positive == "batch":
            same = targets.unsqueeze(0) == targets.unsqueeze(1)
            same.fill_diagonal_(False)
            pick = torch.rand(batch, batch, device=item_seq.device).masked_fill(~same, -1.0)
            partner = torch.where(
                same.any(dim=1), pick.argmax(dim=1), torch.arange(batch, device=item_seq.device)
            )
            return item_seq[partner], item_len[partner]
        count = self.same_count[targets]
        start = self.same_start[targets]
        # The stored sequences are max_seq_length wide; a trimmed batch is padded back to that
        # width for the draws, and the result trimmed to its own longest sequence.
        full = F.pad(item_seq, (0, self.train_seqs.shape[1] - item_seq.shape[1]))
        seqs, lens = full.clone(), item_len.clone()
        pending = count > 0
        for _ in range(4):  # redraw the draws that hit the sequence itself
            offset = (torch.rand(batch, device=item_seq.device) * count).long()
            row = self.same_order[(start + offset).clamp(max=len(self.same_order) - 1)]
            cand_seq, cand_len = self.train_seqs[row], self.train_lens[row]
            seqs = torch.where(pending.unsqueeze(1), cand_seq, seqs)
            lens = torch.where(pending, cand_len, lens)
            identical = (cand_seq == full).all(dim=1) & (cand_len == item_len)
            pending = pending & identical & (count > 1)
            if not bool(pending.any()):
                break
        return seqs[:, : max(int(lens.max()), 1)], lens

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        item_seq = interaction[self.ITEM_SEQ]
        item_len = interaction[self.ITEM_SEQ_LEN]
        pos_items = interaction[self.POS_ITEM_ID]
        batch = item_seq.shape[0]
        seqs, lens = [item_seq], [item_len]
        if self.contrast in ("us_x", "us", "un"):
            seqs.append(item_seq)
            lens.append(item_len)
        if self.contrast in ("us_x", "us", "su"):
            sem_seq, sem_len = self.semantic_positives(item_seq, item_len, pos_items)
            seqs.append(sem_seq)
            lens.append(sem_len)
        width = max(seq.shape[1] for seq in seqs)  # a semantic positive may be the longest
        seqs = [F.pad(seq, (0, width - seq.shape[1])) for seq in seqs]
        outputs = self.forward(torch.cat(seqs), torch.cat(lens)).split(batch)
        ce = full_softmax_cross_entropy(outputs[0], self.item_embedding.weight, pos_items)
        contrastive = torch.zeros((), device=item_seq.device)
        if self.contrast == "us_x":
            contrastive = self.lmd_sem * info_nce(outputs[1], outputs[2], self.tau, self.sim)
        elif self.contrast == "un":
            contrastive = self.lmd * info_nce(outputs[0], outputs[1], self.tau, self.sim)
        elif self.contrast == "su":
            contrastive = self.lmd_sem * info_nce(outputs[0], outputs[1], self.tau, self.sim)
        elif self.contrast == "us":
            contrastive = self.lmd * info_nce(outputs[0], outputs[1], self.tau, self.sim)
            contrastive = contrastive + self.lmd_sem * info_nce(
                outputs[0], outputs[2], self.tau, self.sim
            )
        total = ce + contrastive
        values = torch.stack([ce, contrastive, total]).detach().tolist()
        self.last_loss_terms = dict(zip(("ce", "contrastive", "total"), values, strict=True))
        return total

    def predict(self, interaction: Any) -> torch.Tensor:
        output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return (output * self.item_embedding(interaction[self.ITEM_ID])).sum(dim=-1)

    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return output @ self.item_embedding.weight.T
