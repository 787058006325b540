"""ContrastVAE: every variant trains, loss terms, KL annealing, causality, padding, seeds,
evaluation consistency and the official-code switches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_ext.models.contrast_vae import ContrastVAE
from tests.helpers import ROOT, make_model, sequential_setup, train_steps

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
