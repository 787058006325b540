"""HybridContrastVAE: Gaussian and Dirichlet latents train, per-branch KL, causality of both
branches, padding, seeds, evaluation consistency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recbole_ext.layers.contrastive import info_nce
from recbole_ext.models.hybrid_contrast_vae import HybridContrastVAE
from tests.helpers import (
    ROOT,
    assert_same_terms_when_trimmed,
    make_model,
    sequential_setup,
    train_steps,
)

YAML = str(ROOT / "configs/models/HybridContrastVAE.yaml")
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
    return sequential_setup(tmp_path_factory.mktemp("hybrid"), HybridContrastVAE, TINY)


def make(setup, **overrides):
    return make_model(setup, HybridContrastVAE, **overrides)


@pytest.mark.parametrize(
    "latent,aug1,aug2,mixer",
    [
        ("gaussian", "none", "none", "G"),
        ("dirichlet", "none", "none", "G"),
        ("gaussian", "random", "crop", "M"),
        ("dirichlet", "mask", "reorder", "L"),
    ],
)
def test_trains_with_finite_per_branch_terms(setup, latent, aug1, aug2, mixer):
    model = make(
        setup,
        latent=latent,
        branch1_augmentation=aug1,
        branch2_augmentation=aug2,
        filter_mixer=mixer,
    )
    losses, terms = train_steps(model, setup[3], 20)
    assert {"rec1", "rec2", "kl1", "kl2", "contrastive", "beta", "total"} <= set(terms[-1])
    assert all(np.isfinite(v) for t in terms for v in t.values())
    assert terms[-1]["kl1"] > 0 and terms[-1]["kl2"] > 0
    t = terms[-1]
    expected = t["rec1"] + t["rec2"] + t["beta"] * (t["kl1"] + t["kl2"]) + 0.6 * t["contrastive"]
    assert t["total"] == pytest.approx(expected, rel=1e-5)
    assert np.mean(losses[-3:]) < np.mean(losses[1:4])


def test_dirichlet_kl_matches_closed_form(setup):
    model = make(setup, latent="dirichlet", dirichlet_prior=0.7)
    batch = setup[3]
    params = model.encode(1, batch["item_id_list"], batch["item_length"])
    valid = torch.arange(params[0].shape[1]) < batch["item_length"].unsqueeze(1)
    _, kl = model._sample(params, valid)
    alpha = torch.nn.functional.softplus(params[0]) + 1e-2
    a0 = alpha.sum(-1)
    k = alpha.shape[-1]
    lg, dg = torch.lgamma, torch.digamma
    expected = (
        lg(a0)
        - lg(alpha).sum(-1)
        - lg(torch.tensor(0.7 * k))
        + k * lg(torch.tensor(0.7))
        + ((alpha - 0.7) * (dg(alpha) - dg(a0).unsqueeze(-1))).sum(-1)
    )
    torch.testing.assert_close(kl, expected[valid], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("branch", [1, 2])
@pytest.mark.parametrize("latent", ["gaussian", "dirichlet"])
def test_branches_have_no_future_leakage(setup, branch, latent):
    model = make(setup, latent=latent).eval()
    torch.manual_seed(0)
    seq = torch.randint(1, model.n_items, (4, 10))
    full = torch.full((4,), 10)
    with torch.no_grad():
        base = model.decoder(model._mean(model.encode(branch, seq, full)))
        for t in range(9):
            changed = seq.clone()
            changed[:, t + 1 :] = torch.randint(1, model.n_items, (4, 9 - t))
            out = model.decoder(model._mean(model.encode(branch, changed, full)))
            torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1])


@pytest.mark.parametrize("eval_branch", ["1", "2", "mean"])
def test_padding_ignored_and_predictions_consistent(setup, eval_branch):
    model = make(setup, eval_branch=eval_branch).eval()
    torch.manual_seed(0)
    lens = torch.tensor([3, 5, 10, 1])
    seq = torch.randint(1, model.n_items, (4, 10)) * (torch.arange(10) < lens.unsqueeze(1))
    junk = seq.clone()
    junk[seq == 0] = 3
    interaction = next(iter(setup[2]))[0]
    with torch.no_grad():
        torch.testing.assert_close(model(seq, lens), model(junk, lens))
        full = model.full_sort_predict(interaction)
        single = model.predict(interaction)
    assert full.shape == (len(interaction), model.n_items)
    items = interaction[model.ITEM_ID]
    torch.testing.assert_close(full[torch.arange(len(items)), items], single)


@pytest.mark.parametrize("latent", ["gaussian", "dirichlet"])
def test_same_seed_same_losses(setup, latent):
    a, _ = train_steps(make(setup, latent=latent), setup[3], 3)
    b, _ = train_steps(make(setup, latent=latent), setup[3], 3)
    assert a == b


@pytest.mark.parametrize("latent", ["gaussian", "dirichlet"])
@pytest.mark.parametrize("branch", ["1", "2"])
def test_lone_branch_ablation_trains_only_that_branch(setup, branch, latent):
    hybrid = make(setup, latent=latent)
    alone = make(setup, latent=latent, branches=branch, eval_branch="mean")
    other = "2" if branch == "1" else "1"
    assert len(getattr(alone, f"encoder{other}")) == 0
    assert len(getattr(alone, f"encoder{branch}")) == len(getattr(hybrid, f"encoder{branch}"))
    n_params = sum(p.numel() for p in alone.parameters())
    assert n_params < sum(p.numel() for p in hybrid.parameters())

    _, terms = train_steps(alone, setup[3], 10)
    t = terms[-1]
    assert set(t) == {f"rec{branch}", f"kl{branch}", "beta", "total"}
    assert t["total"] == pytest.approx(t[f"rec{branch}"] + t["beta"] * t[f"kl{branch}"], rel=1e-5)
    assert t[f"rec{branch}"] < terms[0][f"rec{branch}"]  # beta jumps at step 1: compare rec

    # Scoring comes from the lone branch whatever eval_branch says.
    alone.eval()
    batch = setup[3]
    with torch.no_grad():
        scores = alone.full_sort_predict(batch)
        seq, lens = batch[alone.ITEM_SEQ], batch[alone.ITEM_SEQ_LEN]
        z = alone._mean(alone.encode(int(branch), seq, lens)[:1])
        expected = alone.gather_indexes(alone.decoder(z), lens - 1) @ alone.item_weight.T
    assert torch.allclose(scores, expected, atol=1e-5)


def test_unknown_branches_value_is_refused(setup):
    with pytest.raises(ValueError, match="branches"):
        make(setup, branches="3")


def _sampled_views(model, batch) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Both branches' sampled decoder inputs (in calculate_loss's order of random draws) and
    the real-position mask of the batch (no augmentation)."""
    seq, lens = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    valid = torch.arange(seq.shape[1]) < lens.unsqueeze(1)
    with torch.no_grad():
        zs = [model._sample(model.encode(branch, seq, lens), valid)[0] for branch in (1, 2)]
    return zs, valid


