"""S3Rec without item attributes (MIP and SP only) and with them (exactly RecBole's); both
stages on whole sequences (``train_regime: users``) and RecBole's per-prefix samples."""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.interaction import Interaction
from recbole.model.sequential_recommender.s3rec import S3Rec as RecBoleS3Rec

from bench import api, contract
from recbole_ext.data import accepts_trimmed_batches
from recbole_ext.layers import next_item
from recbole_ext.layers.whole_sequence import window_with_next_item
from recbole_ext.models import s3rec
from recbole_ext.models.s3rec import S3Rec
from tests.helpers import TINY, write_inter
from tests.models.test_whole_sequence_bert import _longest_prefix_rows

N_USERS, N_ITEMS = 12, 20
CLASSES = ["a", "b", "c", "d"]


def _write_data(folder: Path, name: str, with_items: bool) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for user in range(1, N_USERS + 1):
        items = rng.choice(np.arange(1, N_ITEMS + 1), size=int(rng.integers(6, 11)), replace=False)
        rows += [(user, int(item), float(t)) for t, item in enumerate(items)]
    write_inter(folder, name, rows)
    if with_items:
        # class:token_seq, one to three classes an item, as RecBole's S3Rec expects.
        lines = ["item_id:token\tclass:token_seq"]
        for item in range(1, N_ITEMS + 1):
            k = 1 + item % 3
            lines.append(f"{item}\t{' '.join(CLASSES[(item + j) % 4] for j in range(k))}")
        (folder / name / f"{name}.item").write_text("\n".join(lines) + "\n")


def _build(tmp_path: Path, with_items: bool, **extra: object):
    name = "attrs" if with_items else "plain"
    _write_data(tmp_path, name, with_items)
    load_col: dict = {"inter": ["user_id", "item_id", "timestamp"]}
    if with_items:
        load_col["item"] = ["item_id", "class"]
    settings = {
        "data_path": str(tmp_path),
        "checkpoint_dir": str(tmp_path / "ck"),
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
        "load_col": load_col,
        "MAX_ITEM_LIST_LENGTH": 8,
        "hidden_size": 8,
        "inner_size": 16,
        "n_layers": 1,
        "n_heads": 2,
        "train_neg_sample_args": None,
        "train_batch_size": 64,
        "show_progress": False,
        "seed": 0,
        **extra,
    }
    config = Config(model=S3Rec, dataset=name, config_dict=settings)
    dataset = create_dataset(config)
    train, _, _ = data_preparation(config, dataset)
    return config, train


def _batch(train):
    return next(iter(train))


@pytest.fixture(autouse=True)
def _fresh_warnings():
    s3rec._WARNED.clear()
    yield
    s3rec._WARNED.clear()


