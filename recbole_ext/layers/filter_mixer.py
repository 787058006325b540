"""SLIME4Rec's slide filter mixer (Du et al., ICDE 2023), shared by SLIME4Rec and the hybrid.

Each layer takes the real FFT along the sequence, keeps only a window of frequency bins, multiplies
by a learnable complex weight and transforms back; then dropout, residual, LayerNorm and a GELU
feed-forward block. With ``F = L // 2 + 1`` bins:

- dynamic filter ("G", DFS): width ratio ``w``; step ``s = (F (1 - w)) // (n_layers - 1)``; layer
  i keeps bins ``[int(F (1 - w) - i s), int(F - i s))``: the window slides from high to low
  frequencies as layers go deeper.
- static filter ("L", SFS): ``w = 1 / n_layers`` and ``s = F / n_layers``, the same formula:
  non-overlapping bands.
- mixed ("M"): a G filter plus an L filter, each with its own weight.

``slide_mode`` picks which layer index each filter uses (the official ``one`` .. ``four``; ``four``,
the default, uses i for both).

Two ways to apply the filter:

- ``causal=False`` (SLIME4Rec): the circular filter of the paper, ``irfft(rfft(x) * W)`` with
  ``norm="ortho"``. Every position sees every other, which is only safe when the model reads the
  last real position (no real item lies in its future).
- ``causal=True`` (the hybrid, which reconstructs every position): the same learned kernel
  ``h = irfft(W)`` applied as a causal linear convolution ``y[t] = sum_{s <= t} h[t - s] x[s]``
  (zero-padded FFT of length 2W for a batch W wide), i.e. the circular filter with its
  wrap-around terms, the ones that carry future positions into the past, removed.
"""

from __future__ import annotations

import torch
from torch import nn

from recbole_ext.layers.transformer import FeedForward

FILTER_MIXERS = ("G", "L", "M")
# Position-wise layers run on the packed real positions when fewer than this share of the batch's
# positions are real (measured break-even about 0.97 on a 2-core Xeon: 1.8x faster at 0.5).
PACK_BELOW = 0.9
SLIDE_MODES = ("one", "two", "three", "four")


def _layer_indices(i: int, n_layers: int, slide_mode: str) -> tuple[int, int]:
    """(index used by the G filter, index used by the L filter) of layer i."""
    last = n_layers - 1 - i
    return {"one": (i, last), "two": (last, i), "three": (last, last), "four": (i, i)}[slide_mode]


def frequency_windows(
    max_len: int,
    n_layers: int,
    filter_mixer: str = "G",
    dynamic_ratio: float = 0.8,
    slide_mode: str = "four",
) -> list[dict[str, tuple[int, int]]]:
    """Per layer, the kept bins ``[left, right)`` of each filter: ``{"G": (l, r), "L": (l, r)}``."""
    if filter_mixer not in FILTER_MIXERS:
        raise ValueError(f"filter_mixer must be one of {FILTER_MIXERS}, not {filter_mixer!r}")
    if slide_mode not in SLIDE_MODES:
        raise ValueError(f"slide_mode must be one of {SLIDE_MODES}, not {slide_mode!r}")
    n_bins = max_len // 2 + 1
    # The official code divides by n_layers - 1; one layer simply does not slide.
    g_step = (n_bins * (1 - dynamic_ratio)) // (n_layers - 1) if n_layers > 1 else 0.0
    l_width = 1 / n_layers
    l_step = l_width * n_bins
    windows = []
    for i in range(n_layers):
        g_i, l_i = _layer_indices(i, n_layers, slide_mode)
        layer: dict[str, tuple[int, int]] = {}
        if filter_mixer in ("G", "M"):
            layer["G"] = (
                int(n_bins * (1 - dynamic_ratio) - g_i * g_step),
                int(n_bins - g_i * g_step),
            )
        if filter_mixer in ("L", "M"):
            layer["L"] = (int(n_bins * (1 - l_width) - l_i * l_step), int(n_bins - l_i * l_step))
        windows.append(layer)
    return windows


