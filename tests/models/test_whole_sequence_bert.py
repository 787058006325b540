"""BERT4Rec masking in the model: whole sequences (window + next item) under ``train_regime:
users``, RecBole's own masking and loss under ``interactions``."""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path

import pytest
import torch
from recbole.data.interaction import Interaction
from recbole.data.transform import MaskItemSequence
from recbole.model.sequential_recommender.bert4rec import BERT4Rec as RecBoleBERT4Rec

from bench import api
from recbole_ext.data import accepts_trimmed_batches
from recbole_ext.layers import next_item
from recbole_ext.layers.whole_sequence import window_with_next_item
from recbole_ext.models import bert4rec
from recbole_ext.models.bert4rec import BERT4Rec
from tests.helpers import TINY, make_model, sequential_setup

MAX_LEN = 10  # every tiny user's training items fit: sequences hold 5-9 items
SETTINGS = {
    "hidden_size": 8,
    "inner_size": 16,
    "n_layers": 1,
    "n_heads": 2,
    "MAX_ITEM_LIST_LENGTH": MAX_LEN,
    "train_batch_size": 512,
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    return sequential_setup(tmp_path_factory.mktemp("bert"), BERT4Rec, SETTINGS)


@pytest.fixture(autouse=True)
def _fresh_warnings():
    bert4rec._WARNED.clear()
    yield
    bert4rec._WARNED.clear()


def _longest_prefix_rows(dataset) -> Interaction:
    """Each user's longest RecBole prefix sample: the whole-sequence rows, built here."""
    inter = dataset.inter_feat
    users = inter[dataset.uid_field].tolist()
    lengths = inter[dataset.item_list_length_field].tolist()
    best: dict[int, int] = {}
    for row, (user, length) in enumerate(zip(users, lengths, strict=True)):
        if user not in best or length > lengths[best[user]]:
            best[user] = row
    return inter[torch.tensor(sorted(best.values()))]


def _trimmed(batch: Interaction, model) -> Interaction:
    width = int(batch[model.ITEM_SEQ_LEN].max())
    trimmed = Interaction(dict(batch.interaction))
    trimmed[model.ITEM_SEQ] = batch[model.ITEM_SEQ][:, :width]
    return trimmed


def _copy(batch: Interaction) -> Interaction:
    return Interaction({k: v.clone() for k, v in batch.interaction.items()})


def _recbole_twin(model: BERT4Rec, setup: tuple) -> RecBoleBERT4Rec:
    twin = RecBoleBERT4Rec(setup[0], setup[1]._dataset)
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def test_window_with_next_item_appends_and_keeps_the_newest():
    item_seq = torch.tensor([[1, 2, 3, 0], [4, 0, 0, 0], [5, 6, 7, 8]])
    item_len = torch.tensor([3, 1, 4])
    pos = torch.tensor([9, 10, 11])
    sequence, length = window_with_next_item(item_seq, item_len, pos, max_length=5)
    expected = [[1, 2, 3, 9, 0], [4, 10, 0, 0, 0], [5, 6, 7, 8, 11]]
    assert sequence.tolist() == expected and length.tolist() == [4, 2, 5]
    # Four positions: the full window drops its oldest item for the next one.
    sequence, length = window_with_next_item(item_seq, item_len, pos, max_length=4)
    assert sequence.tolist() == [[1, 2, 3, 9], [4, 10, 0, 0], [6, 7, 8, 11]]
    assert length.tolist() == [4, 2, 4]
    # A batch trimmed to its longest window gives the same sequences.
    trimmed = window_with_next_item(item_seq[:, :4], item_len, pos, max_length=5)
    assert torch.equal(trimmed[0], window_with_next_item(item_seq, item_len, pos, 5)[0])


def test_cloze_mask_draws_as_asked(setup):
    model = make_model(setup, BERT4Rec, mask_ratio=0.3, ft_ratio=0.25)
    sequence = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 0], [10, 11, 0, 0, 0, 0, 0, 0]] * 8)
    length = (sequence > 0).sum(1)
    real = sequence > 0
    torch.manual_seed(0)
    ft_batches, masked_share, first_masked = 0, [], 0
    for _ in range(400):
        masked, targets = model.cloze_mask(sequence, length)
        chosen = masked == model.mask_token
        assert torch.equal(chosen, targets > 0)  # a target exactly where the mask token is
        assert torch.equal(targets[chosen], sequence[chosen])
        assert torch.equal(masked[~chosen], sequence[~chosen])
        assert not (chosen & ~real).any() and chosen.any(dim=1).all()  # >= 1 a sequence
        last = torch.arange(8) == (length - 1).unsqueeze(1)
        if torch.equal(chosen, last):
            ft_batches += 1
        else:
            masked_share.append(chosen[real].float().mean().item())
            first_masked += int(chosen[:, 0].sum())
    assert ft_batches / 400 == pytest.approx(0.25, abs=0.06)
    # 0.3 per item, plus one item for each row the draw left unmasked (at-least-one rule).
    expected = (9 * 0.3 + 0.7**7 + 0.7**2) / 9
    assert sum(masked_share) / len(masked_share) == pytest.approx(expected, abs=0.02)
    assert first_masked > 0  # position 0 is masked too (RecBole's index format cannot)


