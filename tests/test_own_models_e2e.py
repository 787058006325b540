"""Every model of this package runs end to end through ``bench run`` on ml-100k (tiny sizes)."""

from __future__ import annotations

import math

import pytest

from bench import api
from recbole_ext import registry

CHEAP = {"epochs": 1, "train_sample_limit": 2000, "eval_user_limit": 100}
SEQ = {"hidden_size": 8, "inner_size": 16, "MAX_ITEM_LIST_LENGTH": 10, "train_batch_size": 512}
RNN = {"MAX_ITEM_LIST_LENGTH": 10, "train_batch_size": 512}
VAE = {"mlp_hidden_size": [16], "latent_dimension": 8, "train_batch_size": 200}
VAMP = {"hidden_size": 16, "z1_size": 8, "number_components": 10, "train_batch_size": 200}

SETTINGS = {
    "ContrastVAE": {**SEQ, "n_heads": 2},
    "SLIME4Rec": {**SEQ, "n_layers": 1},
    "HybridContrastVAE": {**SEQ, "n_heads": 2, "filter_n_layers": 1},
    "MarkovChain": {},
    "PRME": {"embedding_size": 8},
    "FME": {"embedding_size": 8},
    "TimeWeightCF": {"k": 20},
    "RecentPop": {},
    "Pop": {},
    "MultVAE": VAE,
    "MultDAE": {"latent_dimension": 8, "train_batch_size": 200},
    "Vamp": VAMP,
    "HVamp": {**VAMP, "z2_size": 8},
    "HVampGated": {**VAMP, "z2_size": 8},
    "S3Rec": {**SEQ, "n_layers": 1, "pretrain_epochs": 1},
    # RecBole's models subclassed here (whole sequences, CSR propagation).
    "SASRec": {**SEQ, "n_layers": 1},
    "BERT4Rec": {**SEQ, "n_layers": 1},
    "GRU4Rec": {"embedding_size": 8, "hidden_size": 8, **RNN},
    "NARM": {"embedding_size": 8, "hidden_size": 8, **RNN},
    "LightGCN": {"embedding_size": 8, "n_layers": 1, "train_batch_size": 512},
    "NGCF": {"embedding_size": 8, "hidden_size_list": [8], "train_batch_size": 512},
}


def test_every_own_model_has_end_to_end_settings_here():
    own = {s.name for s in registry.all_models() if s.source == "recbole_ext"}
    assert own <= set(SETTINGS), f"add tiny settings for {sorted(own - set(SETTINGS))}"


@pytest.mark.parametrize("model", sorted(SETTINGS))
def test_runs_through_bench_run(model, tmp_path):
    spec_names = {s.name for s in registry.all_models() if s.source == "recbole_ext"}
    assert model in spec_names, f"{model} is not registered"
    settings = {**CHEAP, **SETTINGS[model]}
    counting = ("MarkovChain", "TimeWeightCF", "RecentPop", "Pop")
    if "train_sample_limit" in settings and model in counting:
        settings.pop("train_sample_limit")  # count-based: the statistics are the model
    summary = api.run([model], "ml-100k", out=tmp_path, settings=settings)
    result = summary.results[0]
    assert result.ok, result.error
    assert result.family in ("sequential", "general", "traditional")
    assert result.test and all(math.isfinite(v) for v in result.test.values())
    assert result.data.test_users == 100
