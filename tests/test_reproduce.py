"""``bench reproduce``: a stored result re-run from its record, metrics compared exactly."""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench import api, cli, configs, contract
from bench.reproduce import prepared_from_record, reproduce
from tests.helpers import TINY, write_inter


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """40 users' sequences of 6-12 of 30 items, as ``<data>/tiny/tiny.inter``."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    rows = []
    for user in range(1, 41):
        items = rng.choice(np.arange(1, 31), size=rng.integers(6, 13), replace=False)
        rows += [(user, int(item), float(t)) for t, item in enumerate(items)]
    write_inter(folder, "tiny", rows)
    return folder


@pytest.fixture(scope="module")
def stored(data) -> Path:
    """A tiny SASRec run (two epochs, with dropout: every random generator matters)."""
    out = data.parent / "out"
    summary = api.run(
        ["SASRec"], "tiny", epochs=2, settings=dict(TINY), data_dir=data, out=out, device="cpu"
    )
    (result,) = summary.results
    assert result.ok, result.error
    return contract.run_path(out, "tiny", "SASRec", 0)


def _main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["bench", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code, capsys.readouterr()


def test_a_stored_run_reproduces_exactly_on_the_cpu(stored, monkeypatch, capsys):
    code, out = _main(monkeypatch, capsys, "reproduce", str(stored))
    assert code in (0, None), out.err
    assert "reproduced: all 24 test and validation metrics match exactly" in out.out
    assert "note:" not in out.out  # same config hash, same data files


def test_the_record_not_todays_config_files_says_what_to_run(stored, tmp_path, monkeypatch):
    """Defaults changed since the run (here SASRec's dropout and depth) are no difference."""
    tree = tmp_path / "configs"
    shutil.copytree(configs.PACKAGE_CONFIG_DIR, tree)
    with open(tree / "models" / "SASRec.yaml", "a", encoding="utf-8") as file:
        file.write("hidden_dropout_prob: 0.1  # (float) changed\nn_layers: 3  # (int) changed\n")
    monkeypatch.setenv(configs.CONFIG_DIR_ENV, str(tree))
    recorded = contract.read_result(stored)
    prepared = prepared_from_record(recorded)
    assert prepared.config_dict["hidden_dropout_prob"] == recorded.config["hidden_dropout_prob"]
    assert prepared.config_dict["n_layers"] == TINY["n_layers"] == 1
    assert prepared.settings.threads == recorded.config["threads"]
    assert "MODEL_TYPE" not in prepared.config_dict and "local_rank" not in prepared.config_dict
    assert reproduce(stored).matched


def test_a_differing_metric_is_named_and_exits_1(stored, tmp_path, monkeypatch, capsys):
    recorded = contract.read_result(stored)
    test = {**recorded.test, "ndcg@10": recorded.test["ndcg@10"] + 1e-12}
    changed = contract.write_result(tmp_path, dataclasses.replace(recorded, test=test))
    code, out = _main(monkeypatch, capsys, "reproduce", str(changed))
    assert code == 1
    assert "not reproduced: 1 of 24 metric(s) differ (exactly):" in out.out
    assert f"test ndcg@10: recorded {test['ndcg@10']!r}, reproduced" in out.out
    # Within a tolerance it counts as reproduced.
    assert reproduce(changed, tolerance=1e-9).matched


def test_the_first_epoch_that_differs_is_named_and_the_rerun_saved(
    stored, tmp_path, monkeypatch, capsys
):
    """The records agree epoch by epoch (so a match names no divergence); a record whose
    second epoch's validation score was altered is named at that epoch, though its metrics
    match, and --save keeps the re-run's record for a closer look."""
    assert reproduce(stored).first_divergence is None
    recorded = contract.read_result(stored)
    epochs = list(recorded.epochs)
    epochs[1] = dataclasses.replace(epochs[1], valid_score=epochs[1].valid_score + 1e-12)
    changed = contract.write_result(tmp_path / "out", dataclasses.replace(recorded, epochs=epochs))
    saved = tmp_path / "again" / "rerun.json"
    code, out = _main(monkeypatch, capsys, "reproduce", str(changed), "--save", str(saved))
    assert code in (0, None), out.err  # the metrics themselves still match
    assert "reproduced: all 24" in out.out
    assert "first difference in the epoch records: training epoch 1: validation score" in out.out
    assert f"re-run's record: {saved}" in out.out
    again = contract.read_result(saved)
    assert [e.train_loss for e in again.epochs] == [e.train_loss for e in recorded.epochs]
    assert again.command == f"bench reproduce {changed}"
    # The saved re-run is a result of its own: it reproduces in turn.
    assert reproduce(saved).matched


def test_a_record_from_before_fast_dropout_reruns_with_pytorchs_dropout(stored, tmp_path):
    """A record without the key (made before it existed) is re-run with PyTorch's dropout: the
    stored run, made with fast_dropout, differs from that re-run from its first epoch on."""
    recorded = contract.read_result(stored)
    assert recorded.config["fast_dropout"] is True
    config = {k: v for k, v in recorded.config.items() if k != "fast_dropout"}
    older = contract.write_result(tmp_path, dataclasses.replace(recorded, config=config))
    done = reproduce(older)
    assert "fast_dropout" not in done.again.config  # as asked: unset, so PyTorch's
    assert done.first_divergence.startswith("training epoch 0: training loss")


def test_a_run_recorded_on_another_processor_says_so(stored, tmp_path):
    # Beauty's branch-1 run, recorded on a Xeon and run again on an AMD EPYC: its 12 test
    # metrics matched, 6 validation ones differed in one user of 22,363.
    recorded = contract.read_result(stored)
    elsewhere = dataclasses.replace(
        recorded, environment=dataclasses.replace(recorded.environment, device_name="Other CPU")
    )
    done = reproduce(contract.write_result(tmp_path, elsewhere))
    assert done.matched
    (note,) = [n for n in done.notes if "recorded on Other CPU" in n]
    assert "--tolerance" in note


def test_the_data_can_come_from_another_folder(stored, data, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(data / "tiny", moved / "tiny")
    done = reproduce(stored, data_dir=moved)
    assert done.matched and done.again.data.path == str(moved.resolve() / "tiny")
    assert done.again.data.source == "--data-dir"
    (moved / "tiny" / "tiny.inter").write_text(
        (moved / "tiny" / "tiny.inter").read_text().replace("\t1.0\n", "\t1.5\n", 1)
    )
    assert any("differ from the ones the run read" in n for n in reproduce(stored, moved).notes)


def test_a_run_its_budget_cut_is_replayed_to_the_same_point(data, tmp_path, monkeypatch):
    """A clock that ticks once per reading cuts the recorded run part-way (as a busy machine
    would); the re-run, on the real clock, would never reach that cap: it matches only by
    stopping where the record says."""
    settings = {**TINY, "train_regime": "interactions", "train_batch_size": 32}
    settings["time_budget_s"] = 18.0  # ticks: cuts the second epoch part-way (today, 4 batches)
    with monkeypatch.context() as patched:
        ticks = itertools.count(1000.0)
        patched.setattr(time, "perf_counter", lambda: float(next(ticks)))
        summary = api.run(
            ["SASRec"], "tiny", epochs=4, settings=settings, data_dir=data, out=tmp_path
        )
    (recorded,) = summary.results
    assert recorded.stop_reason == "time_budget" and len(recorded.epochs) < 4
    done = reproduce(contract.run_path(tmp_path, "tiny", "SASRec", 0))
    assert done.matched, done.differences
    assert done.again.stop_reason == "time_budget"
    assert [e.cut_after_batches for e in done.again.epochs] == [
        e.cut_after_batches for e in recorded.epochs
    ]
    assert any(n.startswith("replayed the recorded time-budget cut") for n in done.notes)