def test_without_attributes_pretrains_with_mip_and_sp_only(tmp_path, monkeypatch):
    config, train = _build(tmp_path, with_items=False)
    model = S3Rec(config, train._dataset)
    assert not model.use_attributes
    assert model.aap_weight == 0 and model.map_weight == 0
    # No attribute parameters at all: the AAP and MAP heads and the attribute embedding.
    names = {name.split(".")[0] for name, _ in model.named_parameters()}
    assert not names & {"feature_embedding", "aap_norm", "map_norm"}

    def forbidden(*args, **kwargs):
        raise AssertionError("an attribute objective was computed")

    monkeypatch.setattr(model, "_associated_attribute_prediction", forbidden)
    monkeypatch.setattr(model, "_masked_attribute_prediction", forbidden)
    monkeypatch.setattr(RecBoleS3Rec, "reconstruct_pretrain_data", forbidden)

    loss = model.calculate_loss(_batch(train))
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.item_embedding.weight.grad.abs().sum() > 0
    terms = model.last_loss_terms
    assert set(terms) == {"mip", "sp"}
    expected = model.mip_weight * terms["mip"] + model.sp_weight * terms["sp"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_missing_attributes_warn_once(tmp_path, caplog):
    config, train = _build(tmp_path, with_items=False)
    with caplog.at_level(logging.WARNING, logger="recbole_ext.models.s3rec"):
        S3Rec(config, train._dataset)
        S3Rec(config, train._dataset)
    warnings = [r for r in caplog.records if "no item attribute field 'class'" in r.getMessage()]
    assert len(warnings) == 1
    assert "AAP and MAP" in warnings[0].getMessage()


def test_with_attributes_it_is_recboles_s3rec(tmp_path, caplog):
    config, train = _build(tmp_path, with_items=True)
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="recbole_ext.models.s3rec"):
        ours = S3Rec(config, train._dataset)
    assert ours.use_attributes and not caplog.records
    assert ours.aap_weight == 0.2 and ours.map_weight == 1.0
    torch.manual_seed(0)
    theirs = RecBoleS3Rec(config, train._dataset)
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert ours_state.keys() == theirs_state.keys()
    assert all(torch.equal(ours_state[k], theirs_state[k]) for k in ours_state)

    batch = _batch(train)
    losses = []
    for model in (ours, theirs):
        random.seed(1)  # RecBole draws masks and segments with `random`
        torch.manual_seed(1)  # and dropout with torch
        losses.append(model.calculate_loss(batch))
    assert torch.equal(losses[0], losses[1])
    terms = ours.last_loss_terms
    assert set(terms) == {"aap", "mip", "map", "sp"} and terms["aap"] > 0 and terms["map"] > 0
    weighted = 0.2 * terms["aap"] + terms["mip"] + terms["map"] + 0.5 * terms["sp"]
    assert losses[0].item() == pytest.approx(weighted.item(), rel=1e-6)


def test_pretraining_batch_without_attributes(tmp_path):
    config, train = _build(tmp_path, with_items=False, mask_ratio=0.5)
    model = S3Rec(config, train._dataset)
    mask = model.mask_token
    item_seq = torch.tensor(
        [[1, 2, 3, 4, 5, 6, 0, 0], [7, 8, 0, 0, 0, 0, 0, 0], [9, 0, 0, 0, 0, 0, 0, 0]]
    )
    lengths = torch.tensor([6, 2, 1])
    pool = [1, 2, 3, 4, 5, 6, 7, 8, 9]  # the batch's items, row after row
    torch.manual_seed(0)
    masked_share = []
    for _ in range(200):
        features, masked, pos, neg, seg_masked, seg_pos, seg_neg = model.reconstruct_pretrain_data(
            item_seq, lengths
        )
        assert features is None
        for row, length in enumerate(lengths.tolist()):
            pad, real = slice(0, 8 - length), slice(8 - length, 8)
            items = item_seq[row, :length]
            for tensor in (masked, pos, neg, seg_masked, seg_pos, seg_neg):
                assert (tensor[row, pad] == 0).all()  # padded on the left, as RecBole's
            assert torch.equal(pos[row, real], items)
            is_masked = masked[row, real] == mask
            masked_share.append(is_masked.float().mean().item())
            assert torch.equal(masked[row, real][~is_masked], items[~is_masked])
            assert torch.equal(neg[row, real][~is_masked], items[~is_masked])
            for negative in neg[row, real][is_masked].tolist():
                assert 1 <= negative < mask and negative not in items.tolist()

            in_segment = seg_masked[row, real] == mask
            if length < 2:
                assert not in_segment.any()
                assert torch.equal(seg_pos[row, real], items)
                assert torch.equal(seg_neg[row, real], items)
                continue
            where = in_segment.nonzero().flatten().tolist()
            assert 1 <= len(where) <= length // 2
            assert where == list(range(where[0], where[0] + len(where)))  # one contiguous run
            assert torch.equal(seg_masked[row, real][~in_segment], items[~in_segment])
            assert torch.equal(seg_pos[row, real][in_segment], items[in_segment])
            assert (seg_pos[row, real][~in_segment] == mask).all()
            assert (seg_neg[row, real][~in_segment] == mask).all()
            negative = seg_neg[row, real][in_segment].tolist()
            starts = [i for i in range(len(pool)) if pool[i : i + len(negative)] == negative]
            assert starts, "the negative segment is a slice of the batch's items"
    # Rows hold 9 items; each is masked with probability 0.5.
    assert np.mean(masked_share) == pytest.approx(0.5, abs=0.05)