def test_cloze_loss_equals_recboles_for_the_same_masking(setup):
    model = make_model(setup, BERT4Rec).eval()
    with torch.no_grad():  # RecBole starts it at 0; a trained one is not
        model.output_bias.normal_()
    twin = _recbole_twin(model, setup)
    rows = _longest_prefix_rows(setup[1]._dataset)
    sequence, length = window_with_next_item(
        rows[model.ITEM_SEQ], rows[model.ITEM_SEQ_LEN], rows[model.POS_ITEM_ID], MAX_LEN
    )
    torch.manual_seed(3)
    positions = torch.arange(sequence.shape[1])
    # RecBole's index format reads index 0 as padding: leave position 0 unmasked here.
    chosen = (torch.rand(sequence.shape) < 0.4) & (positions < length.unsqueeze(1))
    chosen &= positions > 0
    masked = sequence.masked_fill(chosen, model.mask_token)
    targets = sequence * chosen
    ours = model.cloze_loss(masked, targets)

    width = int(chosen.sum(1).max())
    index = torch.zeros(len(sequence), width, dtype=torch.long)
    pos_items = torch.zeros_like(index)
    for row in range(len(sequence)):  # RecBole pads its index lists on the left
        where = chosen[row].nonzero().flatten()
        if len(where):
            index[row, width - len(where) :] = where
            pos_items[row, width - len(where) :] = sequence[row, where]
    recbole_batch = Interaction(
        {
            model.MASK_ITEM_SEQ: masked,
            model.POS_ITEMS: pos_items,
            model.NEG_ITEMS: torch.zeros_like(index),
            model.MASK_INDEX: index,
        }
    )
    theirs = twin.calculate_loss(recbole_batch)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_calculate_loss_scores_exactly_the_masked_positions(setup, monkeypatch):
    model = make_model(setup, BERT4Rec).eval()
    rows = _longest_prefix_rows(setup[1]._dataset)
    seen = {}

    def recording_loss(hidden, targets, weight, kind="ce", negatives=0):
        seen["targets"] = targets
        return next_item.next_item_loss(hidden, targets, weight, kind, negatives)

    monkeypatch.setattr(bert4rec, "next_item_loss", recording_loss)
    for seed in range(6):  # both the cloze and the last-item batches
        torch.manual_seed(seed)
        loss = model.calculate_loss(rows)
        torch.manual_seed(seed)
        sequence, length = window_with_next_item(
            rows[model.ITEM_SEQ], rows[model.ITEM_SEQ_LEN], rows[model.POS_ITEM_ID], MAX_LEN
        )
        masked, targets = model.cloze_mask(sequence, length)
        assert torch.equal(seen["targets"], sequence[masked == model.mask_token])
        assert torch.equal(loss, model.cloze_loss(masked, targets))
    # Every item, the next one included, can be a target.
    torch.manual_seed(0)
    model.ft_ratio = 1.0
    model.calculate_loss(rows)
    assert torch.equal(seen["targets"], rows[model.POS_ITEM_ID])


