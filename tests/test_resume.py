"""Runs that resume mid-training: a run killed with SIGKILL part-way through an epoch continues
from its last checkpoint (inside that epoch where ``checkpoint_every_s`` took one, else its last
finished epoch) and ends exactly as the uninterrupted run (same seed, CPU)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bench.checkpoint_parts import split_large
from tests.helpers import ROOT, write_inter

SETTINGS = {"epochs": 4, "stopping_step": 10, "train_batch_size": 16, "threads": 1}

# A checkpoint after every batch: the killed runs resume inside the epoch they were killed in.
EVERY_BATCH = {"checkpoint_every_s": 1e-9}

# case: (model, extra settings of the killed run, the batch its resumed run starts from):
# sequential with in-loader negative sampling (NumPy's generator) and length-bucketed batches,
# checkpointed at epoch ends only and inside epochs; a general model on RecBole's own shuffling;
# a sequential model with dropout (torch's generator) and semantic positives; a two-stage model
# killed in its pre-training; an autoencoder with two optimizers.
CASES = {
    "FPMC-epochs": ("FPMC", {"embedding_size": 8}, None),
    "FPMC": ("FPMC", {"embedding_size": 8, **EVERY_BATCH}, 3),
    "BPR": ("BPR", {"embedding_size": 8, **EVERY_BATCH}, 3),
    "SLIME4Rec": (
        "SLIME4Rec",
        {"hidden_size": 8, "inner_size": 16, "contrast": "us_x", **EVERY_BATCH},
        3,
    ),
    "S3Rec-pretraining": (
        "S3Rec",
        {
            "hidden_size": 8,
            "inner_size": 16,
            "pretrain_epochs": 4,
            "epochs": 2,
            "train_batch_size": 8,
        }
        | EVERY_BATCH,
        None,  # the fine-tuning stage starts from its own first epoch
    ),
    # RecBole's own trainer with two optimizers (encoder, decoder) and a prior it updates: its
    # epoch loop is its own, so it checkpoints at epoch ends only, whatever it is asked.
    # Its loader batches users (40 here): 8 a batch gives the kill after batch 3 room.
    "RecVAE": (
        "RecVAE",
        {"hidden_dimension": 8, "latent_dimension": 4, "train_batch_size": 8, **EVERY_BATCH},
        None,
    ),
}

_RUN = """
import json, os, signal, sys
from pathlib import Path
from bench import api, plans
from recbole_ext import training

model, out, data, kill_epoch, kill_batch, resume, settings, kill_signal, kills, mode = sys.argv[1:]
kill_epoch, kill_batch, kill_signal, kills = map(int, sys.argv[4:6] + sys.argv[8:10])
# Ctrl-C raises KeyboardInterrupt, as in a terminal (a child of a background job inherits
# SIGINT ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)

if kill_epoch >= 0:
    original = training.RecordingMixin._train_epoch

    class Dying:
        # The training loader, signalling the process before it yields batch ``kill_batch``.
        def __init__(self, inner):
            self.inner = inner
        def __iter__(self):
            for index, batch in enumerate(self.inner):
                if index == kill_batch:
                    for _ in range(kills):
                        os.kill(os.getpid(), kill_signal)
                yield batch
        def __len__(self):
            return len(self.inner)
        def __getattr__(self, name):
            return getattr(self.inner, name)

    def killing(self, train_data, epoch_idx, *args, **kwargs):
        if epoch_idx == kill_epoch:
            train_data = Dying(train_data)
        return original(self, train_data, epoch_idx, *args, **kwargs)

    training.RecordingMixin._train_epoch = killing

settings = json.loads(settings)
try:
    if mode == "plan":  # one run at a time: in the plan's own process
        job = {"dataset": "tiny", "models": [model], "seeds": [0], "budget_s": 0}
        plan = Path(out).parent / "plan.json"  # JSON is YAML
        plan.write_text(json.dumps({"jobs": [{**job, "set": settings}]}))
        plans.execute(plan, workers=1, threads=settings.get("threads", 0), out=out,
                      device="cpu", data_dir=data, resume=resume == "1", echo=lambda _: None)
    else:
        summary = api.run([model], "tiny", settings=settings, out=out, data_dir=data,
                          device="cpu", resume=resume == "1")
        assert not summary.failed, summary.failed[0].error.traceback
except KeyboardInterrupt:
    sys.exit(INTERRUPTED)