def test_fine_tuning_loads_the_pretrained_weights(tmp_path):
    config, train = _build(tmp_path, with_items=False)
    pretrained = S3Rec(config, train._dataset)
    path = tmp_path / "pretrained.pth"
    torch.save({"state_dict": pretrained.state_dict()}, path)  # what the harness saves

    config, train = _build(tmp_path, with_items=False, train_stage="finetune", pre_model_path=path)
    model = S3Rec(config, train._dataset)
    for name, value in pretrained.state_dict().items():
        assert torch.equal(model.state_dict()[name], value)
    batch = _batch(train)
    loss = model.calculate_loss(batch)
    assert math.isfinite(loss.item())
    scores = model.full_sort_predict(batch)
    assert scores.shape == (len(batch), train._dataset.item_num)


def test_time_budget_is_shared_by_pretraining_and_fine_tuning(tiny_sequences):
    """A budget smaller than one epoch: each stage runs one epoch and stops; the run succeeds.
    Its seeds share one config hash: the pre-trained weights' path is where, not what."""
    settings = {**TINY, "time_budget_s": 1e-6, "pretrain_epochs": 5, "stopping_step": 10}
    summary = api.run(
        ["S3Rec"],
        "tiny",
        seeds=(0, 1),
        data_dir=tiny_sequences,
        out=tiny_sequences / "o",
        epochs=5,
        settings=settings,
    )
    for result in summary.results:
        assert result.ok, result.error
        assert len(result.pretrain_epochs) == 1
        assert result.stopped_by_budget is True and len(result.epochs) == 1
    paths = {r.config["pre_model_path"] for r in summary.results}
    assert len(paths) == 2 and len({r.config_hash for r in summary.results}) == 1


def test_resume_skips_a_finished_two_stage_run(tiny_sequences):
    """The result records what the run was asked (its whole budget, train_stage pretrain), not
    what fine-tuning was configured with, or --resume would run every S3Rec again."""
    settings = {**TINY, "time_budget_s": 1000.0, "pretrain_epochs": 1}
    kwargs = dict(data_dir=tiny_sequences, out=tiny_sequences / "o", epochs=1, settings=settings)
    (result,) = api.run(["S3Rec"], "tiny", seeds=(0,), **kwargs).results
    assert result.ok, result.error
    assert result.config["time_budget_s"] == 1000.0
    assert result.config["train_stage"] == "pretrain"
    result.stop_reason = "time_budget"  # as a real run's: its cap is compared too
    contract.write_result(tiny_sequences / "o", result)
    again = api.run(["S3Rec"], "tiny", seeds=(0,), resume=True, **kwargs)
    assert again.skipped == [("S3Rec", 0)] and not again.results


def test_a_run_resumed_after_its_pretraining_counts_that_stage_s_seconds(tiny_sequences):
    """Pre-training ended in an earlier sitting and fine-tuning was cut: the resumed run's
    training time holds both stages' earlier seconds, not fine-tuning's alone."""
    out = tiny_sequences / "o"
    settings = {**TINY, "pretrain_epochs": 5, "stopping_step": 10}
    kwargs = dict(data_dir=tiny_sequences, out=out, epochs=3, seeds=(0,))
    cut = {**settings, "time_budget_s": 1e-6}  # one epoch of each stage, then the budget
    (first,) = api.run(["S3Rec"], "tiny", settings=cut, **kwargs).results
    assert first.ok and first.stopped_by_budget, first.error
    (folder,) = (out / "checkpoints" / "tiny" / "S3Rec").iterdir()
    stage = torch.load(folder / "S3Rec-pretrained.pth", weights_only=True)
    fine_tuning = torch.load(folder / "last.pth", weights_only=True)
    assert stage["elapsed_seconds"] > 0 and fine_tuning["elapsed_seconds"] > 0

    (again,) = api.run(["S3Rec"], "tiny", settings=settings, resume=True, **kwargs).results
    assert again.ok and again.timing.resumed_from_epoch == 1, again.error
    assert len(again.pretrain_epochs) == 1  # a finished stage is reused as it is
    earlier = stage["elapsed_seconds"] + fine_tuning["elapsed_seconds"]
    assert again.timing.earlier_train_seconds == pytest.approx(earlier)


