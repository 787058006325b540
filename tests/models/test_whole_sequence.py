"""Whole-sequence training (``train_regime: users``) of SASRec, GRU4Rec and NARM: the loss at
every position equals RecBole's per-prefix losses, no position sees its target or later items,
trimmed batches give full-width results, ``sampled_negatives`` works, and both regimes run through
the harness."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction
from recbole.model.sequential_recommender import gru4rec, narm, sasrec

from bench import api
from recbole_ext.data import accepts_trimmed_batches
from recbole_ext.layers.next_item import next_item_loss
from recbole_ext.layers.whole_sequence import real_position_targets
from recbole_ext.models.gru4rec import GRU4Rec
from recbole_ext.models.narm import NARM, CausalLocalContext
from recbole_ext.models.sasrec import SASRec
from tests.helpers import make_model, sequential_setup, write_inter

MAX_LENGTH = 10  # the tiny users have 3-7 training items: every history fits one window
TINY = {
    SASRec: {"hidden_size": 16, "inner_size": 32, "n_layers": 2, "n_heads": 2},
    GRU4Rec: {"embedding_size": 16, "hidden_size": 16, "num_layers": 1},
    NARM: {"embedding_size": 16, "hidden_size": 16, "n_layers": 1},
}
RECBOLE = {SASRec: sasrec.SASRec, GRU4Rec: gru4rec.GRU4Rec, NARM: narm.NARM}
MODELS = list(TINY)


@pytest.fixture(scope="module")
def setups(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Per model: a ``sequential_setup`` (30 users, 5-9 of 25 items, RecBole's prefix rows)."""
    return {
        cls: sequential_setup(
            tmp_path_factory.mktemp(cls.__name__),
            cls,
            {**TINY[cls], "MAX_ITEM_LIST_LENGTH": MAX_LENGTH},
        )
        for cls in MODELS
    }


def prefix_rows(setup: tuple) -> Interaction:
    """Every training prefix sample RecBole built (``train_regime: interactions``)."""
    return setup[1]._dataset.inter_feat


def whole_rows(setup: tuple) -> Interaction:
    """Each user's longest prefix sample: the whole training sequence and its last target."""
    rows = prefix_rows(setup)
    users, lengths = rows["user_id"].numpy(), rows["item_length"].numpy()
    order = np.lexsort((lengths, users))
    last = np.r_[users[order][1:] != users[order][:-1], True]
    return rows[torch.as_tensor(order[last])]


def trimmed(rows: Interaction) -> Interaction:
    """The same rows padded only to their longest sequence."""
    fields = dict(rows.interaction)
    fields["item_id_list"] = rows["item_id_list"][:, : int(rows["item_length"].max())]
    return Interaction(fields)


def fixed_model(setups: dict, cls: type, **overrides: object) -> torch.nn.Module:
    """Our model with ``overrides`` on its config and every weight drawn from N(0, 0.3^2): large
    enough that each input visibly moves the loss (SASRec's N(0, 0.02^2) init barely does)."""
    model = make_model(setups[cls], cls, **overrides)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


def model_and_recbole(setups: dict, cls: type, **overrides: object) -> tuple:
    """Our fixed model (config overrides applied) and RecBole's class with the same weights."""
    model = fixed_model(setups, cls, **overrides)
    reference = RECBOLE[cls](setups[cls][0], setups[cls][1]._dataset)
    reference.load_state_dict(model.state_dict())
    return model, reference


@pytest.mark.parametrize("cls", MODELS)
def test_whole_sequence_loss_is_the_mean_of_recboles_prefix_losses(setups, cls):
    model, reference = model_and_recbole(setups, cls, train_regime="users")
    assert model.whole_sequence
    prefixes, whole = prefix_rows(setups[cls]), whole_rows(setups[cls])
    assert int(whole["item_length"].max()) < MAX_LENGTH  # no history was cut
    model.eval(), reference.eval()
    with torch.no_grad():
        ours = model.calculate_loss(whole)
        # RecBole's CE is the mean over its batch: one batch of every prefix is the target mean.
        recbole = reference.calculate_loss(prefixes)
    assert len(prefixes) == int(whole["item_length"].sum())  # the same targets
    assert ours.item() == pytest.approx(recbole.item(), abs=1e-5)


