"""MarkovChain: a first-order item-to-item Markov chain estimated by counting, with smoothing.

The classic first-order Markov model of next-item recommendation, as in the FMC baseline of
Rendle, Freudenthaler and Schmidt-Thieme, "Factorizing Personalized Markov Chains for Next-Basket
Recommendation", WWW 2010, but with the transition matrix estimated directly from counts rather
than factorised. With ``C[i, j]`` the number of times item ``j`` directly follows item ``i`` in a
training sequence, ``C_i`` the row total and ``V`` the number of items (padding excluded), the
score of candidate ``j`` after last item ``i`` is the smoothed transition probability

    P(j | i) = (C[i, j] + alpha * V * prior(j)) / (C_i + alpha * V)

``backoff: uniform`` makes ``prior`` uniform: classic additive (add-alpha) smoothing.
``backoff: popularity`` spreads the same pseudo-count mass by training popularity, so a last item
seen in few transitions backs off towards Pop, one never seen as a source ranks exactly as Pop,
and candidates never seen after it are ordered by popularity rather than tied. With ``alpha = 0``
an unseen source falls back to ``prior`` entirely.

Counts come from the training sequences only, in either training regime: every training row
holds one observed transition (the last input item to the target), and each user's earliest
training row also contributes the transitions inside its input (all of them for the one-row
``users`` regime; none in the default per-prefix regime, where that row's input is one item).
Under the ``users`` regime, transitions older than ``MAX_ITEM_LIST_LENGTH`` are not in the data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_ext.layers.metric_embedding import last_items

BACKOFFS = ("uniform", "popularity")


class MarkovChain(SequentialRecommender):
    """Smoothed first-order transition probabilities P(next | last item), counted once."""

    input_type = InputType.POINTWISE

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.alpha = float(config["smoothing_alpha"])
        self.backoff = str(config["backoff"])
        if self.alpha < 0:
            raise ValueError(f"smoothing_alpha must be >= 0, got {self.alpha}")
        if self.backoff not in BACKOFFS:
            raise ValueError(f"backoff must be one of {BACKOFFS}, got {self.backoff!r}")

        src, dst, seen_items = self._training_transitions(dataset)
        n = self.n_items
        counts = torch.sparse_coo_tensor(
            torch.as_tensor(np.stack([src, dst]), dtype=torch.long),
            torch.ones(len(src), dtype=torch.float64),
            (n, n),
            check_invariants=True,
        ).coalesce()
        row_totals = torch.zeros(n, dtype=torch.float64)
        row_totals.index_add_(
            0, torch.as_tensor(src, dtype=torch.long), torch.ones(len(src)).double()
        )

        n_real = n - 1  # item 0 is padding and never a candidate
        if self.backoff == "uniform":
            prior = torch.full((n,), 1.0 / n_real, dtype=torch.float64)
        else:
            popularity = torch.as_tensor(np.bincount(seen_items, minlength=n), dtype=torch.float64)
            popularity[0] = 0.0
            prior = popularity / popularity.sum().clamp_min(1.0)
        prior[0] = 0.0

        # Buffers, not parameters: checkpoints carry them, the optimiser ignores them.
        self.register_buffer("trans_index", counts.indices())
        self.register_buffer("trans_count", counts.values().float())
        self.register_buffer("row_total", row_totals.float())
        # The pseudo-count each candidate gets in every row: alpha * V * prior(j).
        self.register_buffer("pseudo_count", (self.alpha * n_real * prior).float())
        self.register_buffer("prior", prior.float())
        self.pseudo_mass = self.alpha * n_real
        self.fake_loss = torch.nn.Parameter(torch.zeros(1))

    def _training_transitions(self, dataset: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(source items, next items, every training interaction's item), see the docstring."""
        inter = dataset.inter_feat
        users = inter[self.USER_ID].numpy()
        seq = inter[self.ITEM_SEQ].numpy()
        lengths = inter[self.ITEM_SEQ_LEN].numpy().astype(np.int64)
        targets = inter[self.POS_ITEM_ID].numpy()
        rows = np.arange(len(users))

        src = [seq[rows, lengths - 1]]
        dst = [targets]
        seen = [targets]
        if len(users):
            # Each user's earliest row: shortest input, then first in the (time-sorted) data.
            order = np.lexsort((rows, lengths, users))
            first = order[np.r_[True, users[order][1:] != users[order][:-1]]]
            for r in first:
                prefix = seq[r, : lengths[r]]
                src.append(prefix[:-1])
                dst.append(prefix[1:])
                seen.append(prefix)
        return (
            np.concatenate(src).astype(np.int64),
            np.concatenate(dst).astype(np.int64),
            np.concatenate(seen).astype(np.int64),
        )

    def forward(self, last: torch.Tensor) -> torch.Tensor:
        """P(j | last) for every item j: ``[B] -> [B, n_items]``."""
        counts = torch.sparse_coo_tensor(
            self.trans_index,
            self.trans_count,
            (self.n_items, self.n_items),
            is_coalesced=True,
            check_invariants=False,  # built valid in __init__
        )
        rows = counts.index_select(0, last).to_dense()
        denom = self.row_total[last] + self.pseudo_mass
        probs = (rows + self.pseudo_count) / denom.clamp_min(1e-12).unsqueeze(1)
        # alpha = 0 and a source never seen in training: no evidence at all, use the prior.
        unseen = denom <= 0
        return torch.where(unseen.unsqueeze(1), self.prior.expand_as(probs), probs)

    def _last(self, interaction: Interaction) -> torch.Tensor:
        return last_items(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])

    def calculate_loss(self, interaction: Interaction) -> torch.Tensor:
        # Nothing to learn: the counts were taken in __init__.
        return torch.nn.Parameter(torch.zeros(1))

    def predict(self, interaction: Interaction) -> torch.Tensor:
        item = interaction[self.ITEM_ID]
        probs = self.forward(self._last(interaction))
        return probs.gather(1, item.unsqueeze(1)).squeeze(1)

    def full_sort_predict(self, interaction: Interaction) -> torch.Tensor:
        return self.forward(self._last(interaction))
