"""The ``bench`` command line, end to end, and its handling of bad input."""

from __future__ import annotations

import json
import shutil
import sys

import pandas as pd
import pytest
import torch
from recbole.model.general_recommender import Pop

from bench import api, cli, configs
from bench.contract import read_per_user
from recbole_ext import registry
from tests.helpers import TINY, run_cli

TINY_SETS = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]


def test_run_two_models_on_ml100k_then_resume(tmp_path):
    out = tmp_path / "out"
    args = [
        "run",
        "--models",
        "Pop,SASRec",
        "--dataset",
        "ml-100k",
        "--epochs",
        "1",
        "--out",
        str(out),
        *TINY_SETS,
    ]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    for model in ("Pop", "SASRec"):
        result = json.loads((out / "runs" / "ml-100k" / model / "seed-0.json").read_text())
        assert result["status"] == "ok" and result["model"] == model
        assert result["schema"] == 3 and result["stop_reason"] == "epoch_limit"
        assert 0.0 <= result["test"]["ndcg@10"] <= 1.0
        assert result["data"]["users"] == 943 and result["data"]["source"] == "recbole wheel"
        assert result["data"]["test_users"] == 943
        assert result["config"]["epochs"] == 1 and result["epochs"][0]["train_loss"] is not None
        assert result["environment"]["packages"]["recbole"] == "1.2.1"
        assert result["command"].startswith("bench run --models Pop,SASRec")
        # full precision, not RecBole's 4 decimals
        assert any(len(repr(v)) > 8 for v in result["test"].values())
        per_user = read_per_user(out / "runs" / "ml-100k" / model / "seed-0.json")
        assert len(per_user["user_id"]) == 943 == len(set(per_user["user_id"]))
        for metric, value in result["test"].items():
            assert per_user[metric].mean() == pytest.approx(value, abs=1e-12)
    table = pd.read_csv(out / "leaderboard" / "ml-100k.csv")
    assert set(table["model"]) == {"Pop", "SASRec"}
    assert pd.api.types.is_float_dtype(table["test_ndcg@10"])
    assert (out / "leaderboard" / "ml-100k.md").read_text().startswith("# Leaderboard: ml-100k")
    assert not list(out.rglob("*.tmp"))

    again = run_cli(*args, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipped Pop seed 0" in again.stdout and "skipped SASRec seed 0" in again.stdout


class Exploding(Pop):
    """A model whose training always fails."""

    def calculate_loss(self, interaction):
        raise RuntimeError("exploded on purpose")


def test_one_failing_model_does_not_stop_the_others(tiny_sequences, monkeypatch):
    real_get = registry.get

    def get(name):
        if name == "Exploding":
            return registry.ModelSpec("Exploding", Exploding, "test")
        return real_get(name)

    monkeypatch.setattr(registry, "get", get)
    out = tiny_sequences / "out"
    summary = api.run(["Exploding", "Pop"], "tiny", data_dir=tiny_sequences, out=out, epochs=1)
    statuses = {r.model: r.status for r in summary.results}
    assert statuses == {"Exploding": "failed", "Pop": "ok"}
    failed = json.loads((out / "runs" / "tiny" / "Exploding" / "seed-0.json").read_text())
    assert "exploded on purpose" in failed["error"]["message"]
    assert failed["stop_reason"] == "failed"
    table = pd.read_csv(summary.leaderboard_csv).set_index("model")
    assert table.loc["Pop", "seeds"] == 1 and table.loc["Exploding", "failed"] == 1


def test_user_dataset_without_config_uses_the_default_protocol(tiny_sequences):
    summary = api.run(
        ["SASRec"],
        "tiny",
        data_dir=tiny_sequences,
        out=tiny_sequences / "o",
        epochs=1,
        settings=dict(TINY),
        seeds=[0, 1],
    )
    assert [r.status for r in summary.results] == ["ok", "ok"]
    assert summary.results[0].config["valid_metric"] == "NDCG@10"
    assert summary.results[0].test != summary.results[1].test  # seeds matter


def _main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["bench", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code, capsys.readouterr()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--models", "SASRek", "--dataset", "ml-100k"],
            "unknown model 'SASRek'; did you mean SASRec",
        ),
        (
            ["--models", "Pop", "--dataset", "ml-100"],
            "unknown dataset 'ml-100'; did you mean ml-100k",
        ),
        (
            ["--models", "SASRec", "--dataset", "ml-100k", "--set", "hiden_size=3"],
            "unknown setting 'hiden_size'",
        ),
        (["--models", "Pop", "--dataset", "ml-100k", "--device", "tpu"], "--device 'tpu'"),
        (["--models", "Pop", "--dataset", "ml-100k", "--seeds", "a,b"], "--seeds expects"),
        (["--models", "Pop", "--dataset", "ml-100k", "--epochs", "0"], "epochs must be at least 1"),
        (
            ["--models", "Pop,BPR", "--dataset", "ml-100k", "--name", "Pop-x"],
            "--name labels one model's runs, but 2 models were given",
        ),
        (["--models", "Pop", "--dataset", "ml-100k", "--name", "a/b"], "run name 'a/b'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path, monkeypatch, capsys, args, message
):
    code, captured = _main(monkeypatch, capsys, "run", *args, "--out", str(tmp_path / "out"))
    assert code == 2
    assert message in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_malformed_yaml_and_data_are_reported(tmp_path, monkeypatch, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("epochs: [1, 2\nlearning_rate: 0.1\n")
    code, captured = _main(
        monkeypatch,
        capsys,
        "run",
        "--models",
        "Pop",
        "--dataset",
        "ml-100k",
        "--config",
        str(bad_yaml),
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 2 and f"malformed YAML in {bad_yaml}" in captured.err

    (tmp_path / "data" / "broken").mkdir(parents=True)
    (tmp_path / "data" / "broken" / "broken.inter").write_text("user item\n1 2\n")
    code, captured = _main(
        monkeypatch,
        capsys,
        "run",
        "--models",
        "Pop",
        "--dataset",
        "broken",
        "--data-dir",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 2 and "malformed data file" in captured.err
    assert not (tmp_path / "out").exists()


def test_missing_data_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    code, captured = _main(
        monkeypatch,
        capsys,
        "run",
        "--models",
        "Pop",
        "--dataset",
        "amazon-beauty",
        "--data-dir",
        str(tmp_path / "none"),
    )
    assert code == 2
    assert "dataset 'amazon-beauty' not found; looked for" in captured.err
    assert "bench data import" in captured.err


def test_data_import_command(tmp_path, monkeypatch, capsys):
    source = tmp_path / "seq.txt"
    source.write_text("1 5 6 7 8 9\n2 5 7 9 6 8\n3 9 8 7 6 5\n")
    code, captured = _main(
        monkeypatch,
        capsys,
        "data",
        "import",
        "--input",
        str(source),
        "--name",
        "mine",
        "--out",
        str(tmp_path / "data"),
    )
    assert code in (0, None), captured.err
    assert (tmp_path / "data" / "mine" / "mine.inter").read_text().count("\n") == 16

    source.write_text("1 5 6\n2\n")
    code, captured = _main(
        monkeypatch,
        capsys,
        "data",
        "import",
        "--input",
        str(source),
        "--name",
        "other",
        "--out",
        str(tmp_path / "data"),
    )
    assert code == 2 and "seq.txt:2" in captured.err
    assert not (tmp_path / "data" / "other").exists()


def test_models_command_lists_name_family_source(monkeypatch, capsys):
    code, captured = _main(monkeypatch, capsys, "models")
    assert code in (0, None)
    assert "SASRec" in captured.out and "sequential" in captured.out and "recbole" in captured.out
    pop = next(line for line in captured.out.splitlines() if " Pop " in line)
    assert "recbole_ext" in pop and "recbole.model.general_recommender.pop.Pop" in pop


def test_cpu_device_is_recorded(tiny_sequences):
    summary = api.run(
        ["Pop"], "tiny", data_dir=tiny_sequences, out=tiny_sequences / "o", device="cpu"
    )
    assert summary.results[0].environment.device == "cpu"
    assert torch.device(summary.results[0].config["device"]).type == "cpu"
    memory = summary.results[0].memory
    for phase in (memory.train, memory.test):
        assert phase.kind == "cpu_rss"
        assert phase.peak_mib >= phase.start_mib > 10  # a Python + torch


def test_time_budget_stops_training_at_a_batch_boundary(tiny_sequences):
    # Batches of 32 samples: the first epoch has several, and the budget ends it after one.
    settings = {**TINY, "train_batch_size": 32, "time_budget_s": 1e-6, "stopping_step": 10}
    summary = api.run(
        ["SASRec"],
        "tiny",
        data_dir=tiny_sequences,
        out=tiny_sequences / "o",
        epochs=5,
        settings=settings,
    )
    result = summary.results[0]
    assert result.ok, result.error
    assert result.stopped_by_budget is True and result.stop_reason == "time_budget"
    assert len(result.epochs) == 1 and result.best_epoch == 0
    assert result.epochs[0].cut_after_batches == 1
    assert result.data.train_samples > 32
    assert result.test["ndcg@10"] >= 0
    # A last epoch cut short still marks the run as budget-limited.
    one = api.run(
        ["SASRec"],
        "tiny",
        data_dir=tiny_sequences,
        out=tiny_sequences / "o1",
        epochs=1,
        settings=settings,
    ).results[0]
    assert one.stopped_by_budget is True and one.epochs[0].cut_after_batches == 1


def test_named_variants_are_separate_leaderboard_rows(tiny_sequences):
    out = tiny_sequences / "variants"
    for name, seed_list in (("Pop", [0]), ("Pop-again", [0, 1])):
        api.run(
            ["Pop"],
            "tiny",
            data_dir=tiny_sequences,
            out=out,
            seeds=seed_list,
            name=None if name == "Pop" else name,
        )
    stored = json.loads((out / "runs" / "tiny" / "Pop-again" / "seed-1.json").read_text())
    assert stored["model"] == "Pop-again" and stored["model_class"] == "Pop"
    table = pd.read_csv(out / "leaderboard" / "tiny.csv").set_index("model")
    assert table.loc["Pop", "seeds"] == 1 and table.loc["Pop-again", "seeds"] == 2
    again = api.run(
        ["Pop"], "tiny", data_dir=tiny_sequences, out=out, name="Pop-again", resume=True
    )
    assert again.skipped == [("Pop-again", 0)]


def test_threads_setting_sets_torch_threads(tiny_sequences):
    before = torch.get_num_threads()
    try:
        summary = api.run(
            ["Pop"], "tiny", data_dir=tiny_sequences, out=tiny_sequences / "o",
            settings={"threads": before + 1},
        )  # fmt: skip
        assert summary.results[0].ok
        assert torch.get_num_threads() == before + 1  # differs from the default, whatever it is
    finally:
        torch.set_num_threads(before)


def test_a_model_file_may_not_change_the_protocol(tmp_path, monkeypatch, capsys):
    """The maximum sequence length is the dataset's: a model file that set it would put its row
    on another benchmark than the rest of the leaderboard."""
    tree = tmp_path / "configs"
    shutil.copytree(configs.PACKAGE_CONFIG_DIR, tree)
    with open(tree / "models" / "SASRec.yaml", "a", encoding="utf-8") as file:
        file.write("MAX_ITEM_LIST_LENGTH: 20   # (int) shorter history\n")
    monkeypatch.setenv(configs.CONFIG_DIR_ENV, str(tree))
    out = tmp_path / "out"
    code, captured = _main(
        monkeypatch, capsys, "run", "--models", "SASRec", "--dataset", "ml-100k", "--out", str(out)
    )
    assert code == 2
    assert "sets protocol key(s) MAX_ITEM_LIST_LENGTH" in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert not out.exists()


MODEL_FILES = sorted((configs.PACKAGE_CONFIG_DIR / "models").glob("*.yaml"))


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.stem)
def test_shipped_model_files_leave_the_protocol_to_the_dataset(path):
    assert not set(configs.load_yaml(path)) & configs.PROTOCOL_KEYS


def test_old_option_names_are_aliases(tmp_path, monkeypatch, capsys):
    """`--parallel` (plans) and `--gpus-per-trial` (tune, ablate) name `--workers` and
    `--gpus-per-run`."""
    plan = tmp_path / "p.yaml"
    plan.write_text("jobs:\n  - {dataset: ml-100k, models: [Pop], seeds: [0, 1]}\n")
    code, captured = _main(monkeypatch, capsys, "plan", str(plan), "--parallel", "2", "--dry-run")
    assert code in (0, None), captured.err
    assert captured.out.count(" -m bench run --models Pop --dataset ml-100k") == 2
    grid = tmp_path / "grid.yaml"
    grid.write_text("grid:\n  n_layers: [1, 2]\n")
    code, captured = _main(
        monkeypatch, capsys, "ablate", "--model", "SASRec", "--dataset", "ml-100k",
        "--grid", str(grid), "--gpus-per-trial", "-1", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 2 and "--gpus-per-run must be >= 0, got -1" in captured.err