@pytest.mark.parametrize("mode", ["logratio", "simplex"])
def test_dirichlet_contrast_logit_range(setup, mode):
    # H * z is all-positive: its cosines lie in [0, 1], the logits in [0, 1 / T]; the centred
    # log-ratios' cosines take either sign, so their logits reach below 0.
    model = make(setup, latent="dirichlet", dirichlet_contrast=mode).eval()
    torch.manual_seed(0)
    zs, valid = _sampled_views(model, setup[3])
    users = torch.nn.functional.normalize(torch.cat([model.contrast_view(z, valid) for z in zs]))
    logits = users @ users.T / model.temperature
    assert model.temperature == 0.5
    if mode == "simplex":
        assert logits.min() >= 0 and logits.max() <= 1 / model.temperature + 1e-5
    else:
        assert logits.min() < -0.5  # well below 0, not rounding
        assert logits.max() <= 1 / model.temperature + 1e-5


@pytest.mark.parametrize("mode", ["logratio", "simplex"])
def test_dirichlet_contrastive_term_sees_the_chosen_view(setup, mode):
    # The InfoNCE term of calculate_loss, recomputed from the same draws by the formula.
    model = make(setup, latent="dirichlet", dirichlet_contrast=mode).train()
    torch.manual_seed(3)
    model.calculate_loss(setup[3])
    term = model.last_loss_terms["contrastive"]

    torch.manual_seed(3)
    zs, valid = _sampled_views(model, setup[3])
    views = []
    for z in zs:
        simplex = z / model.hidden_size
        real = simplex[valid]  # drawn at the real positions; zero at the padded ones
        assert torch.all(real > 0) and torch.allclose(real.sum(-1), torch.ones(()))
        assert not simplex[~valid].any()
        if mode == "logratio":
            log = torch.where(valid.unsqueeze(-1), simplex, 1.0).log()
            clr = log - log.mean(dim=-1, keepdim=True)
            views.append((clr * valid.unsqueeze(-1)).sum(dim=1))
        else:
            views.append((z * valid.unsqueeze(-1)).sum(dim=1))
    expected = info_nce(views[0], views[1], model.temperature, "cos").item()
    assert term == pytest.approx(expected, rel=1e-4)


def test_dirichlet_contrast_defaults_to_logratio_and_gaussian_ignores_it(setup):
    assert make(setup, latent="dirichlet").dirichlet_contrast == "logratio"  # the YAML's
    batch = setup[3]
    terms = {}
    for latent in ("gaussian", "dirichlet"):
        for mode in ("logratio", "simplex"):
            torch.manual_seed(5)
            model = make(setup, latent=latent, dirichlet_contrast=mode).train()
            torch.manual_seed(5)
            model.calculate_loss(batch)
            terms[latent, mode] = model.last_loss_terms
    assert terms["gaussian", "logratio"] == terms["gaussian", "simplex"]
    # The Dirichlet's draws, reconstructions and KLs agree; only the contrastive term moves.
    dirichlet = terms["dirichlet", "logratio"], terms["dirichlet", "simplex"]
    for key in ("rec1", "rec2", "kl1", "kl2"):
        assert dirichlet[0][key] == dirichlet[1][key]
    assert dirichlet[0]["contrastive"] != pytest.approx(dirichlet[1]["contrastive"], rel=1e-3)


def test_unknown_dirichlet_contrast_is_refused(setup):
    with pytest.raises(ValueError, match="dirichlet_contrast"):
        make(setup, latent="dirichlet", dirichlet_contrast="clr")


@pytest.mark.parametrize(
    "latent,aug1,aug2", [("gaussian", "none", "none"), ("dirichlet", "random", "crop")]
)
def test_same_loss_on_a_batch_trimmed_to_its_longest_sequence(setup, latent, aug1, aug2):
    assert HybridContrastVAE.accepts_trimmed_batches
    # Evaluation mode: no dropout (its masks follow the width); the latents are drawn per real
    # position and the augmentations for max_seq_length columns, so the seed replays them.
    model = make(setup, latent=latent, branch1_augmentation=aug1, branch2_augmentation=aug2)
    assert_same_terms_when_trimmed(model.eval(), setup[3])