""".replace("INTERRUPTED", "3")
INTERRUPTED = 3  # the exit of a run stopped by KeyboardInterrupt (Ctrl-C, a plan's stop)


def _start(
    model: str,
    out: Path,
    data: Path,
    kill: tuple[int, int] | None,
    resume: bool,
    extra,
    kill_signal: int = signal.SIGKILL,
    kills: int = 1,
    mode: str = "run",
):
    """The run in a process of its own (one thread: two at once share a 2-core machine),
    sent ``kill_signal`` ``kills`` times before batch ``kill[1]`` of epoch ``kill[0]``; ``mode``
    ``run`` (``bench run``) or ``plan`` (a plan of that one run, ``--parallel 1``)."""
    script = textwrap.dedent(_RUN)
    kill_epoch, kill_batch = kill or (-1, -1)
    args = [model, str(out), str(data), str(kill_epoch), str(kill_batch), "1" if resume else "0"]
    args += [json.dumps({**SETTINGS, **extra}), str(int(kill_signal)), str(kills), mode]
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(*processes: subprocess.Popen) -> list[subprocess.CompletedProcess]:
    """Wait for each; on a timeout or an error none is left running."""
    try:
        outputs = [process.communicate(timeout=600) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [
        subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        for process, (stdout, stderr) in zip(processes, outputs, strict=True)
    ]


def _result(out: Path, model: str) -> dict:
    return json.loads((out / "runs" / "tiny" / model / "seed-0.json").read_text())


def _training_record(result: dict) -> list[tuple]:
    return [(e["epoch"], e["train_loss"], e["valid_score"]) for e in result["epochs"]]


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for user in range(1, 41):
        items = rng.choice(np.arange(1, 31), size=rng.integers(6, 13), replace=False)
        rows += [(user, int(item), float(t)) for t, item in enumerate(items)]
    write_inter(tmp_path / "data", "tiny", rows)
    return tmp_path / "data"


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_killed_run_resumes_to_the_uninterrupted_result(case: str, tmp_path: Path, tiny_data):
    model, extra, resumed_batch = CASES[case]
    out = tmp_path / "killed"
    # The uninterrupted run (no checkpoints inside epochs: they change nothing it computes) and
    # the one killed mid-epoch side by side: separate folders.
    plain = {k: v for k, v in extra.items() if k not in EVERY_BATCH}
    straight = _start(model, tmp_path / "straight", tiny_data, None, False, plain)
    killed = _start(model, out, tiny_data, (2, 3), False, extra)
    straight, killed = _finish(straight, killed)
    assert straight.returncode == 0, straight.stderr[-3000:]
    expected = _result(tmp_path / "straight", model)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (out / "runs" / "tiny" / model / "seed-0.json").exists()
    (folder,) = (out / "checkpoints" / "tiny" / model).iterdir()
    last = torch.load(
        folder / ("pretrain-last.pth" if model == "S3Rec" else "last.pth"), weights_only=True
    )
    inside = last.get("mid_epoch")
    if "checkpoint_every_s" in extra and model != "RecVAE":  # after batch 3 of epoch 2
        assert (last["epoch"], inside["epoch"], inside["batches"]) == (1, 2, 3)
    else:
        assert last["epoch"] == 1 and inside is None

    (resumed,) = _finish(_start(model, out, tiny_data, None, True, extra))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = _result(out, model)
    if model == "S3Rec":  # killed in pre-training: that stage continued, fine-tuning is new
        assert result["timing"]["resumed_from_epoch"] is None
        # The killed sitting's pre-training counts in the run's training time.
        assert result["timing"]["earlier_train_seconds"] == last["elapsed_seconds"] > 0
        assert _training_record(result) == _training_record(expected)
        pretraining = [(e["epoch"], e["train_loss"]) for e in result["pretrain_epochs"]]
        assert pretraining == [(e["epoch"], e["train_loss"]) for e in expected["pretrain_epochs"]]
    else:
        assert result["timing"]["resumed_from_epoch"] == 2  # continued, not started over
        assert result["timing"].get("resumed_from_batch") == resumed_batch
        assert result["timing"]["earlier_train_seconds"] > 0
    assert _training_record(result) == _training_record(expected)
    assert result["test"] == expected["test"] and result["valid"] == expected["valid"]
    assert result["best_epoch"] == expected["best_epoch"]
    assert result["stop_reason"] == expected["stop_reason"] == "epoch_limit"
    # A run that ended by its own stopping rule needs its checkpoints no more.
    assert not folder.exists()


# How a stop signal reaches a run, and how its process ends: SIGTERM to a run of its own (or a
# plan's worker process) ends it by that signal; Ctrl-C raises KeyboardInterrupt; a plan that
# runs its run in its own process (--parallel 1) turns its SIGTERM into KeyboardInterrupt.
STOPS = {
    "sigterm-run": ("run", signal.SIGTERM, -signal.SIGTERM),
    "ctrl-c-run": ("run", signal.SIGINT, INTERRUPTED),
    "sigterm-plan": ("plan", signal.SIGTERM, INTERRUPTED),
}


@pytest.mark.slow
@pytest.mark.parametrize("stop", list(STOPS))
def test_a_stop_signal_ends_a_run_after_its_batch_with_its_state_saved(
    stop: str, tmp_path: Path, tiny_data
):
    """The run trains the batch it was on, saves there and then stops as the signal asks;
    resumed, it ends as the uninterrupted run."""
    mode, kill_signal, exit_code = STOPS[stop]
    model, extra = "SLIME4Rec", {"hidden_size": 8, "inner_size": 16, "contrast": "us_x"}
    rare = {**extra, "checkpoint_every_s": 600}  # no periodic checkpoint in these tiny epochs
    out = tmp_path / "stopped"
    straight = _start(model, tmp_path / "straight", tiny_data, None, False, extra)
    stopped = _start(model, out, tiny_data, (2, 3), False, rare, kill_signal, mode=mode)
    straight, stopped = _finish(straight, stopped)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert stopped.returncode == exit_code, stopped.stderr[-3000:]
    # What the run says goes where its output goes: a plan's runs each have a log.
    logs = out / "plans" / "plan" / "logs"
    said = stopped.stderr if mode == "run" else "".join(f.read_text() for f in logs.iterdir())
    assert "stopping after this batch" in said
    (folder,) = (out / "checkpoints" / "tiny" / model).iterdir()
    inside = torch.load(folder / "last.pth", weights_only=True)["mid_epoch"]
    assert (inside["epoch"], inside["batches"]) == (2, 4)  # the batch it was given, then saved
    if mode == "plan":
        record = json.loads((out / "plans" / "plan.json").read_text())
        assert [run["status"] for run in record["runs"]] == ["interrupted"]

    (resumed,) = _finish(_start(model, out, tiny_data, None, True, rare, mode=mode))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result, expected = _result(out, model), _result(tmp_path / "straight", model)
    assert result["timing"]["resumed_from_batch"] == 4
    assert _training_record(result) == _training_record(expected)
    assert result["test"] == expected["test"]


@pytest.mark.slow
def test_a_second_ctrl_c_stops_a_run_at_once(tmp_path: Path, tiny_data):
    """Ctrl-C twice: the run stops where it is, its last checkpoint the epoch before."""
    extra = {"hidden_size": 8, "inner_size": 16, "checkpoint_every_s": 600}
    out = tmp_path / "stopped"
    twice = _start("SLIME4Rec", out, tiny_data, (2, 3), False, extra, signal.SIGINT, kills=2)
    (stopped,) = _finish(twice)
    assert stopped.returncode == INTERRUPTED, stopped.stderr[-3000:]
    (folder,) = (out / "checkpoints" / "tiny" / "SLIME4Rec").iterdir()
    last = torch.load(folder / "last.pth", weights_only=True)
    assert last["epoch"] == 1 and last.get("mid_epoch") is None


@pytest.mark.slow
def test_budget_cut_run_keeps_its_checkpoint_and_a_larger_budget_continues(
    tmp_path: Path, tiny_data
):
    from bench import api

    settings = {**SETTINGS, "embedding_size": 8, "epochs": 50, "time_budget_s": 1e-3}
    out = tmp_path / "out"
    first = api.run(["BPR"], "tiny", settings=settings, out=out, data_dir=tiny_data, device="cpu")
    (result,) = first.results
    assert result.stop_reason == "time_budget" and result.stopped_by_budget
    (folder,) = (out / "checkpoints" / "tiny" / "BPR").iterdir()
    assert (folder / "last.pth").is_file() and (folder / "best.pth").is_file()
    # The best checkpoint holds weights only (it is committed with unfinished runs); the last
    # one carries the optimizer state the run continues from.
    best = torch.load(folder / "best.pth", weights_only=True)
    assert "state_dict" in best and "optimizer" not in best
    assert torch.load(folder / "last.pth", weights_only=True)["optimizers"]
    done = len(result.epochs)
    # Committed in parts for a git host (bench checkpoints split): --resume joins them.
    assert split_large(out / "checkpoints", max_bytes=4096)
    assert not (folder / "last.pth").exists()

    more = {**settings, "epochs": done + 2, "time_budget_s": 0}
    second = api.run(
        ["BPR"], "tiny", settings=more, out=out, data_dir=tiny_data, device="cpu", resume=True
    )
    (result,) = second.results
    assert result.timing.resumed_from_epoch == done
    assert [e.epoch for e in result.epochs] == list(range(done + 2))
    assert result.stop_reason == "epoch_limit" and not folder.exists()


def test_a_run_without_resume_starts_over(tmp_path: Path, tiny_data):
    from bench import api

    settings = {**SETTINGS, "embedding_size": 8, "epochs": 50, "time_budget_s": 1e-3}
    out = tmp_path / "out"
    api.run(["BPR"], "tiny", settings=settings, out=out, data_dir=tiny_data, device="cpu")
    (folder,) = (out / "checkpoints" / "tiny" / "BPR").iterdir()
    assert (folder / "last.pth").is_file()
    settings = {**SETTINGS, "embedding_size": 8, "epochs": 1}
    summary = api.run(["BPR"], "tiny", settings=settings, out=out, data_dir=tiny_data)
    (result,) = summary.results
    assert result.timing.resumed_from_epoch is None
    assert [e.epoch for e in result.epochs] == [0]