# --- whole sequences (train_regime: users) in both stages ---


def _fine_tuning(tmp_path: Path, with_items: bool, **extra: object):
    """(config, train loader, model) of the fine-tuning stage, from saved initial weights."""
    config, train = _build(tmp_path, with_items=with_items)
    path = tmp_path / "pretrained.pth"
    torch.save({"state_dict": S3Rec(config, train._dataset).state_dict()}, path)
    config, train = _build(
        tmp_path, with_items, train_stage="finetune", pre_model_path=str(path), **extra
    )
    return config, train, S3Rec(config, train._dataset).eval()


def _with_items(batch: Interaction, model: S3Rec, item_seq: torch.Tensor) -> Interaction:
    changed = Interaction(dict(batch.interaction))
    changed[model.ITEM_SEQ] = item_seq
    return changed


def _recording(monkeypatch) -> dict:
    """Capture what the model hands to next_item_loss."""
    seen: dict = {}

    def recording_loss(hidden, targets, weight, kind="ce", negatives=0):
        seen.update(hidden=hidden, targets=targets, weight=weight)
        return next_item.next_item_loss(hidden, targets, weight, kind, negatives)

    monkeypatch.setattr(s3rec, "next_item_loss", recording_loss)
    return seen


def test_whole_sequence_fine_tuning_is_the_mean_of_recboles_prefix_losses(tmp_path):
    config, train, ours = _fine_tuning(tmp_path, with_items=True, train_regime="users")
    theirs = RecBoleS3Rec(config, train._dataset).eval()  # the same saved weights
    total, count = 0.0, 0
    for batch in train:  # RecBole's per-prefix samples, every one
        total += theirs.calculate_loss(batch).item() * len(batch)
        count += len(batch)
    rows = _longest_prefix_rows(train._dataset)
    assert int(rows[ours.ITEM_SEQ_LEN].sum()) == count  # the same targets
    assert ours.calculate_loss(rows).item() == pytest.approx(total / count, rel=1e-5)
    # train_regime interactions: RecBole's own fine-tuning loss.
    ours.whole_sequence = False
    batch = _batch(train)
    assert torch.equal(ours.calculate_loss(batch), theirs.calculate_loss(batch))


def test_whole_sequence_fine_tuning_is_causal(tmp_path, monkeypatch):
    _, train, model = _fine_tuning(tmp_path, with_items=False, train_regime="users")
    seen = _recording(monkeypatch)
    rows = _longest_prefix_rows(train._dataset)
    item_seq, item_len = rows[model.ITEM_SEQ], rows[model.ITEM_SEQ_LEN]
    t = 2
    positions = torch.arange(item_seq.shape[1])
    later = (positions > t) & (positions < item_len.unsqueeze(1))
    changed = _with_items(rows, model, torch.where(later, item_seq % N_ITEMS + 1, item_seq))
    changed[model.POS_ITEM_ID] = rows[model.POS_ITEM_ID] % N_ITEMS + 1
    model.calculate_loss(rows)
    before = seen["hidden"]
    model.calculate_loss(changed)
    after = seen["hidden"]
    real = positions[: int(item_len.max())] < item_len.unsqueeze(1)
    up_to_t = (positions[: real.shape[1]] <= t).expand_as(real)[real]
    assert torch.allclose(before[up_to_t], after[up_to_t], atol=1e-6, rtol=0)
    assert not torch.allclose(before[~up_to_t], after[~up_to_t])  # the change reached later ones