def _size_class(n: int) -> int:
    """``n`` rounded up to 2^k or 1.5 x 2^k (at least 64): two sizes an octave, as fewer sizes
    kept the resident memory flat where 4 or 8 an octave still let it creep."""
    if n <= 64:
        return 64
    step = 1 << max(0, n.bit_length() - 2)
    return -(-n // step) * step


class FilterMixerLayer(nn.Module):
    """One windowed learnable frequency filter, then dropout, residual and LayerNorm."""

    def __init__(
        self,
        hidden_size: int,
        max_len: int,
        windows: dict[str, tuple[int, int]],
        dropout: float,
        layer_norm_eps: float = 1e-12,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.causal = causal
        n_bins = max_len // 2 + 1
        self.names = sorted(windows)
        for name in self.names:
            left, right = windows[name]
            keep = torch.zeros(n_bins, 1)
            keep[left:right] = 1.0
            self.register_buffer(f"keep_{name}", keep, persistent=False)
            # Real and imaginary parts, N(0, 0.02^2) as in the paper's code.
            weight = nn.Parameter(torch.randn(1, n_bins, hidden_size, 2) * 0.02)
            self.register_parameter(f"weight_{name}", weight)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def spectrum(self) -> torch.Tensor:
        """The effective complex filter ``[1, F, H]``: each weight times its window, summed.

        Zeroing the input's bins outside a window and multiplying equals multiplying by the
        zeroed weight, and the M mixer's two filtered products add up to one filter.
        """
        total = None
        for name in self.names:
            part = torch.view_as_complex(getattr(self, f"weight_{name}")) * getattr(
                self, f"keep_{name}"
            )
            total = part if total is None else total + part
        return total

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """The filter alone, ``[B, W, H] -> [B, W, H]`` (no dropout, residual or norm).

        A batch padded only to its own longest sequence (W < max_len) is filtered as if it were
        padded with zeros to ``max_len``: the filter's frequencies are those of max_len, so the
        result at every position is the full-width one.
        """
        width = x.shape[1]
        if width > self.max_len:
            raise ValueError(f"sequence length {width} > the filter's max_len {self.max_len}")
        length = self.max_len
        spectrum = self.spectrum()
        if not self.causal:
            freq = torch.fft.rfft(x, n=length, dim=1, norm="ortho")  # n= zero-pads to max_len
            return torch.fft.irfft(freq * spectrum, n=length, dim=1, norm="ortho")[:, :width]
        # The circular filter irfft_o(W * rfft_o(x)) is the circular convolution with
        # h = irfft(W) (backward norm); convolving with zero padding drops the wrap-around. The
        # first `width` outputs read only the taps h[0 .. width-1] and the inputs before them,
        # so a batch of width W < L needs FFTs of 2W, not 2L (the same values).
        kernel = torch.fft.irfft(spectrum, n=length, dim=1)[:, :width]
        n_fft = 2 * width
        freq = torch.fft.rfft(x, n=n_fft, dim=1) * torch.fft.rfft(kernel, n=n_fft, dim=1)
        return torch.fft.irfft(freq, n=n_fft, dim=1)[:, :width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.mix(x)))


class FilterMixerBlock(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        max_len: int,
        inner_size: int,
        windows: dict[str, tuple[int, int]],
        hidden_dropout: float,
        filter_dropout: float,
        layer_norm_eps: float = 1e-12,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.mixer = FilterMixerLayer(
            hidden_size, max_len, windows, filter_dropout, layer_norm_eps, causal
        )
        self.feed_forward = FeedForward(hidden_size, inner_size, hidden_dropout, layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feed_forward(self.mixer(x))


class FilterMixerEncoder(nn.Module):
    """A stack of slide-filter-mixer blocks, ``[B, L, H] -> [B, L, H]``.

    ``forward(x, valid)`` zeroes the padded positions (``valid`` is ``[B, L, 1]``, 1 on real
    items) before every filter, so padding never reaches a real position, whatever its content
    (the official code filters the padding's position embeddings too), and computes the
    position-wise layers at the real positions only when most are padding (``PACK_BELOW``); the
    output is zero at the padded positions.
    """

    def __init__(
        self,
        n_layers: int,
        hidden_size: int,
        max_len: int,
        inner_size: int,
        hidden_dropout: float,
        filter_dropout: float,
        filter_mixer: str = "G",
        dynamic_ratio: float = 0.8,
        slide_mode: str = "four",
        layer_norm_eps: float = 1e-12,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.windows = frequency_windows(max_len, n_layers, filter_mixer, dynamic_ratio, slide_mode)
        self.layers = nn.ModuleList(
            FilterMixerBlock(
                hidden_size,
                max_len,
                inner_size,
                window,
                hidden_dropout,
                filter_dropout,
                layer_norm_eps,
                causal,
            )
            for window in self.windows
        )

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        rows, cols = (None, None) if valid is None else valid.squeeze(-1).nonzero(as_tuple=True)
        if rows is None or len(rows) > PACK_BELOW * valid.numel():
            for layer in self.layers:
                x = layer(x if valid is None else x * valid)
            return x if valid is None else x * valid
        # Only the filter mixes positions: it runs on the zero-padded [B, W, H] tensor, and
        # everything position-wise (dropout, residual, LayerNorms, feed-forward) on the real
        # positions alone, packed [N, H] (on Beauty about 1 position in 6 is real). The output
        # is zero at the padded positions.
        n_real = len(rows)
        # The packed rows are padded (repeating the first) to one of a few sizes: glibc's
        # allocator fragments under tensors of a new size every batch (the resident memory
        # grew 16 MB a batch on Beauty's SLIME4Rec); the extra rows are never scattered back.
        extra = _size_class(n_real) - n_real
        if extra:
            rows = torch.cat([rows, rows[:1].expand(extra)])
            cols = torch.cat([cols, cols[:1].expand(extra)])
        real_rows, real_cols = rows[:n_real], cols[:n_real]
        packed = x[rows, cols]
        for layer in self.layers:
            padded = x.new_zeros(x.shape).index_put((real_rows, real_cols), packed[:n_real])
            mixer = layer.mixer
            mixed = mixer.mix(padded)[rows, cols]
            packed = layer.feed_forward(mixer.norm(packed + mixer.dropout(mixed)))
        return x.new_zeros(x.shape).index_put((real_rows, real_cols), packed[:n_real])