def test_narm_chunked_local_attention_equals_one_chunk(setups):
    model = fixed_model(setups, NARM, train_regime="users")
    model.eval()  # no dropout: both passes see the same network
    whole = whole_rows(setups[NARM])
    item_seq, item_len = whole["item_id_list"], whole["item_length"]

    def outputs_and_grads(chunk_elements: int) -> tuple:
        model.local_attention_chunk = chunk_elements
        model.zero_grad()
        output = model.position_outputs(item_seq, item_len)
        (output**2).sum().backward()
        return output.detach(), [p.grad.clone() for p in model.parameters()]

    one_output, one_grads = outputs_and_grads(NARM.local_attention_chunk)
    # Three positions a chunk: many chunks, each recomputed in backward.
    chunked_output, chunked_grads = outputs_and_grads(3 * MAX_LENGTH * model.hidden_size)
    torch.testing.assert_close(chunked_output, one_output, atol=1e-6, rtol=1e-5)
    for chunked, one in zip(chunked_grads, one_grads, strict=True):
        torch.testing.assert_close(chunked, one, atol=1e-6, rtol=1e-5)


def test_narm_local_context_backward_is_the_gradient():
    generator = torch.Generator().manual_seed(0)
    batch, length, hidden = 3, 5, 4
    lengths = torch.tensor([5, 2, 4])
    positions, rows = (torch.arange(length).unsqueeze(1) < lengths).nonzero(as_tuple=True)
    # Chunks of 3 positions (sorted by t), each as wide as its largest t.
    spans = [(start, min(start + 3, len(rows))) for start in range(0, len(rows), 3)]
    chunks = [(start, stop, int(positions[stop - 1]) + 1) for start, stop in spans]
    assert len({width for _, _, width in chunks}) > 1

    def tensor(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)

    inputs = (tensor(batch, length, hidden), tensor(batch, length, hidden))
    inputs += (tensor(len(rows), hidden), tensor(hidden))
    assert torch.autograd.gradcheck(
        lambda *x: CausalLocalContext.apply(*x, rows, positions, chunks), inputs
    )


@pytest.mark.parametrize("cls", MODELS)
def test_no_position_sees_its_target_or_later_items(setups, cls):
    model = fixed_model(setups, cls, train_regime="users")
    model.eval()
    whole = whole_rows(setups[cls])
    item_seq, item_len = whole["item_id_list"], whole["item_length"]
    generator = torch.Generator().manual_seed(1)
    positions = torch.arange(item_seq.shape[1])
    for t in range(int(item_len.max())):
        # Another real item (never 0) at every position after t: position t's target (item
        # t + 1) and everything later. The window's last target never enters the outputs.
        later = (positions > t) & (positions < item_len.unsqueeze(1))
        shift = torch.randint(1, model.n_items - 1, item_seq.shape, generator=generator)
        changed_seq = torch.where(later, (item_seq - 1 + shift) % (model.n_items - 1) + 1, item_seq)
        with torch.no_grad():
            before = model.position_outputs(item_seq, item_len)
            after = model.position_outputs(changed_seq, item_len)
        torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], atol=1e-6, rtol=0)
        real_later = later.unsqueeze(-1).expand_as(before)
        if later.any():  # the later positions did see the change
            assert not torch.allclose(after[real_later], before[real_later])


@pytest.mark.parametrize("cls", MODELS)
def test_trimmed_batch_equals_full_width_batch(setups, cls):
    assert accepts_trimmed_batches(cls)  # the harness may hand it trimmed batches
    whole_model = fixed_model(setups, cls, train_regime="users")
    prefix_model = fixed_model(setups, cls, train_regime="interactions")
    whole, prefixes = whole_rows(setups[cls]), prefix_rows(setups[cls])
    assert whole["item_id_list"].shape[1] == MAX_LENGTH > int(whole["item_length"].max())
    for model in (whole_model, prefix_model):
        model.eval()
    with torch.no_grad():
        full = whole_model.position_outputs(whole["item_id_list"], whole["item_length"])
        short = whole_model.position_outputs(trimmed(whole)["item_id_list"], whole["item_length"])
        mask, _ = real_position_targets(
            whole["item_id_list"], whole["item_length"], whole["item_id"]
        )
        torch.testing.assert_close(short[mask[:, : short.shape[1]]], full[mask], atol=1e-6, rtol=0)
        for model, rows in ((whole_model, whole), (prefix_model, prefixes)):
            torch.testing.assert_close(
                model.calculate_loss(trimmed(rows)), model.calculate_loss(rows), atol=1e-6, rtol=0
            )
            torch.testing.assert_close(
                model.full_sort_predict(trimmed(rows)),
                model.full_sort_predict(rows),
                atol=1e-5,
                rtol=0,
            )