def test_interactions_regime_is_recboles_masking_and_loss(setup):
    config, train, _, batch, _ = setup
    model = make_model(setup, BERT4Rec, train_regime="interactions")
    twin = _recbole_twin(model, setup).train()
    model.train()
    losses = []
    for seed in range(4):  # RecBole's ft_ratio coin lands both ways
        random.seed(seed)  # RecBole's transform draws with `random`
        torch.manual_seed(seed)  # dropout
        ours = model.calculate_loss(_copy(batch))
        random.seed(seed)
        torch.manual_seed(seed)
        masked = MaskItemSequence(config)(train._dataset, _copy(batch))
        assert torch.equal(ours, twin.calculate_loss(masked))
        losses.append(ours.item())
    assert len(set(losses)) == 4
    # A batch the dataloader masked already (transform: mask_itemseq) is used as it comes.
    random.seed(0)  # a cloze batch (its ft_ratio coin lands at 0.84)
    masked = MaskItemSequence(config)(train._dataset, _copy(batch))
    model.eval()
    twin.eval()
    assert torch.equal(model.calculate_loss(_copy(masked)), twin.calculate_loss(_copy(masked)))


def test_a_batch_without_a_recbole_target_gives_no_update(setup):
    """RecBole's loss never counts position 0: on 1-item windows (a length bucket) it is 0 / 0."""
    config, train, _, batch, _ = setup
    model = make_model(setup, BERT4Rec, train_regime="interactions")
    twin = _recbole_twin(model, setup)
    ones = batch[torch.nonzero(batch[model.ITEM_SEQ_LEN] == 1).flatten()]
    assert len(ones) > 1
    random.seed(0)
    masked = MaskItemSequence(config)(train._dataset, _copy(ones))
    assert torch.isnan(twin.calculate_loss(_copy(masked)))
    loss = model.calculate_loss(_copy(masked))
    assert loss.item() == 0.0
    loss.backward()  # the trainer's step runs; nothing moves
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_trimmed_batches_give_the_same_loss(setup):
    assert accepts_trimmed_batches(BERT4Rec)  # so the harness trims its batches
    _, train, _, batch, _ = setup
    model = make_model(setup, BERT4Rec).eval()
    rows = _longest_prefix_rows(train._dataset)
    assert rows[model.ITEM_SEQ].shape[1] == MAX_LEN > int(rows[model.ITEM_SEQ_LEN].max())
    torch.manual_seed(1)
    full = model.calculate_loss(rows)
    torch.manual_seed(1)
    assert model.calculate_loss(_trimmed(rows, model)).item() == pytest.approx(full.item(), 1e-6)
    # The encoder itself ignores padding columns (what makes trimming safe).
    sequence, length = window_with_next_item(
        rows[model.ITEM_SEQ], rows[model.ITEM_SEQ_LEN], rows[model.POS_ITEM_ID], MAX_LEN
    )
    masked, targets = model.cloze_mask(sequence, length)
    padded = torch.nn.functional.pad(masked, (0, 3))
    wider = model.cloze_loss(padded, torch.nn.functional.pad(targets, (0, 3)))
    assert wider.item() == pytest.approx(model.cloze_loss(masked, targets).item(), rel=1e-6)
    # RecBole's regime: its masking draws per real item, so trimming changes nothing either.
    model = make_model(setup, BERT4Rec, train_regime="interactions").eval()
    random.seed(5)
    full = model.calculate_loss(_copy(batch))
    random.seed(5)
    trimmed = model.calculate_loss(_trimmed(_copy(batch), model))
    assert trimmed.item() == pytest.approx(full.item(), rel=1e-6)


def _train(model, batch, steps: int) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()
    model.eval()


