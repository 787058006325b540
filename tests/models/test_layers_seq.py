"""Shared sequence layers: filter mixer vs an explicit DFT, window schedule, causality, padding,
contrastive loss, augmentations, per-position targets and latent helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recbole_ext.layers import filter_mixer
from recbole_ext.layers.contrastive import augment_sequences, info_nce, next_item_targets
from recbole_ext.layers.filter_mixer import FilterMixerEncoder, FilterMixerLayer, frequency_windows
from recbole_ext.layers.latent import (
    dirichlet_kl,
    dirichlet_sample,
    gaussian_kl,
    kl_weight,
    variational_dropout_penalty,
)
from recbole_ext.layers.transformer import CausalTransformerEncoder


def _explicit_filter(x: np.ndarray, spectrum: np.ndarray) -> np.ndarray:
    """irfft(spectrum * rfft(x)) with norm='ortho', written as explicit DFT matrices."""
    length = x.shape[0]
    k = np.arange(length)
    dft = np.exp(-2j * np.pi * np.outer(k, k) / length) / np.sqrt(length)  # [L, L]
    n_bins = length // 2 + 1
    half = (dft @ x)[:n_bins] * spectrum  # [F, H]
    full = np.zeros((length, x.shape[1]), dtype=complex)
    full[:n_bins] = half
    full[n_bins:] = np.conj(half[1 : length - n_bins + 1][::-1])  # Hermitian completion
    return np.real(np.conj(dft).T @ full)


@pytest.mark.parametrize("length", [7, 10])
@pytest.mark.parametrize("mixer", ["G", "L", "M"])
def test_filter_equals_explicit_dft(length, mixer):
    torch.manual_seed(0)
    windows = frequency_windows(length, 3, mixer, 0.6)[1]
    layer = FilterMixerLayer(4, length, windows, dropout=0.0).double()
    x = torch.randn(2, length, 4, dtype=torch.float64)
    spectrum = layer.spectrum().detach().numpy()[0]
    n_bins = length // 2 + 1
    # The spectrum is zero outside each filter's window and the weight inside.
    expected_spectrum = np.zeros((n_bins, 4), dtype=complex)
    for name, (left, right) in windows.items():
        w = getattr(layer, f"weight_{name}").detach().numpy()[0]
        expected_spectrum[left:right] += w[left:right, :, 0] + 1j * w[left:right, :, 1]
    np.testing.assert_allclose(spectrum, expected_spectrum, atol=1e-12)
    got = layer.mix(x).detach().numpy()
    for b in range(2):
        np.testing.assert_allclose(got[b], _explicit_filter(x[b].numpy(), spectrum), atol=1e-10)


def test_causal_filter_is_circular_filter_without_wraparound():
    torch.manual_seed(1)
    length = 9
    windows = frequency_windows(length, 2, "G", 0.5)[0]
    causal = FilterMixerLayer(3, length, windows, dropout=0.0, causal=True).double()
    spectrum = causal.spectrum().detach().numpy()[0]
    x = torch.randn(1, length, 3, dtype=torch.float64)
    # Kernel h of the circular filter = its response to a unit impulse at position 0.
    impulse = np.zeros((length, 3))
    impulse[0] = 1.0
    h = _explicit_filter(impulse, spectrum)  # [L, H]
    expected = np.zeros((length, 3))
    for t in range(length):
        for s in range(t + 1):
            expected[t] += h[t - s] * x[0, s].numpy()
    np.testing.assert_allclose(causal.mix(x)[0].detach().numpy(), expected, atol=1e-10)


def _windows_by_formula(length, n_layers, mixer, ratio):
    n_bins = length // 2 + 1
    out = []
    for i in range(n_layers):
        layer = {}
        if mixer in "GM":
            step = math.floor(n_bins * (1 - ratio) / (n_layers - 1)) if n_layers > 1 else 0
            layer["G"] = (int(n_bins * (1 - ratio) - i * step), int(n_bins - i * step))
        if mixer in "LM":
            w = 1 / n_layers
            layer["L"] = (int(n_bins * (1 - w) - i * w * n_bins), int(n_bins - i * w * n_bins))
        out.append(layer)
    return out


@pytest.mark.parametrize(
    "length,n_layers,ratio",
    [(50, 2, 0.5), (50, 2, 0.8), (50, 4, 0.3), (100, 3, 0.8), (20, 1, 0.5), (11, 5, 0.6)],
)
@pytest.mark.parametrize("mixer", ["G", "L", "M"])
def test_window_schedule_matches_formula(length, n_layers, ratio, mixer):
    got = frequency_windows(length, n_layers, mixer, ratio)
    assert got == _windows_by_formula(length, n_layers, mixer, ratio)
    n_bins = length // 2 + 1
    for layer in got:
        for left, right in layer.values():
            assert 0 <= left < right <= n_bins


def test_window_schedule_known_values():
    # L = 50 -> 26 bins; ratio 0.5 over 2 layers: step 13 -> [13, 26) then [0, 13).
    assert frequency_windows(50, 2, "G", 0.5) == [{"G": (13, 26)}, {"G": (0, 13)}]
    assert frequency_windows(50, 2, "L", 0.5) == [{"L": (13, 26)}, {"L": (0, 13)}]


def _assert_causal(encoder, length=8, **kwargs):
    encoder.eval()
    torch.manual_seed(2)
    x = torch.randn(3, length, 8)
    base = encoder(x, **kwargs)
    for t in range(length - 1):
        changed = x.clone()
        changed[:, t + 1 :] = torch.randn_like(changed[:, t + 1 :])
        out = encoder(changed, **kwargs)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :])


def test_transformer_has_no_future_leakage():
    _assert_causal(CausalTransformerEncoder(2, 8, 2, 16, 0.0, 0.0))


def test_causal_filter_mixer_has_no_future_leakage():
    torch.manual_seed(0)
    _assert_causal(FilterMixerEncoder(2, 8, 8, 16, 0.0, 0.0, "M", 0.5, causal=True))


def test_circular_filter_mixer_ignores_padding():
    torch.manual_seed(0)
    encoder = FilterMixerEncoder(2, 8, 8, 16, 0.0, 0.0, "G", 0.5).eval()
    x = torch.randn(2, 8, 8)
    valid = (torch.arange(8) < torch.tensor([[5], [3]])).unsqueeze(-1).float()
    base = encoder(x, valid)
    noisy = x + (1 - valid) * torch.randn_like(x) * 10
    torch.testing.assert_close(encoder(noisy, valid) * valid, base * valid)
    # Without the mask the circular filter does see the padding.
    assert not torch.allclose(encoder(noisy) * valid, encoder(x) * valid)


def test_info_nce_matches_direct_computation():
    torch.manual_seed(0)
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    got = info_nce(a, b, 0.5, "cos")
    z = torch.nn.functional.normalize(torch.cat([a, b]), dim=1)
    sim = (z @ z.T / 0.5).numpy()
    losses = []
    for i in range(8):
        partner = (i + 4) % 8
        others = [j for j in range(8) if j != i]
        losses.append(-sim[i, partner] + np.log(np.exp(sim[i, others]).sum()))
    assert got.item() == pytest.approx(float(np.mean(losses)), rel=1e-5)


def test_next_item_targets():
    seq = torch.tensor([[3, 4, 5, 0], [7, 0, 0, 0]])
    got = next_item_targets(seq, torch.tensor([3, 1]), torch.tensor([6, 8]))
    assert got.tolist() == [[4, 5, 6, 0], [8, 0, 0, 0]]


@pytest.mark.parametrize("op", ["crop", "mask", "reorder"])
def test_augmentations_keep_items_and_give_next_item_targets(op):
    torch.manual_seed(0)
    seq = torch.tensor([[1, 2, 3, 4, 5, 6, 0, 0], [11, 12, 13, 14, 15, 16, 17, 18]])
    lens = torch.tensor([6, 8])
    pos = torch.tensor([7, 19])
    for _ in range(10):
        aug = augment_sequences(seq, lens, pos, [op], mask_token=99)
        for b in range(2):
            n = int(aug.lengths[b])
            items = aug.items[b, :n].tolist()
            original = seq[b, : lens[b]].tolist() + [int(pos[b])]
            assert (aug.items[b, n:] == 0).all() and (aug.targets[b, n:] == 0).all()
            if op == "crop":
                start = original.index(items[0])
                assert items == original[start : start + n]
                assert n == max(1, int(lens[b] * 0.6))
            elif op == "mask":
                assert items.count(99) == int(lens[b] * 0.3)
                kept = [i for i, o in zip(items, original, strict=False) if i != 99]
                assert kept == [o for i, o in zip(items, original, strict=False) if i != 99]
            else:
                assert sorted(items) == sorted(original[:n])
                assert aug.targets[b, n - 1] == pos[b]
            # Targets: the next real item of the augmented order (masked items kept real).
            real = [original[original.index(i)] if i != 99 else None for i in items]
            for t in range(n - 1):
                if real[t + 1] is not None:
                    assert aug.targets[b, t] == real[t + 1]


def test_kl_weight_schedule():
    assert [kl_weight(s, 10, 0.2) for s in (0, 1, 2, 5, 20)] == [0.0, 0.1, 0.2, 0.2, 0.2]
    assert kl_weight(3, 0, 0.3) == 0.3


def test_gaussian_and_dirichlet_kl():
    mu, logvar = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.2, -0.3]])
    expected = 0.5 * (logvar.exp() + mu**2 - 1 - logvar).sum()
    assert gaussian_kl(mu, logvar).item() == pytest.approx(expected.item())
    alpha = torch.tensor([[2.0, 1.0, 0.5]])
    assert dirichlet_kl(torch.ones(1, 3), 1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert dirichlet_kl(alpha, 1.0).item() > 0
    alpha.requires_grad_(True)
    z = dirichlet_sample(alpha)
    assert torch.allclose(z.sum(-1), torch.ones(1))
    z[0, 0].backward()
    assert torch.isfinite(alpha.grad).all() and alpha.grad.abs().sum() > 0


def test_variational_dropout_penalty_formula():
    a = torch.tensor(0.3)
    c1, c2, c3 = 1.16145124, -1.50204118, 0.58629921
    expected = -(0.5 * math.log(0.3) + c1 * 0.3 + c2 * 0.09 + c3 * 0.027)
    assert variational_dropout_penalty(a).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_filter_mixer_on_a_trimmed_batch_equals_the_full_width_one(causal):
    """A batch padded only to its longest sequence filters as if padded to max_len."""
    torch.manual_seed(0)
    encoder = FilterMixerEncoder(2, 6, 12, 8, 0.0, 0.0, "M", 0.5, causal=causal).double().eval()
    lengths = torch.tensor([3, 7, 5])
    full = torch.randn(3, 12, 6, dtype=torch.float64)
    valid = (torch.arange(12) < lengths.unsqueeze(1)).unsqueeze(-1).double()
    expected = encoder(full * valid, valid)
    width = int(lengths.max())
    trimmed = encoder(full[:, :width] * valid[:, :width], valid[:, :width])
    real = valid[:, :width].bool().squeeze(-1)
    assert torch.allclose(trimmed[real], expected[:, :width][real], atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_filter_mixer_packed_real_positions_equal_the_padded_computation(causal, monkeypatch):
    """The position-wise layers on the packed real positions (mostly padding) give the values
    and gradients of the computation over every padded position (``PACK_BELOW``)."""
    torch.manual_seed(0)
    encoder = FilterMixerEncoder(2, 6, 12, 8, 0.0, 0.0, "M", 0.5, causal=causal).double()
    lengths = torch.tensor([3, 1, 12, 5])
    valid = (torch.arange(12) < lengths.unsqueeze(1)).unsqueeze(-1).double()
    x = torch.randn(4, 12, 6, dtype=torch.float64, requires_grad=True)
    results = []
    for pack_below in (1.01, 0.0):  # packed, then padded
        monkeypatch.setattr(filter_mixer, "PACK_BELOW", pack_below)
        encoder.zero_grad()
        x.grad = None
        out = encoder(x, valid)
        (out * valid * torch.linspace(-1, 1, 6, dtype=torch.float64)).sum().backward()
        grads = [p.grad.clone() for p in encoder.parameters()]
        results.append((out * valid, x.grad.clone(), grads))
    (packed, packed_x, packed_params), (padded, padded_x, padded_params) = results
    torch.testing.assert_close(packed, padded)
    torch.testing.assert_close(packed_x, padded_x)
    for a, b in zip(packed_params, padded_params, strict=True):
        torch.testing.assert_close(a, b)
