"""ContrastVAE: every variant trains, loss terms, KL annealing, causality, padding, seeds,
evaluation consistency, the official-code switches and their ``official: true`` preset, and the
same loss on trimmed batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from bench import configs
from recbole_ext.layers.contrastive import augment_sequences, info_nce
from recbole_ext.layers.latent import gaussian_kl, masked_mean, sample_negatives_outside
from recbole_ext.models import contrast_vae
from recbole_ext.models.contrast_vae import OFFICIAL_SWITCHES, ContrastVAE
from tests.helpers import (
    ROOT,
    assert_same_terms_when_trimmed,
    make_model,
    sequential_setup,
    train_steps,
)

YAML = str(ROOT / "configs/models/ContrastVAE.yaml")
TINY = {
    "hidden_size": 16,
    "inner_size": 32,
    "n_heads": 2,
    "MAX_ITEM_LIST_LENGTH": 10,
    "train_batch_size": 64,
    "total_annealing_step": 1,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return sequential_setup(tmp_path_factory.mktemp("cvae"), ContrastVAE, TINY)


def make(setup, **overrides):
    return make_model(setup, ContrastVAE, **{**TINY, **overrides})


def batch_of(setup):
    # One fixed batch: iterating the loader again would shuffle differently.
    return setup[3]


@pytest.mark.parametrize("augmentation", ["vanilla", "ma", "da", "va", "va_da"])
def test_variant_trains_with_finite_terms(setup, augmentation):
    model = make(setup, augmentation=augmentation)
    losses, terms = train_steps(model, batch_of(setup), 20)
    expected = {"rec1", "kl1", "total", "beta"}
    if augmentation != "vanilla":
        expected |= {"rec2", "kl2", "contrastive"}
    assert expected <= set(terms[-1])
    assert all(np.isfinite(v) for t in terms for v in t.values())
    assert terms[-1]["total"] == pytest.approx(losses[-1], rel=1e-5)
    # beta is constant from step 1 (total_annealing_step 1), so the total must fall.
    assert np.mean(losses[-3:]) < np.mean(losses[1:4])
    if augmentation in ("va", "va_da"):
        assert 0 < terms[-1]["va_alpha"] < 1 and np.isfinite(terms[-1]["va_penalty"])


def test_total_is_sum_of_terms(setup):
    model = make(setup, augmentation="ma", contrastive_weight=0.6)
    train_steps(model, batch_of(setup), 2)
    t = model.last_loss_terms
    expected = t["rec1"] + t["rec2"] + t["beta"] * (t["kl1"] + t["kl2"]) + 0.6 * t["contrastive"]
    assert t["total"] == pytest.approx(expected, rel=1e-5)


def test_kl_annealing_per_step(setup):
    model = make(setup, total_annealing_step=4, anneal_cap=0.3)
    _, terms = train_steps(model, batch_of(setup), 7)
    assert [t["beta"] for t in terms] == pytest.approx([0.0, 0.25, 0.3, 0.3, 0.3, 0.3, 0.3])
    assert int(model.anneal_step) == 7
    # Evaluation-mode calls do not advance the schedule.
    model.eval()
    with torch.no_grad():
        model.calculate_loss(batch_of(setup))
    assert int(model.anneal_step) == 7
    assert "anneal_step" in model.state_dict()


def test_same_seed_same_losses(setup):
    a, _ = train_steps(make(setup, augmentation="da"), batch_of(setup), 3)
    b, _ = train_steps(make(setup, augmentation="da"), batch_of(setup), 3)
    assert a == b


def _per_position(model, seq):
    return model.decoder(model.encoder_mu(model.embed(seq)))


def test_no_future_leakage_and_padding_ignored(setup):
    model = make(setup).eval()
    torch.manual_seed(0)
    seq = torch.randint(1, model.n_items, (4, 10))
    with torch.no_grad():
        base = _per_position(model, seq)
        for t in range(9):
            changed = seq.clone()
            changed[:, t + 1 :] = torch.randint(1, model.n_items, (4, 9 - t))
            torch.testing.assert_close(_per_position(model, changed)[:, : t + 1], base[:, : t + 1])
        lens = torch.tensor([3, 5, 10, 1])
        padded = seq * (torch.arange(10) < lens.unsqueeze(1))
        junk = padded.clone()
        junk[padded == 0] = 7
        torch.testing.assert_close(model(padded, lens), model(junk, lens))


def test_loss_uses_every_position(setup):
    """A full sequence and its last prefix give different losses (per-position targets), and
    the targets of the per-position loss are the next items."""
    model = make(setup, augmentation="vanilla", rec_loss="ce", anneal_cap=0.0)
    model.eval()  # no dropout; the latent noise is replayed below with the same seed
    seq = torch.tensor([[1, 2, 3, 4, 0, 0, 0, 0, 0, 0]])
    inter = Interaction(
        {"item_id_list": seq, "item_length": torch.tensor([4]), "item_id": torch.tensor([5])}
    )
    torch.manual_seed(0)
    with torch.no_grad():
        loss = model.calculate_loss(inter)
        torch.manual_seed(0)
        mu, logvar = model.encode(seq)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        logits = model.decoder(z)[0, :4] @ model.item_weight.T
        expected = torch.nn.functional.cross_entropy(logits, torch.tensor([2, 3, 4, 5]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_full_sort_predict_shape_and_consistency(setup):
    model = make(setup).eval()
    interaction = next(iter(setup[2]))[0]
    with torch.no_grad():
        full = model.full_sort_predict(interaction)
        single = model.predict(interaction)
    assert full.shape == (len(interaction), model.n_items)
    items = interaction[model.ITEM_ID]
    torch.testing.assert_close(full[torch.arange(len(items)), items], single)


def test_official_switches(setup):
    model = make(setup, first_branch_mu_plus_sigma=True, history_score_zero=True).eval()
    interaction = next(iter(setup[2]))[0]
    seq = interaction[model.ITEM_SEQ]
    with torch.no_grad():
        full = model.full_sort_predict(interaction)
        emb = model.embed(seq)
        z = model.encoder_mu(emb) + torch.exp(0.5 * model.encoder_logvar(emb))
        out = model.gather_indexes(model.decoder(z), interaction[model.ITEM_SEQ_LEN] - 1)
    rows = torch.arange(len(seq)).unsqueeze(1).expand_as(seq)
    assert (full[rows[seq > 0], seq[seq > 0]] == 0).all()
    expected = out @ model.item_weight.T
    unseen = torch.ones_like(full, dtype=torch.bool)
    unseen[rows, seq] = False
    torch.testing.assert_close(full[unseen], expected[unseen])
    # Official data augmentation (reorder only) and original targets still train.
    model = make(setup, augmentation="da", da_operations=["reorder"], da_targets="original")
    losses, _ = train_steps(model, batch_of(setup), 3)
    assert np.isfinite(losses).all()


# --- the official preset ----------------------------------------------------------------------
OFFICIAL_ATTRIBUTES = {
    "share_encoder_pass": False,
    "da_operations": ["reorder"],
    "da_targets": "original",
    "first_branch_mu_plus_sigma": True,
    "history_score_zero": True,
    "kl_over_padding": True,
    "contrast_over_padding": True,
    "align_positions_right": True,
    "negatives_outside_sequence": True,
}


def test_shipped_yaml_leaves_every_switch_to_the_preset():
    keys = configs.load_yaml(YAML)
    assert set(OFFICIAL_SWITCHES) == set(OFFICIAL_ATTRIBUTES)
    assert all(keys[k] is None for k in OFFICIAL_SWITCHES)
    assert keys["official"] is False


def test_unset_switches_are_the_principled_defaults_recorded_in_the_config(setup):
    model = make(setup)
    for key, (default, official) in OFFICIAL_SWITCHES.items():
        assert setup[0][key] == default != official
        assert getattr(model, key) == default


def test_official_preset_turns_on_every_official_behaviour(setup):
    model = make(setup, official=True)
    for key, value in OFFICIAL_ATTRIBUTES.items():
        assert getattr(model, key) == value, key
        assert setup[0][key] == value, key  # the run records the effective values


def test_an_explicit_switch_beats_the_preset(setup):
    model = make(setup, official=True, kl_over_padding=False, da_operations=["crop"])
    assert not model.kl_over_padding and model.da_operations == ["crop"]
    assert model.align_positions_right and model.contrast_over_padding
    assert setup[0]["kl_over_padding"] is False
    model = make(setup, official=False, negatives_outside_sequence=True)
    assert model.negatives_outside_sequence and not model.kl_over_padding
    assert setup[0]["negatives_outside_sequence"] is True


# --- trimmed batches --------------------------------------------------------------------------
@pytest.mark.parametrize("official", [False, True], ids=["principled", "official"])
@pytest.mark.parametrize("augmentation", ["vanilla", "ma", "da", "va"])
def test_same_loss_on_a_batch_trimmed_to_its_longest_sequence(setup, augmentation, official):
    assert ContrastVAE.accepts_trimmed_batches
    # Evaluation mode: no hidden dropout (its masks follow the width); every other draw is made
    # per real position or for max_seq_length columns, so the seed replays it.
    model = make(setup, augmentation=augmentation, official=official).eval()
    model.anneal_step.fill_(1)  # a non-zero KL weight
    assert_same_terms_when_trimmed(model, batch_of(setup))


def test_augmentations_do_not_depend_on_the_batch_width():
    seq = torch.tensor([[1, 2, 3, 4, 5, 0, 0, 0], [6, 7, 8, 0, 0, 0, 0, 0]])
    lens, pos = torch.tensor([5, 3]), torch.tensor([9, 10])
    for ops in (["crop"], ["mask"], ["reorder"], ["crop", "mask", "reorder"]):
        torch.manual_seed(3)
        full = augment_sequences(seq, lens, pos, ops, mask_token=11, width=8)
        torch.manual_seed(3)
        cut = augment_sequences(seq[:, :5], lens, pos, ops, mask_token=11, width=8)
        assert torch.equal(full.items[:, :5], cut.items) and not full.items[:, 5:].any()
        assert torch.equal(full.targets[:, :5], cut.targets)
        assert torch.equal(full.lengths, cut.lengths)


# --- each official switch does what it says ---------------------------------------------------
def _reference_left_padded_encoder(model: ContrastVAE, encoder, items, lengths) -> torch.Tensor:
    """The official computation, written out: each sequence left-padded to max_seq_length,
    positions 0 .. L - 1, and attention scores plus -10000 where the key is padding or in the
    future (a padding query then attends to every position alike)."""
    width = model.max_seq_length
    left = torch.zeros(len(items), width, dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        left[row, width - n :] = items[row, :n]
    x = model.embedding_norm(model.item_embedding(left) + model.position_embedding.weight)
    visible = torch.ones(width, width).tril().bool() & (left > 0).unsqueeze(1)
    additive = torch.where(visible, 0.0, -10000.0).unsqueeze(1)
    for block in encoder.layers:
        att = block.attention
        heads = att.n_heads
        q, k, v = (
            t.view(len(x), width, heads, -1).transpose(1, 2) for t in att.qkv(x).chunk(3, dim=-1)
        )
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + additive
        context = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(x.shape)
        x = block.feed_forward(att.norm(x + att.out(context)))
    return x


def _padded_latents(model: ContrastVAE, batch: Interaction):
    seq, lens = batch["item_id_list"], batch["item_length"]
    view = model.view(seq, lens, torch.zeros_like(seq), padded=True)
    mu, logvar = model.encode(view.items, view.positions, view.mask)
    return view, mu, logvar


def test_padded_layout_is_the_official_left_padding(setup):
    model = make(setup, kl_over_padding=True, align_positions_right=True).eval()
    batch = batch_of(setup)
    seq, lens = batch["item_id_list"], batch["item_length"]
    with torch.no_grad():
        view, mu, logvar = _padded_latents(model, batch)
        assert view.items.shape == (len(seq), model.max_seq_length)
        expected_mu = _reference_left_padded_encoder(model, model.encoder_mu, seq, lens)
        expected_logvar = _reference_left_padded_encoder(model, model.encoder_logvar, seq, lens)
    torch.testing.assert_close(mu, expected_mu, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logvar, expected_logvar, atol=1e-5, rtol=1e-5)
    # The padding positions' latents are computed, not zero.
    assert mu[~view.valid].abs().sum(dim=-1).min() > 0


def test_kl_over_padding_averages_over_all_max_length_positions(setup):
    batch = batch_of(setup)
    model = make(setup, augmentation="vanilla", kl_over_padding=True).eval()
    with torch.no_grad():
        model.calculate_loss(batch)
        view, mu, logvar = _padded_latents(model, batch)
    per_position = gaussian_kl(mu, logvar)
    assert per_position.shape == (len(mu), model.max_seq_length)
    assert model.last_loss_terms["kl1"] == pytest.approx(per_position.mean().item(), rel=1e-5)
    assert model.last_loss_terms["kl1"] != pytest.approx(
        per_position[view.valid].mean().item(), rel=1e-3
    )
    # Off: the mean over the real positions of the batch as it comes.
    model = make(setup, augmentation="vanilla").eval()
    seq, lens = batch["item_id_list"], batch["item_length"]
    with torch.no_grad():
        model.calculate_loss(batch)
        mu, logvar = model.encode(seq)
    valid = torch.arange(seq.shape[1]) < lens.unsqueeze(1)
    expected = masked_mean(gaussian_kl(mu, logvar), valid).item()
    assert model.last_loss_terms["kl1"] == pytest.approx(expected, rel=1e-5)


def test_contrast_over_padding_sums_the_latents_of_all_positions(setup):
    batch = batch_of(setup)
    # Deterministic views (z = mu + sigma in both branches), so that the user vectors are known.
    fixed = {"augmentation": "ma", "first_branch_mu_plus_sigma": True, "reparam_dropout": 0.0}
    model = make(setup, contrast_over_padding=True, **fixed).eval()
    with torch.no_grad():
        model.calculate_loss(batch)
        view, mu, logvar = _padded_latents(model, batch)
    z = mu + torch.exp(0.5 * logvar)
    everywhere = info_nce(z.sum(dim=1), z.sum(dim=1), model.temperature).item()
    real = (z * view.valid.unsqueeze(-1)).sum(dim=1)
    real_only = info_nce(real, real, model.temperature).item()
    assert model.last_loss_terms["contrastive"] == pytest.approx(everywhere, rel=1e-5)
    assert everywhere != pytest.approx(real_only, rel=1e-3)
    model = make(setup, **fixed).eval()
    with torch.no_grad():
        model.calculate_loss(batch)
    assert model.last_loss_terms["contrastive"] == pytest.approx(real_only, rel=1e-4)


def test_align_positions_right_gives_the_most_recent_item_the_last_position(setup):
    interaction = next(iter(setup[2]))[0]
    seq, lens = interaction["item_id_list"], interaction["item_length"]
    outputs = {}
    for align in (False, True):
        model = make(setup, align_positions_right=align).eval()
        with torch.no_grad():
            outputs[align] = model(seq, lens)
            # Each sequence alone, unpadded, with the positions it should get.
            for row, n in enumerate(lens.tolist()):
                start = model.max_seq_length - n if align else 0
                positions = torch.arange(start, start + n)
                emb = model.embed(seq[row : row + 1, :n], positions)
                expected = model.decoder(model.encoder_mu(emb))[0, -1]
                torch.testing.assert_close(outputs[align][row], expected)
    assert not torch.allclose(outputs[False], outputs[True])


def test_align_positions_right_in_the_loss(setup):
    """The training loss reads the aligned positions too (vanilla, softmax loss, no KL)."""
    model = make(
        setup, augmentation="vanilla", rec_loss="ce", anneal_cap=0.0, align_positions_right=True
    ).eval()
    seq = torch.tensor([[1, 2, 3, 4, 0, 0, 0, 0, 0, 0]])
    inter = Interaction(
        {"item_id_list": seq, "item_length": torch.tensor([4]), "item_id": torch.tensor([5])}
    )
    torch.manual_seed(0)
    with torch.no_grad():
        loss = model.calculate_loss(inter)
        torch.manual_seed(0)
        mu, logvar = model.encode(seq[:, :4], torch.arange(6, 10))
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        logits = model.decoder(z)[0] @ model.item_weight.T
        expected = torch.nn.functional.cross_entropy(logits, torch.tensor([2, 3, 4, 5]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_negatives_outside_sequence_are_shared_and_outside_the_row(setup, monkeypatch):
    captured = []
    reconstruction = contrast_vae.reconstruction_loss

    def spy(*args, negatives=None, **kwargs):
        captured.append(negatives)
        return reconstruction(*args, negatives=negatives, **kwargs)

    monkeypatch.setattr(contrast_vae, "reconstruction_loss", spy)
    batch = batch_of(setup)
    seq, lens, pos = batch["item_id_list"], batch["item_length"], batch["item_id"]
    model = make(setup, negatives_outside_sequence=True)
    model.calculate_loss(batch)
    first, second = captured
    assert first is not None and torch.equal(first, second)  # one draw for both branches
    valid = torch.arange(seq.shape[1]) < lens.unsqueeze(1)
    row_of = torch.arange(len(seq)).unsqueeze(1).expand_as(seq)[valid]
    seen = torch.cat([seq, pos.unsqueeze(1)], dim=1)[row_of]
    assert len(first) == int(valid.sum())
    assert ((first >= 1) & (first < model.n_items)).all()
    assert not (seen == first.unsqueeze(1)).any()
    # Off: each branch's loss draws its own (any item but the target).
    captured.clear()
    make(setup).calculate_loss(batch)
    assert captured == [None, None]


def test_sample_negatives_outside_is_uniform_over_the_other_items():
    exclude = torch.tensor([[3, 5, 5, 0, 9], [0, 0, 0, 0, 0], [1, 2, 3, 4, 6]])
    allowed = [{1, 2, 4, 6, 7}, set(range(1, 8)), {5, 7}]  # ids 1 .. 7; 9 is no item
    draws = sample_negatives_outside(exclude, 8, 20000, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (3, 20000)
    for row, items in enumerate(allowed):
        values, counts = draws[row].unique(return_counts=True)
        assert set(values.tolist()) == items
        assert (counts / 20000 - 1 / len(items)).abs().max() < 0.02


def test_a_run_records_the_effective_switches(tmp_path):
    """Through ``bench run``: the preset from ``--set``, a switch from a ``--config`` file beating
    it, and the run's recorded config holding every effective value."""
    from bench import api

    user_yaml = tmp_path / "mine.yaml"
    user_yaml.write_text("kl_over_padding: false\n")
    settings = {
        "epochs": 1,
        "train_sample_limit": 500,
        "eval_user_limit": 50,
        "hidden_size": 8,
        "inner_size": 16,
        "n_heads": 2,
        "MAX_ITEM_LIST_LENGTH": 10,
        "train_batch_size": 256,
        "official": True,
    }
    summary = api.run(
        ["ContrastVAE"], "ml-100k", out=tmp_path, settings=settings, config_files=[user_yaml]
    )
    result = summary.results[0]

    def field(name: str):  # a result record (bench.contract.RunResult) or its older dict form
        return result[name] if isinstance(result, dict) else getattr(result, name, None)

    assert field("status") == "ok", field("error")
    recorded = {key: field("config")[key] for key in OFFICIAL_SWITCHES}
    assert recorded == {**OFFICIAL_ATTRIBUTES, "kl_over_padding": False}