def test_trimmed_batches_give_the_same_losses(tmp_path):
    assert accepts_trimmed_batches(S3Rec)  # so the harness trims its batches
    _, train, model = _fine_tuning(tmp_path, with_items=False, train_regime="users")
    rows = _longest_prefix_rows(train._dataset)
    item_seq, item_len = rows[model.ITEM_SEQ], rows[model.ITEM_SEQ_LEN]
    trimmed = _with_items(rows, model, item_seq[:, : int(item_len.max())])
    assert trimmed[model.ITEM_SEQ].shape[1] < item_seq.shape[1]
    full_loss = model.calculate_loss(rows).item()
    assert model.calculate_loss(trimmed).item() == pytest.approx(full_loss, rel=1e-6)
    # Right padding and causal attention: padding columns change no real position's output.
    narrow = trimmed[model.ITEM_SEQ]
    wide = torch.nn.functional.pad(narrow, (0, model.max_seq_length - narrow.shape[1]))
    out_narrow = model.forward(narrow, bidirectional=False)
    out_wide = model.forward(wide, bidirectional=False)[:, : narrow.shape[1]]
    real = narrow > 0
    assert torch.allclose(out_narrow[real], out_wide[real], atol=1e-6, rtol=0)

    # Pre-training, left-padded: a narrow batch keeps the positions of the full-width one.
    config, train = _build(tmp_path, with_items=False, MAX_ITEM_LIST_LENGTH=12)
    model = S3Rec(config, train._dataset).eval()
    with torch.no_grad():  # positions that matter (the initial ones are nearly 0)
        model.position_embedding.weight.normal_()
    rows = _longest_prefix_rows(train._dataset)
    item_seq, item_len = rows[model.ITEM_SEQ], rows[model.ITEM_SEQ_LEN]
    sequence, length = window_with_next_item(item_seq, item_len, rows[model.POS_ITEM_ID], 12)
    torch.manual_seed(0)
    _, *narrow_data = model.reconstruct_pretrain_data(sequence, length)
    assert narrow_data[0].shape[1] < 12
    full_data = [torch.nn.functional.pad(x, (12 - x.shape[1], 0)) for x in narrow_data]
    narrow_loss = model.pretrain(None, *narrow_data).item()
    assert narrow_loss == pytest.approx(model.pretrain(None, *full_data).item(), rel=1e-6)
    # The encoder's outputs, where the positions show: the narrow batch's first column is
    # position 12 - width, not 0.
    masked, first = narrow_data[0], 12 - narrow_data[0].shape[1]
    real = masked > 0
    full_output = model.forward(full_data[0])[:, first:][real]
    narrow_output = model.forward(masked, first_position=first)[real]
    assert torch.allclose(narrow_output, full_output, atol=1e-5, rtol=0)
    assert not torch.allclose(model.forward(masked)[real], full_output, atol=1e-2, rtol=0)
    # Through calculate_loss: a full-width batch and the trimmed one, from the same seed.
    for regime in (True, False):
        model.whole_sequence = regime
        torch.manual_seed(1)
        full_loss = model.calculate_loss(rows).item()
        torch.manual_seed(1)
        trimmed = _with_items(rows, model, item_seq[:, : int(item_len.max())])
        assert model.calculate_loss(trimmed).item() == pytest.approx(full_loss, rel=1e-6)


