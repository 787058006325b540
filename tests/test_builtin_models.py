"""RecBole's built-in models of the benchmark: each trains and evaluates through ``bench.api.run``
on ml-100k with tiny settings; S3Rec runs its two stages in one ``bench run`` command."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from bench import api, configs
from recbole_ext import registry
from tests.helpers import ROOT, run_cli

# Cheap for every run: 2,000 training samples, 100 evaluated users, one epoch.
COMMON = {"train_sample_limit": 2000, "eval_user_limit": 100, "epochs": 1}
SEQUENCE = {"MAX_ITEM_LIST_LENGTH": 10}
TRANSFORMER = {"hidden_size": 8, "inner_size": 16, "n_layers": 1, **SEQUENCE}

# Per model: settings that shrink it. Settings apply to every model of a run and must be known
# to one of them, so each model runs on its own.
TINY = {
    "Pop": {},
    "ItemKNN": {"k": 10},
    "EASE": {},
    "BPR": {"embedding_size": 8},
    "NGCF": {"embedding_size": 8, "hidden_size_list": [8]},
    "LightGCN": {"embedding_size": 8, "n_layers": 1},
    "MultiVAE": {"mlp_hidden_size": [8], "latent_dimension": 8},
    "MultiDAE": {"latent_dimension": 8},
    "RecVAE": {"hidden_dimension": 8, "latent_dimension": 8},
    "FPMC": {"embedding_size": 8, **SEQUENCE},
    "TransRec": {"embedding_size": 8, **SEQUENCE},
    "GRU4Rec": {"embedding_size": 8, "hidden_size": 8, "num_layers": 1, **SEQUENCE},
    "NARM": {"embedding_size": 8, "hidden_size": 8, "n_layers": 1, **SEQUENCE},
    "SASRec": TRANSFORMER,
    "BERT4Rec": TRANSFORMER,
}
# No pretrain_epochs: COMMON's epochs=1 bounds both stages (pre-training: min(1, 100)).
S3REC = TRANSFORMER
BUILTINS = [*TINY, "S3Rec"]


def _finite_metrics(metrics: dict[str, float]) -> bool:
    return bool(metrics) and all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in metrics.values())


@pytest.fixture(scope="module")
def dataset_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _out(tmp_path: Path, dataset_cache: Path) -> Path:
    """A results folder of its own (a one-row leaderboard is cheap to refresh) whose dataset
    cache is shared, so ml-100k is processed once per dataset class for the whole module."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "cache").symlink_to(dataset_cache, target_is_directory=True)
    return out


@pytest.mark.parametrize("model", list(TINY))
def test_builtin_model_trains_and_evaluates(model: str, tmp_path: Path, dataset_cache: Path):
    settings = {**COMMON, **TINY[model]}
    out = _out(tmp_path, dataset_cache)
    summary = api.run([model], "ml-100k", settings=settings, out=out, device="cpu")
    assert not summary.failed, summary.failed[0].error.traceback[-3000:]
    (result,) = summary.results
    # RecBole's classes, or this package's subclasses of them (same parameters, same names).
    assert result.ok and result.source == registry.get(model).source
    assert _finite_metrics(result.test) and _finite_metrics(result.valid)
    # 2,000 samples, or the whole sequences holding about 2,000 targets (train_regime users).
    whole_sequences = result.config.get("train_regime") == "users"
    assert 0 < result.data.train_samples <= 2000 and result.data.test_users == 100
    assert whole_sequences or result.data.train_samples == 2000
    (epoch,) = result.epochs
    assert math.isfinite(epoch.train_loss) and epoch.valid_score is not None
    for key, value in TINY[model].items():  # the tiny settings reached the model
        assert result.config[key] == value


def test_s3rec_pretrains_then_fine_tunes_in_one_command(tmp_path: Path, dataset_cache: Path):
    out = _out(tmp_path, dataset_cache)
    sets = [a for k, v in {**COMMON, **S3REC}.items() for a in ("--set", f"{k}={v}")]
    args = ["run", "--models", "S3Rec", "--dataset", "ml-100k", "--device", "cpu"]
    done = run_cli(*args, "--out", str(out), *sets)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "runs" / "ml-100k" / "S3Rec" / "seed-0.json").read_text())
    assert result["status"] == "ok" and result["source"] == "recbole_ext"
    # Stage 1: one pre-training epoch with the attribute-free objectives only.
    (pretrain,) = result["pretrain_epochs"]
    assert math.isfinite(pretrain["train_loss"]) and pretrain["train_loss"] > 0
    assert set(pretrain["loss_terms"]) == {"mip", "sp"}
    assert "no item attribute field 'class'" in done.stderr
    # Stage 2: fine-tuning from those weights, validated and tested.
    (epoch,) = result["epochs"]
    assert math.isfinite(epoch["train_loss"]) and epoch["valid_score"] is not None
    # The config is what was asked (both stages); the fine-tuning stage read the weights.
    assert result["config"]["train_stage"] == "pretrain"
    assert result["config"]["pre_model_path"].endswith("S3Rec-pretrained.pth")
    assert result["config"]["epochs"] == result["config"]["pretrain_epochs"] == 1
    assert _finite_metrics(result["test"])


@pytest.mark.parametrize("model", BUILTINS)
def test_model_config_keys_are_known_and_documented(model: str):
    """Every key of configs/models/<Model>.yaml means something to RecBole or the harness (a
    misspelt key would silently do nothing), is not a protocol key, and has its comment."""
    path = ROOT / "configs" / "models" / f"{model}.yaml"
    keys = configs.load_yaml(path)
    defaults = configs.ConfigTree.default().defaults_file
    known = configs.recbole_known_keys(model) | set(configs.load_yaml(defaults))
    if registry.get(model).source == "recbole_ext":  # a subclass's own keys
        known |= {"sampled_negatives"}
    assert set(keys) <= known, sorted(set(keys) - known)
    assert not set(keys) & configs.PROTOCOL_KEYS
    top_level = [line for line in path.read_text().splitlines() if re.match(r"^\w", line)]
    assert len(top_level) == len(keys)
    for line in top_level:
        assert re.search(r"#\s*\(\w+\)\s+\S", line), f"{path.name}: no '# (type) meaning': {line}"


def test_suites_name_registered_models():
    tree = configs.ConfigTree.default()
    suites = configs.load_yaml(tree.root / "suites.yaml")
    names = set(suites["default"]) | {m for models in suites["datasets"].values() for m in models}
    for name in sorted(names):
        assert registry.get(name).name == name
    for dataset in ("amazon-beauty", "amazon-sports", "ml-1m"):
        assert set(BUILTINS) <= set(tree.suite(dataset))
    assert len(tree.suite("ml-100k")) < len(tree.suite("ml-1m"))
