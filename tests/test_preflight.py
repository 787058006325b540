"""The one pre-flight (settings -> paths -> prepare -> checks) and what it hands the runner."""

from __future__ import annotations

import pytest

from bench import api, configs, plans, runner
from bench.errors import BenchError
from bench.preflight import preflight
from recbole_ext.data import HarnessSettings
from tests.helpers import TINY

TYPO = {"hiden_size": 8}
MESSAGE = "unknown setting 'hiden_size'.*did you mean hidden_size"


def test_every_entry_point_refuses_a_misspelt_setting_before_anything_runs(tiny_sequences):
    from bench.tuning import ablate, tune

    out = tiny_sequences / "out"
    common = {"data_dir": tiny_sequences, "out": out, "device": "cpu"}
    with pytest.raises(BenchError, match=MESSAGE):
        api.run(["SASRec"], "tiny", settings=TYPO, **common)
    with pytest.raises(BenchError, match=MESSAGE):
        tune("SASRec", "tiny", trials=1, settings=TYPO, **common)
    grid = tiny_sequences / "grid.yaml"
    grid.write_text("grid:\n  n_layers: [1, 2]\n")
    with pytest.raises(BenchError, match=MESSAGE):
        ablate("SASRec", "tiny", grid, settings=TYPO, **common)
    plan = tiny_sequences / "plan.yaml"
    plan.write_text("jobs:\n  - {dataset: tiny, models: [SASRec], set: {hiden_size: 8}}\n")
    with pytest.raises(BenchError, match=MESSAGE):
        plans.execute(plan, echo=print, **common)
    assert not out.exists()


def test_harness_keys_stay_out_of_recboles_config_and_go_to_the_record(tiny_sequences, monkeypatch):
    """RecBole's Config holds train_regime (models read it) and no other harness key; the
    typed settings still reach the data preparation (the sample limit is applied) and the
    record keeps every key as asked (a null stays null: the config hash is as before)."""
    seen = {}
    real = runner.recording_trainer

    def spy(config, model, *args, **kwargs):
        seen["config"] = dict(config.final_config_dict)
        return real(config, model, *args, **kwargs)

    monkeypatch.setattr(runner, "recording_trainer", spy)
    settings = {**TINY, "train_sample_limit": 20, "eval_user_limit": None}
    summary = api.run(
        ["SASRec"], "tiny", epochs=1, settings=settings, data_dir=tiny_sequences, out=tiny_sequences
    )
    (result,) = summary.results
    assert result.ok, result.error
    assert set(HarnessSettings.keys()) & set(seen["config"]) == {"train_regime"}
    assert set(HarnessSettings.keys()) <= set(result.config)
    # train_regime users: whole-sequence windows (one a user here), as many as hold 20 targets
    assert 1 <= result.data.train_samples < 40
    assert result.config["eval_user_limit"] is None and result.config["threads"] >= 1


def test_a_harness_value_the_key_cannot_take_is_refused_before_a_run(tiny_sequences):
    with pytest.raises(BenchError, match="train_regime must be one of"):
        preflight(["Pop"], "tiny", settings={"train_regime": "sessions"}, data_dir=tiny_sequences)


def test_tuned_files_are_read_from_the_results_folder(tiny_sequences):
    out = tiny_sequences / "out"
    tuned = configs.tuned_folder(out)
    with pytest.raises(BenchError, match=f"--tuned: no {tuned / 'tiny' / 'SASRec.yaml'}"):
        preflight(["SASRec"], "tiny", tuned_from=tuned, data_dir=tiny_sequences)
    (tuned / "tiny").mkdir(parents=True)
    (tuned / "tiny" / "SASRec.yaml").write_text("hidden_size: 16\n")
    (prepared,) = preflight(["SASRec"], "tiny", tuned_from=tuned, data_dir=tiny_sequences).runs
    assert prepared.config_dict["hidden_size"] == 16
    (plain,) = preflight(["SASRec"], "tiny", data_dir=tiny_sequences).runs
    assert plain.config_dict["hidden_size"] != 16


def test_a_config_tree_object_is_what_the_runs_read(tiny_sequences, tmp_path):
    import shutil

    tree = tmp_path / "configs"
    shutil.copytree(configs.PACKAGE_CONFIG_DIR, tree)
    (tree / "defaults.yaml").write_text(
        (tree / "defaults.yaml").read_text().replace("stopping_step: 10", "stopping_step: 7")
    )
    own = configs.ConfigTree(tree)
    (prepared,) = preflight(["Pop"], "tiny", data_dir=tiny_sequences, config_tree=own).runs
    assert prepared.config_dict["stopping_step"] == 7 and prepared.options.config_tree == own
    (default,) = preflight(["Pop"], "tiny", data_dir=tiny_sequences).runs
    assert default.config_dict["stopping_step"] == 10
