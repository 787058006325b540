"""RecentPop: popularity as a weighted moving average over recent time windows.

A recency-aware popularity baseline in the spirit of the time-window popularity baselines of
time-aware recommendation (e.g. Campos, Diez and Cantador, "Time-aware recommender systems: a
comprehensive survey and analysis of existing evaluation protocols", UMUAI 2014). The training
time span is cut into windows counted back from the latest training time ``t_max``: window 0 is
``(t_max - L, t_max]``, window ``w`` is ``(t_max - (w + 1) L, t_max - w L]``, and the earliest
training time belongs to the last window. Every item is counted per window, and

    score(i) = sum_w weight(w) * count(i, w)

with ``weight(w) = decay_rate ** w`` (``window_weighting: exponential``) or
``weight(w) = (W - w) / W`` over ``W`` windows (``linear``), so recent windows count more. The
window length ``L`` is ``window_length`` when set, otherwise the span divided by ``n_windows``.
The score is the unnormalised weighted count; dividing by ``sum_w weight(w)`` would not change the
ranking. Every user gets the same scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType, ModelType

WEIGHTINGS = ("exponential", "linear")


def window_index(
    times: np.ndarray, n_windows: int | None = None, window_length: float | None = None
) -> tuple[np.ndarray, int]:
    """Window of each time counted back from the latest (0 = most recent), and the window count.

    Exactly one of ``n_windows`` (the span split evenly) and ``window_length`` is used;
    ``window_length`` wins when both are given.
    """
    times = np.asarray(times, dtype=np.float64)
    if len(times) == 0:
        return np.zeros(0, dtype=np.int64), 1
    t_max, span = times.max(), times.max() - times.min()
    if window_length is not None and window_length > 0:
        length = float(window_length)
        count = int(np.floor(span / length)) + 1
    elif n_windows is not None and n_windows >= 1:
        count = int(n_windows)
        length = span / count
    else:
        raise ValueError("RecentPop needs window_length > 0 or n_windows >= 1")
    if length <= 0:  # every interaction at the same time: one window
        return np.zeros(len(times), dtype=np.int64), 1
    # Window w is (t_max - (w + 1) L, t_max - w L], i.e. w = floor(age / L); the clip puts the
    # earliest time (age = span = count * L when the span is split evenly) in the last window.
    index = np.floor((t_max - times) / length).astype(np.int64)
    index = np.clip(index, 0, count - 1)
    return index, count


def window_weights(count: int, weighting: str, decay_rate: float) -> np.ndarray:
    """Weight of windows 0 (most recent) .. count - 1."""
    w = np.arange(count, dtype=np.float64)
    if weighting == "exponential":
        return decay_rate**w
    if weighting == "linear":
        return (count - w) / count
    raise ValueError(f"window_weighting must be one of {WEIGHTINGS}, got {weighting!r}")


class RecentPop(GeneralRecommender):
    """Item popularity counted per time window, recent windows weighted more."""

    input_type = InputType.POINTWISE
    type = ModelType.TRADITIONAL

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.n_windows = config["n_windows"]
        self.window_length = config["window_length"]
        self.weighting = str(config["window_weighting"])
        self.decay_rate = float(config["decay_rate"])
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"window_weighting must be one of {WEIGHTINGS}, got {self.weighting}")
        if self.weighting == "exponential" and not 0.0 < self.decay_rate <= 1.0:
            raise ValueError(f"decay_rate must lie in (0, 1], got {self.decay_rate}")
        time_field = dataset.time_field
        if time_field is None or time_field not in dataset.inter_feat:
            raise ValueError("RecentPop needs the TIME_FIELD of the interactions loaded")

        inter = dataset.inter_feat
        items = inter[self.ITEM_ID].numpy().astype(np.int64)
        times = inter[time_field].numpy().astype(np.float64)
        index, count = window_index(
            times,
            n_windows=None if self.n_windows is None else int(self.n_windows),
            window_length=None if self.window_length is None else float(self.window_length),
        )
        weights = window_weights(count, self.weighting, self.decay_rate)
        scores = np.bincount(items, weights=weights[index], minlength=self.n_items)
        # A buffer, not a parameter: checkpoints carry it, the optimiser ignores it.
        self.register_buffer("item_score", torch.as_tensor(scores, dtype=torch.float32))
        self.fake_loss = torch.nn.Parameter(torch.zeros(1))

    def forward(self) -> torch.Tensor:
        return self.item_score

    def calculate_loss(self, interaction: Interaction) -> torch.Tensor:
        # Nothing to learn: the weighted counts were taken in __init__.
        return torch.nn.Parameter(torch.zeros(1))

    def predict(self, interaction: Interaction) -> torch.Tensor:
        return self.item_score[interaction[self.ITEM_ID]]

    def full_sort_predict(self, interaction: Interaction) -> torch.Tensor:
        batch = interaction[self.USER_ID].shape[0]
        return self.item_score.unsqueeze(0).expand(batch, -1).clone()  # [B, n_items]