def test_pretraining_on_whole_sequences_includes_the_next_item(tmp_path, monkeypatch):
    config, train = _build(tmp_path, with_items=False, train_regime="users")
    model = S3Rec(config, train._dataset)
    assert model.whole_sequence
    seen = {}
    reconstruct = model.reconstruct_pretrain_data

    def recording(item_seq, item_len):
        seen.update(item_seq=item_seq, item_len=item_len)
        return reconstruct(item_seq, item_len)

    monkeypatch.setattr(model, "reconstruct_pretrain_data", recording)
    batch = _batch(train)
    item_seq, item_len = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    pos_items = batch[model.POS_ITEM_ID]
    loss = model.calculate_loss(batch)
    assert torch.isfinite(loss) and set(model.last_loss_terms) == {"mip", "sp"}
    # Window + next item; a full window (8 items) drops its oldest to stay within 8 positions.
    assert torch.equal(seen["item_len"], torch.clamp(item_len + 1, max=8))
    last = seen["item_seq"].gather(1, (seen["item_len"] - 1).unsqueeze(1)).squeeze(1)
    assert torch.equal(last, pos_items)
    # RecBole's regime: the window alone.
    model.whole_sequence = False
    model.calculate_loss(batch)
    assert torch.equal(seen["item_len"], item_len)
    assert torch.equal(seen["item_seq"], item_seq[:, : int(item_len.max())])


def test_sampled_negatives_change_the_fine_tuning_loss_and_train(tmp_path, monkeypatch):
    _, train, full = _fine_tuning(tmp_path, with_items=False, train_regime="users")
    model = _fine_tuning(tmp_path, False, train_regime="users", sampled_negatives=5)[2]
    rows = _longest_prefix_rows(train._dataset)
    before = full.calculate_loss(rows).item()
    torch.manual_seed(0)
    assert model.calculate_loss(rows).item() != pytest.approx(before, rel=1e-3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    torch.manual_seed(0)  # the negatives and dropout
    for _ in range(20):
        optimizer.zero_grad()
        model.calculate_loss(rows).backward()
        optimizer.step()
    full.load_state_dict(model.state_dict())
    assert full.calculate_loss(rows).item() < before - 0.1
    # Negatives are drawn among the items, never the mask token (the table's last row).
    seen = _recording(monkeypatch)
    model.calculate_loss(rows)
    assert seen["weight"].shape[0] == model.mask_token
    full.calculate_loss(rows)
    assert seen["weight"].shape[0] == model.mask_token + 1  # RecBole's full softmax: every row
    # RecBole's regime: the last position's output, scored by the sampled softmax.
    model.whole_sequence = full.whole_sequence = False
    batch = _batch(train)
    sampled = model.calculate_loss(batch)
    assert torch.equal(seen["targets"], batch[model.POS_ITEM_ID])
    assert sampled.item() != pytest.approx(full.calculate_loss(batch).item(), rel=1e-3)
    with pytest.raises(ValueError, match="needs loss_type CE"):
        _fine_tuning(tmp_path, False, loss_type="BPR", sampled_negatives=3)


def test_whole_sequence_fine_tuning_with_bpr(tmp_path):
    _, train, model = _fine_tuning(tmp_path, False, train_regime="users", loss_type="BPR")
    torch.manual_seed(0)
    loss = model.calculate_loss(_longest_prefix_rows(train._dataset))
    # Scores start near 0: BPR's -log sigmoid(0), not a 22-way softmax's log 22.
    assert loss.item() == pytest.approx(math.log(2), abs=0.05)


@pytest.mark.parametrize("regime", ["users", "interactions"])
def test_both_stages_run_through_bench_run(tiny_sequences, regime):
    settings = {**TINY, "pretrain_epochs": 1, "train_regime": regime}
    out = tiny_sequences / "o"
    api.run(["S3Rec"], "tiny", epochs=1, settings=settings, out=out, data_dir=tiny_sequences)
    result = json.loads((out / "runs" / "tiny" / "S3Rec" / "seed-0.json").read_text())
    assert result["status"] == "ok", result.get("error")
    assert result["config"]["train_regime"] == regime
    (pretrain,) = result["pretrain_epochs"]
    (epoch,) = result["epochs"]
    assert math.isfinite(pretrain["train_loss"]) and math.isfinite(epoch["train_loss"])
    assert set(pretrain["loss_terms"]) == {"mip", "sp"} and epoch["valid_score"] is not None
    samples = result["data"]["train_samples"]
    assert samples == 40 if regime == "users" else samples > 40