@pytest.mark.parametrize("cls", MODELS)
def test_interactions_regime_is_recboles_model(setups, cls):
    model, reference = model_and_recbole(setups, cls, train_regime="interactions")
    assert not model.whole_sequence
    assert model.state_dict().keys() == reference.state_dict().keys()
    prefixes = prefix_rows(setups[cls])
    model.train(), reference.train()
    torch.manual_seed(3)
    ours = model.calculate_loss(prefixes)
    torch.manual_seed(3)  # the same dropout masks
    assert torch.equal(ours, reference.calculate_loss(prefixes))
    model.eval(), reference.eval()
    with torch.no_grad():
        assert torch.equal(model.full_sort_predict(prefixes), reference.full_sort_predict(prefixes))
        assert torch.equal(model.predict(prefixes), reference.predict(prefixes))


def _full_ce(model: torch.nn.Module, rows: Interaction) -> float:
    """The full-softmax CE of ``rows`` in the model's regime, without dropout."""
    negatives = model.sampled_negatives
    model.eval()
    model.sampled_negatives = 0
    with torch.no_grad():
        loss = model.calculate_loss(rows).item()
    model.sampled_negatives = negatives
    return loss


@pytest.mark.parametrize("regime", ["users", "interactions"])
@pytest.mark.parametrize("cls", MODELS)
def test_sampled_negatives_change_the_loss_and_train(setups, cls, regime):
    model = make_model(setups[cls], cls, train_regime=regime, sampled_negatives=8)
    rows = whole_rows(setups[cls]) if regime == "users" else prefix_rows(setups[cls])
    model.eval()
    with torch.no_grad():
        sampled = model.calculate_loss(rows).item()
    full_before = _full_ce(model, rows)
    assert sampled != pytest.approx(full_before, abs=1e-3)  # fewer competitors than all items
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(30):
        optimizer.zero_grad()
        model.calculate_loss(rows).backward()
        optimizer.step()
    assert _full_ce(model, rows) < full_before - 0.1


@pytest.mark.parametrize("cls", MODELS)
def test_bpr_in_the_users_regime_draws_one_negative_per_position(setups, cls):
    model = fixed_model(setups, cls, train_regime="users", loss_type="BPR")
    model.eval()
    whole = whole_rows(setups[cls])
    item_seq, item_len = whole["item_id_list"], whole["item_length"]
    mask, targets = real_position_targets(item_seq, item_len, whole["item_id"])
    with torch.no_grad():
        hidden = model.position_outputs(item_seq, item_len)[mask]
        torch.manual_seed(5)
        expected = next_item_loss(hidden, targets, model.item_embedding.weight, "bpr")
        torch.manual_seed(5)
        assert torch.equal(model.calculate_loss(whole), expected)


def test_sampled_negatives_need_ce_and_a_count(setups):
    with pytest.raises(ValueError, match="loss_type CE"):
        make_model(setups[SASRec], SASRec, loss_type="BPR", sampled_negatives=4)
    with pytest.raises(ValueError, match=">= 0"):
        make_model(setups[SASRec], SASRec, sampled_negatives=-1)
    with pytest.raises(ValueError, match="train_regime"):
        make_model(setups[SASRec], SASRec, train_regime="sessions")


HARNESS_TINY = {
    "SASRec": {"hidden_size": 8, "inner_size": 16, "n_layers": 1},
    "GRU4Rec": {"embedding_size": 8, "hidden_size": 8},
    "NARM": {"embedding_size": 8, "hidden_size": 8},
}


@pytest.mark.parametrize("regime", ["default", "interactions"])
@pytest.mark.parametrize("model", sorted(HARNESS_TINY))
def test_one_epoch_through_the_harness(tmp_path: Path, model: str, regime: str):
    rng = np.random.default_rng(0)
    rows = []
    for user in range(1, 31):
        items = rng.choice(np.arange(1, 26), size=rng.integers(5, 10), replace=False)
        rows += [(user, int(item), float(t)) for t, item in enumerate(items)]
    write_inter(tmp_path, "tiny", rows)
    settings = {**HARNESS_TINY[model], "MAX_ITEM_LIST_LENGTH": MAX_LENGTH, "train_batch_size": 64}
    if regime != "default":
        settings["train_regime"] = regime
    summary = api.run(
        [model], "tiny", epochs=1, settings=settings, out=tmp_path / "out", data_dir=tmp_path
    )
    (result,) = summary.results
    assert result.ok, result.error
    assert result.source == "recbole_ext"
    expected = "users" if regime == "default" else regime  # the model YAML's default
    assert result.config["train_regime"] == expected
    # Users: one window per user (each history fits one); interactions: one row per prefix.
    training_targets = len(rows) - 3 * 30  # less each user's test, valid and first item
    samples = 30 if expected == "users" else training_targets
    assert result.data.train_samples == samples
    (epoch,) = result.epochs
    assert math.isfinite(epoch.train_loss)
    assert result.test and all(math.isfinite(v) for v in result.test.values())
