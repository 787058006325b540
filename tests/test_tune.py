"""bench tune: search spaces, in-process trials (pruning, failures, export, --tuned), worker
processes in parallel, kill-and-resume of a real driver process, and a trial recorded just
before its driver died adopted on resume. Tiny SASRec runs on ml-100k. (Trials on a Ray
cluster: tests/test_cluster.py and tests/test_postgres_storage.py.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench import configs
from bench.errors import BenchError
from tests.helpers import ROOT

# Tiny SASRec on a 2,000-sample subset, evaluated on 200 users: a trial takes seconds on a CPU.
FAST = {
    "hidden_size": 8,
    "inner_size": 16,
    "n_layers": 1,
    "MAX_ITEM_LIST_LENGTH": 10,
    "train_batch_size": 256,
    "train_sample_limit": 20000,  # training targets: about 2000 whole-sequence windows
    "eval_user_limit": 200,
}
LR_SPACE = "learning_rate: {type: float, low: 1.0e-3, high: 2.0e-2}\n"


@pytest.fixture
def config_tree(tmp_path: Path) -> configs.ConfigTree:
    """A copy of the config tree in which SASRec's attention dropout is 0.25 (the repository's
    is 0.5): a run that read this tree, not the repository's, says so in its config."""
    target = tmp_path / "configs"
    shutil.copytree(configs.PACKAGE_CONFIG_DIR, target)
    model_file = target / "models" / "SASRec.yaml"
    model_file.write_text(model_file.read_text() + "attn_dropout_prob: 0.25  # (float) test\n")
    return configs.ConfigTree(target)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One results folder for the session's studies (and ablations: tests/test_ablate.py uses
    the same), so ml-100k is processed and cached once."""
    folder = tmp_path_factory.getbasetemp() / "tuning-out"
    folder.mkdir(exist_ok=True)
    return folder


def _study(storage: Path, name: str):
    import optuna

    from bench.tuning.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(str(storage)))


# --- search spaces -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr: {type: uniform, low: 0, high: 1}", "unknown type 'uniform'"),
        ("lr: {type: float, low: 0.1, high: 0.01}", "low (0.1) > high (0.01)"),
        ("lr: {type: float, low: 0, high: 1, log: true}", "log scale needs low > 0"),
        ("n: {type: int, low: 1.5, high: 3}", "'low' must be an integer"),
        ("h: {type: categorical, choices: []}", "non-empty list"),
        ("h: {type: categorical, choice: [1]}", "unknown field(s) choice"),
        ("h: 64", "expected a mapping"),
    ],
)
def test_malformed_space_is_one_line_bench_error(tmp_path: Path, text: str, message: str) -> None:
    from bench.tuning.space import load_space

    path = tmp_path / "space.yaml"
    path.write_text(text + "\n")
    with pytest.raises(BenchError) as err:
        load_space("SASRec", path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_space_file(config_tree: configs.ConfigTree) -> None:
    from bench.tuning.space import load_space

    with pytest.raises(BenchError, match="no search space for NoSuchModel"):
        load_space("NoSuchModel", tree=config_tree)


def test_space_distributions_and_json_choices(tmp_path: Path) -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from bench.tuning.space import parse_space

    space = parse_space(
        {
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "dropout_prob": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.25},
            "n_layers": {"type": "int", "low": 1, "high": 3},
            "mlp_hidden_size": {"type": "categorical", "choices": [[600], [200, 200]]},
        }
    )
    d = space.distributions
    assert isinstance(d["learning_rate"], FloatDistribution) and d["learning_rate"].log
    assert isinstance(d["n_layers"], IntDistribution)
    assert isinstance(d["mlp_hidden_size"], CategoricalDistribution)
    assert space.settings({"mlp_hidden_size": "[200, 200]", "n_layers": 2}) == {
        "mlp_hidden_size": [200, 200],
        "n_layers": 2,
    }
    with pytest.raises(BenchError, match="needs a step"):
        space.grid()  # learning_rate is continuous
    grid = parse_space({"p": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.25}}).grid()
    assert grid == {"p": [0.0, 0.25, 0.5]}


def _shipped_models() -> list[str]:
    from recbole_ext import registry

    own = [spec.name for spec in registry.all_models() if spec.source == "recbole_ext"]
    builtin = "Pop BPR ItemKNN EASE GRU4Rec NARM SASRec BERT4Rec S3Rec FPMC TransRec NGCF"
    builtin += " LightGCN MultiVAE MultiDAE RecVAE"
    return sorted(set(own) | set(builtin.split()))


def test_every_shipped_model_has_a_valid_search_space() -> None:
    """Each space parses, and names only keys the model's config knows (no typos)."""
    from bench.preflight import preflight
    from bench.tuning.space import load_space

    for model in _shipped_models():
        space = load_space(model)
        if model != "Pop":  # Pop has nothing to tune; its file says so
            assert space.distributions, model
        preflight([model], "ml-100k", device="cpu", searched=list(space.distributions))