def test_sampled_negatives_change_the_loss_and_train(setup, monkeypatch):
    rows = _longest_prefix_rows(setup[1]._dataset)
    full_model = make_model(setup, BERT4Rec).eval()
    model = make_model(setup, BERT4Rec, sampled_negatives=5).eval()
    torch.manual_seed(0)
    full = full_model.calculate_loss(rows)
    torch.manual_seed(0)
    sampled = model.calculate_loss(rows)
    assert not torch.isclose(full, sampled)  # same weights and masks: 6-way softmax vs 26-way
    # Training on the sampled loss lowers the full loss on a fixed masking.
    sequence, length = window_with_next_item(
        rows[model.ITEM_SEQ], rows[model.ITEM_SEQ_LEN], rows[model.POS_ITEM_ID], MAX_LEN
    )
    torch.manual_seed(1)
    fixed = model.cloze_mask(sequence, length)
    before = full_model.cloze_loss(*fixed).item()
    torch.manual_seed(0)  # the training masks and dropout
    _train(model, rows, steps=40)
    full_model.load_state_dict(model.state_dict())
    assert full_model.cloze_loss(*fixed).item() < before - 0.1

    # RecBole's regime: RecBole's masked positions, scored by the sampled softmax; with the
    # negatives switched to the full softmax it is RecBole's loss again.
    batch = setup[3]
    model = make_model(setup, BERT4Rec, train_regime="interactions", sampled_negatives=5).eval()
    twin = _recbole_twin(model, setup)
    random.seed(2)
    masked = MaskItemSequence(setup[0])(setup[1]._dataset, _copy(batch))
    sampled = model.calculate_loss(masked)
    assert not torch.isclose(sampled, twin.calculate_loss(masked))

    def full_softmax(hidden, targets, weight, kind="ce", negatives=0):
        return next_item.next_item_loss(hidden, targets, weight, kind, 0)

    monkeypatch.setattr(bert4rec, "next_item_loss", full_softmax)
    assert model.calculate_loss(masked).item() == pytest.approx(
        twin.calculate_loss(masked).item(), rel=1e-5
    )


def test_bpr_and_bad_settings(setup):
    rows = _longest_prefix_rows(setup[1]._dataset)
    model = make_model(setup, BERT4Rec, loss_type="BPR").eval()
    torch.manual_seed(0)
    loss = model.calculate_loss(rows)
    # Scores start near 0: BPR's -log sigmoid(0), not a 26-way softmax's log 26.
    assert loss.item() == pytest.approx(math.log(2), abs=0.05)
    with pytest.raises(ValueError, match="needs loss_type CE"):
        make_model(setup, BERT4Rec, loss_type="BPR", sampled_negatives=3)
    with pytest.raises(ValueError, match=">= 0"):
        make_model(setup, BERT4Rec, sampled_negatives=-1)
    with pytest.raises(ValueError, match="train_regime"):
        make_model(setup, BERT4Rec, train_regime="prefixes")


def test_a_dataloader_transform_in_the_users_regime_is_flagged_once(setup, caplog):
    with caplog.at_level(logging.WARNING, logger="recbole_ext.models.bert4rec"):
        make_model(setup, BERT4Rec)
        assert not caplog.records  # the YAML turns the transform off
        make_model(setup, BERT4Rec, transform="mask_itemseq")
        make_model(setup, BERT4Rec, transform="mask_itemseq")
    (record,) = caplog.records
    assert "ignores the dataloader's masking" in record.getMessage()


@pytest.mark.parametrize("regime", ["users", "interactions"])
def test_runs_through_bench_run(tiny_sequences: Path, regime: str):
    out = tiny_sequences / "out"
    api.run(
        ["BERT4Rec"],
        "tiny",
        epochs=1,
        settings={**TINY, "n_heads": 2, "train_regime": regime},
        out=out,
        data_dir=tiny_sequences,
    )
    result = json.loads((out / "runs" / "tiny" / "BERT4Rec" / "seed-0.json").read_text())
    assert result["status"] == "ok", result.get("error")
    assert result["source"] == "recbole_ext" and result["config"]["transform"] is None
    assert result["config"]["train_regime"] == regime
    (epoch,) = result["epochs"]
    assert math.isfinite(epoch["train_loss"]) and epoch["valid_score"] is not None
    # 40 users of at most 10 training items: one window each, or every prefix.
    samples = result["data"]["train_samples"]
    assert samples == 40 if regime == "users" else samples > 40
