"""S3Rec without item attributes (MIP and SP only) and with them (exactly RecBole's)."""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender.s3rec import S3Rec as RecBoleS3Rec

import recbole_ext  # noqa: F401  (compat patches before any RecBole use)
from bench import api, results
from recbole_ext.models import s3rec
from recbole_ext.models.s3rec import S3Rec
from tests.helpers import TINY, write_inter

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
        assert result["status"] == "ok", result.get("error")
        assert len(result["pretrain_epochs"]) == 1
        assert result["stopped_by_budget"] is True and len(result["epochs"]) == 1
    paths = {r["config"]["pre_model_path"] for r in summary.results}
    assert len(paths) == 2 and len({r["config_hash"] for r in summary.results}) == 1


def test_resume_skips_a_finished_two_stage_run(tiny_sequences):
    """The result records what the run was asked (its whole budget, train_stage pretrain), not
    what fine-tuning was configured with, or --resume would run every S3Rec again."""
    settings = {**TINY, "time_budget_s": 1000.0, "pretrain_epochs": 1}
    kwargs = dict(data_dir=tiny_sequences, out=tiny_sequences / "o", epochs=1, settings=settings)
    (result,) = api.run(["S3Rec"], "tiny", seeds=(0,), **kwargs).results
    assert result["status"] == "ok", result.get("error")
    assert result["config"]["time_budget_s"] == 1000.0
    assert result["config"]["train_stage"] == "pretrain"
    result["stopped_by_budget"] = True  # as a real run's: its cap is compared too
    results.write_result(tiny_sequences / "o", result)
    again = api.run(["S3Rec"], "tiny", seeds=(0,), resume=True, **kwargs)
    assert again.skipped == [("S3Rec", 0)] and not again.results