def test_bad_tune_input_is_refused_before_any_trial(tmp_path: Path) -> None:
    from bench.tuning import tune

    space = tmp_path / "space.yaml"
    space.write_text(LR_SPACE)
    common = {"trials": 1, "space": space, "out": tmp_path / "out", "device": "cpu"}
    with pytest.raises(BenchError, match="journal file .* local to this machine"):
        tune("SASRec", "ml-100k", ray_address="ray://head:10001", **common)
    with pytest.raises(BenchError, match="both searched"):
        tune("SASRec", "ml-100k", settings={"learning_rate": 0.1}, **common)
    with pytest.raises(BenchError, match="--gpus-per-run and --gpus-per-trial .* disagree"):
        tune("SASRec", "ml-100k", gpus_per_run=0.5, gpus_per_trial=0.25, **common)
    with pytest.raises(BenchError, match="unknown --pruner"):
        tune("SASRec", "ml-100k", pruner="asha", **common)
    with pytest.raises(BenchError, match="has no hyperparameter to tune"):
        tune("Pop", "ml-100k", trials=1, out=tmp_path / "out", device="cpu")
    assert not (tmp_path / "out" / "studies").exists()


# --- trials in this process ----------------------------------------------------------------


def test_in_process_study_prunes_isolates_failures_exports_and_reruns(
    tmp_path: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna

    from bench.tuning import tune

    monkeypatch.setitem(sys.modules, "ray", None)  # one worker: Ray must not even be imported
    space = tmp_path / "space.yaml"
    space.write_text(LR_SPACE)
    storage = tmp_path / "studies.log"
    lines: list[str] = []
    summary = tune(
        "SASRec",
        "ml-100k",
        trials=4,
        space=space,
        storage=storage,
        study_name="inproc",
        out=out,
        settings=FAST,
        epochs=2,
        pruner="median",
        pruner_startup_trials=1,
        pruner_warmup_epochs=0,
        # A good trial, an impossible one (Adam refuses a negative rate), one that cannot learn,
        # one whose loss turns NaN.
        enqueue=[{"learning_rate": r} for r in (1e-2, -1.0, 0.0, 1e30)],
        final_seeds=[0],
        device="cpu",
        progress=lines.append,
    )
    study = _study(storage, "inproc")
    trials = study.get_trials()
    states = optuna.trial.TrialState
    assert [t.state for t in trials] == [states.COMPLETE, states.FAIL, states.PRUNED, states.FAIL]
    assert "Invalid learning rate" in trials[1].user_attrs["error"]
    assert "nan" in trials[3].user_attrs["error"].lower()
    assert trials[2].user_attrs["error"].startswith("pruned after epoch")

    good = trials[0]
    assert sorted(good.intermediate_values) == [0, 1]  # every epoch reported
    # The objective is the validation metric; test metrics are only recorded.
    assert good.value == pytest.approx(good.user_attrs["valid"]["ndcg@10"])
    assert "ndcg@10" in good.user_attrs["test"]
    for trial in trials:
        assert (out / "studies" / "inproc" / f"trial-{trial.number}" / "result.json").is_file()

    best = study.best_trial
    assert summary.best_trial == best.number == 0
    # Exported under --out, never into the source tree.
    tuned = out / "tuned" / "ml-100k" / "SASRec.yaml"
    assert summary.tuned_file == tuned and not (ROOT / "configs" / "tuned").exists()
    header = tuned.read_text()
    assert f"study 'inproc', trial {best.number}, validation ndcg@10" in header
    assert yaml.safe_load(header) == {"learning_rate": best.params["learning_rate"]}
    # The final run used --tuned: its resolved config holds the exported value.
    final = (out / "runs" / "ml-100k" / "SASRec" / "seed-0.json").read_text()
    config = json.loads(final)["config"]
    assert config["learning_rate"] == best.params["learning_rate"]
    assert config["hidden_size"] == 8  # the study's --set settings carried over
    assert (out / "leaderboard" / "ml-100k.md").is_file()
    assert any(line.startswith("final seed 0: test ndcg@10=") for line in lines)


# --- worker processes ----------------------------------------------------------------------


def test_two_worker_processes_run_trials_in_parallel_and_prune_across_processes(
    config_tree: configs.ConfigTree, tmp_path: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna

    from bench.tuning import tune

    monkeypatch.setitem(sys.modules, "ray", None)  # a local pool: Ray must not even be imported
    space = tmp_path / "space.yaml"
    space.write_text(LR_SPACE)
    storage = tmp_path / "pool.log"
    summary = tune(
        "SASRec",
        "ml-100k",
        trials=3,
        workers=2,
        space=space,
        storage=storage,
        study_name="pool",
        out=out,
        settings=FAST,
        epochs=1,
        pruner="median",
        pruner_startup_trials=1,
        pruner_warmup_epochs=0,
        # The third (a model that cannot learn) starts once a first trial has finished.
        enqueue=[{"learning_rate": 1e-2}, {"learning_rate": 5e-3}, {"learning_rate": 0.0}],
        final_seeds=(),
        config_tree=config_tree,
    )
    trials = _study(storage, "pool").get_trials()
    # The workers read the driver's tree (handed to them in the request, no global reassigned).
    records = [json.loads(p.read_text()) for p in (out / "studies" / "pool").glob("*/result.json")]
    trained = [r for r in records if r.get("config")]  # a pruned trial keeps no result
    assert trained and all(r["config"]["attn_dropout_prob"] == 0.25 for r in trained)
    assert all(r["trial"]["pid"] != os.getpid() for r in trained)
    # Two threads each: the runs' share of this machine's cores is counted from two workers.
    assert all(r["config"]["threads"] == max(1, (os.cpu_count() or 1) // 2) for r in trained)
    states = optuna.trial.TrialState
    first, second, third = trials
    # Two worker processes, not this one, ran the first two trials at the same time. (The one
    # that finishes second may be pruned against the first: both outcomes are fine here.)
    assert first.state.is_finished() and second.state.is_finished()
    assert first.user_attrs["pid"] != second.user_attrs["pid"]
    assert os.getpid() not in (first.user_attrs["pid"], second.user_attrs["pid"])
    starts = [t.user_attrs["started_at"] for t in (first, second)]
    ends = [t.user_attrs["finished_at"] for t in (first, second)]
    assert max(starts) < min(ends)
    # The third, a model that cannot learn, starts once the first trial is complete; its worker
    # reported to the study and asked the pruner itself.
    assert third.state == states.PRUNED and third.intermediate_values
    assert summary.counts["complete"] >= 1 and summary.best_trial in (0, 1)
    assert not list((out / "studies" / "pool").glob("trial-*/checkpoints"))  # none left behind


# --- kill and resume -----------------------------------------------------------------------


def test_sigkilled_driver_resumes_without_losing_or_double_counting(
    tmp_path: Path, out: Path
) -> None:
    import optuna

    space = tmp_path / "space.yaml"
    space.write_text(LR_SPACE)
    storage = tmp_path / "kill.log"
    sets = [x for key, value in FAST.items() for x in ("--set", f"{key}={value}")]
    command = [
        sys.executable, "-m", "bench", "tune", "--model", "SASRec", "--dataset", "ml-100k",
        "--trials", "2", "--storage", str(storage), "--study", "kill", "--space", str(space),
        "--out", str(out), "--epochs", "2", "--pruner", "none",
        "--sampler", "random", "--final-seeds", "none", "--device", "cpu", *sets,
    ]  # fmt: skip
    env = dict(os.environ)
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    states = optuna.trial.TrialState
    deadline = time.monotonic() + 240
    try:
        while True:  # kill once a trial is complete and the next one is running
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial completed in time"
            if storage.is_file() and storage.stat().st_size:
                try:
                    seen = {t.state for t in _study(storage, "kill").get_trials()}
                except KeyError:  # the study is not created yet
                    seen = set()
                if states.COMPLETE in seen and states.RUNNING in seen:
                    break
            time.sleep(0.3)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    before = {t.number: t for t in _study(storage, "kill").get_trials()}
    completed = {n: t.value for n, t in before.items() if t.state == states.COMPLETE}
    running = [n for n, t in before.items() if t.state == states.RUNNING]
    assert completed and len(running) == 1

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "left RUNNING by a stopped driver" in second.stdout
    after = _study(storage, "kill").get_trials()
    by_number = {t.number: t for t in after}
    for number, value in completed.items():  # completed trials kept as they were
        assert by_number[number].state == states.COMPLETE and by_number[number].value == value
    killed = by_number[running[0]]
    retries = [t for t in after if t.user_attrs.get("retry_of") == killed.number]
    if killed.state == states.COMPLETE:  # killed after recording its result: adopted
        assert not retries and "adopted" in second.stdout
    else:
        assert killed.state == states.FAIL and killed.user_attrs["interrupted"] is True
        assert len(retries) == 1 and retries[0].params == killed.params
    counted = [t for t in after if t.state.is_finished() and not t.user_attrs.get("interrupted")]
    assert len(counted) == 2  # --trials 2 in total, across both drivers
    assert all(t.state.is_finished() for t in after)
    assert (out / "tuned" / "ml-100k" / "SASRec.yaml").is_file()


class _Killed(Exception):
    """The driver dies here."""


def _killed(*_args: object) -> None:
    raise _Killed


def _gap_study(tmp_path: Path, recorded_params: dict | None = None):
    """A study whose trial 0 is RUNNING and whose driver died in the gap between writing the
    trial's result record and setting its attributes: (study, study folder)."""
    import optuna

    from bench.contract import RunResult
    from bench.executor import RunOutcome
    from bench.tuning.study import _record

    study = optuna.create_study(study_name="gap", direction="maximize")
    trial = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1.0)})
    if recorded_params is None:
        trial.set_user_attr = _killed  # the driver dies right after writing the record
    else:  # a stale record, of another study of the same name
        trial = type("Stale", (), {"number": 0, "params": recorded_params})()
        trial.set_user_attr = _killed
    result = RunResult(
        "ok", "ml-100k", "SASRec", 0, valid_metric="ndcg@10", best_valid_score=0.25,
        valid={"ndcg@10": 0.25}, test={"ndcg@10": 0.2}, best_epoch=1, config_hash="abc",
    )  # fmt: skip
    now = time.time()
    outcome = RunOutcome("ok", 0.25, result, host="h", pid=123, started_at=now, finished_at=now)
    with pytest.raises(_Killed):
        _record(study, trial, outcome, tmp_path / "gap" / "trial-0", "ndcg@10")
    return study, tmp_path / "gap"


def test_a_trial_recorded_ok_before_its_driver_died_is_adopted_not_run_again(tmp_path: Path):
    import optuna

    from bench.tuning.study import _recover

    study, folder = _gap_study(tmp_path)
    assert json.loads((folder / "trial-0" / "result.json").read_text())["status"] == "ok"
    lines: list[str] = []
    _recover(study, folder, "ndcg@10", lines.append)
    (trial,) = study.get_trials()  # adopted: nothing queued again
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.25
    assert trial.user_attrs["valid"] == {"ndcg@10": 0.25} and trial.user_attrs["pid"] == 123
    assert not trial.user_attrs.get("interrupted")
    assert lines == [
        "trial 0: left RUNNING by a stopped driver after its result was recorded: adopted, "
        "COMPLETE ndcg@10=0.2500"
    ]


def test_a_stale_record_of_other_parameters_is_not_adopted(tmp_path: Path):
    import optuna

    from bench.tuning.study import _recover

    study, folder = _gap_study(tmp_path, recorded_params={"learning_rate": 0.5})
    lines: list[str] = []
    _recover(study, folder, "ndcg@10", lines.append)
    killed, retry = study.get_trials()
    assert killed.state == optuna.trial.TrialState.FAIL and killed.user_attrs["interrupted"]
    assert retry.state == optuna.trial.TrialState.WAITING and retry.user_attrs["retry_of"] == 0
    assert lines[0] == "trial 0: left RUNNING by a stopped driver, marked FAIL"


def test_a_trial_stopped_before_its_parameters_were_drawn_is_not_queued_again(tmp_path: Path):
    """The driver dies inside ``study.ask``: the trial exists, RUNNING, with no parameter. It is
    failed and marked, and nothing is queued (an empty retry would be a fresh trial mislabelled);
    the next ask draws the trial that takes its place."""
    import optuna

    from bench.tuning.study import _recover

    study = optuna.create_study(study_name="inside-ask", direction="maximize")
    study.ask()  # created, no parameter drawn yet
    lines: list[str] = []
    _recover(study, tmp_path / "inside-ask", "ndcg@10", lines.append)
    (killed,) = study.get_trials()
    assert killed.state == optuna.trial.TrialState.FAIL and killed.user_attrs["interrupted"]
    assert killed.user_attrs["error"].endswith("a fresh trial takes its place")
    assert lines == [
        "trial 0: left RUNNING by a stopped driver, marked FAIL",
        "trial 0: interrupted before its parameters were drawn",
    ]
