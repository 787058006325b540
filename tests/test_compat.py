"""Each RecBole compatibility fix, with a check that fails without it."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from recbole.config import Config
from recbole.data import create_dataset
from recbole.utils import get_trainer

from recbole_ext import compat
from recbole_ext.data import prepare_data
from tests.helpers import ROOT, write_inter


def _config(data_path, model="Pop", dataset="tiny", **extra):
    settings = {
        "data_path": str(data_path),
        "checkpoint_dir": str(data_path / "ck"),
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "epochs": 1,
        "train_batch_size": 4096,
        "train_regime": "interactions",
        "train_sample_limit": 0,
        "eval_user_limit": 0,
        "exclude_history_items": False,
        "show_progress": False,
        "hidden_size": 8,
        "embedding_size": 8,
        "n_layers": 1,
        "inner_size": 16,
        "MAX_ITEM_LIST_LENGTH": 5,
        "train_neg_sample_args": None
        if model in ("SASRec", "Pop")
        else {"distribution": "uniform", "sample_num": 1},
        "loss_type": "CE",
        **extra,
    }
    return Config(model=model, dataset=dataset, config_dict=settings)


def test_numpy2_config_builds_and_aliases_are_builtins(tiny_sequences):
    # RecBole's Config assigned np.float = np.float_, which NumPy 2 removed.
    config = _config(tiny_sequences)
    assert config["model"] == "Pop"
    assert np.float is float and np.int is int


def test_checkpoint_is_loaded_with_weights_only(tiny_sequences):
    # torch >= 2.6 defaults to weights_only=True; RecBole pickled its Config into checkpoints.
    config = _config(tiny_sequences, model="SASRec")
    dataset = create_dataset(config)
    train, valid, test = prepare_data(config, dataset)
    from recbole.model.sequential_recommender import SASRec

    model = SASRec(config, train._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], "SASRec")(config, model)
    trainer.fit(train, valid, saved=True, show_progress=False)
    result = trainer.evaluate(test, load_best_model=True)
    assert set(result) >= {"ndcg@10", "hit@10"}
    state = torch.load(trainer.saved_model_file, weights_only=True)
    assert state["model"] == "SASRec" and "state_dict" in state
    trainer.resume_checkpoint(trainer.saved_model_file)
    assert trainer.start_epoch == state["epoch"] + 1


def test_sequential_import_leaves_anomaly_detection_off():
    # recbole's sine.py calls torch.autograd.set_detect_anomaly(True) at import.
    code = (
        "import torch, recbole_ext, recbole.model.sequential_recommender;"
        "print(torch.is_anomaly_enabled())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_empty_token_seq_cells_and_missing_tokens_are_filled(tmp_path):
    # pandas 3 copy-on-write made RecBole's chained fillna(inplace=True) a no-op.
    write_inter(
        tmp_path,
        "tagged",
        [(u, i, float(t)) for u in range(1, 6) for t, i in enumerate(range(1, 7))],
    )
    item_file = tmp_path / "tagged" / "tagged.item"
    lines = ["item_id:token\ttags:token_seq\tbrand:token"]
    lines += [f"{i}\t{'a b' if i % 2 else ''}\t{'x' if i != 3 else ''}" for i in range(1, 7)]
    item_file.write_text("\n".join(lines) + "\n")
    config = _config(
        tmp_path,
        dataset="tagged",
        load_col={
            "inter": ["user_id", "item_id", "timestamp"],
            "item": ["item_id", "tags", "brand"],
        },
    )
    dataset = create_dataset(config)
    tags = dataset.item_feat["tags"]
    assert len(tags) == dataset.item_num
    empty = [i for i in range(1, 7) if i % 2 == 0]
    for raw in empty:
        inner = dataset.token2id(dataset.iid_field, str(raw))
        assert len(tags.iloc[inner]) == 0
    brand_of_3 = dataset.item_feat["brand"].iloc[dataset.token2id(dataset.iid_field, "3")]
    assert brand_of_3 == 0  # missing token -> [PAD]


def test_dok_matrix_update_restored_for_graph_models(tiny_sequences):
    # SciPy >= 1.13 removed dok_matrix._update; NGCF and LightGCN call it.
    matrix = sp.dok_matrix((3, 3), dtype=np.float32)
    matrix._update({(0, 1): 1.0, (2, 2): 3.0})
    assert matrix.toarray()[0, 1] == 1.0 and matrix.toarray()[2, 2] == 3.0
    config = _config(tiny_sequences, model="NGCF")
    dataset = create_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    from recbole.model.general_recommender import NGCF

    model = NGCF(config, train._dataset)
    assert model.norm_adj_matrix.shape[0] == dataset.user_num + dataset.item_num


def test_transrec_full_ranking_scores_without_a_pair_tensor(tiny_sequences):
    # Stock TransRec.full_sort_predict builds [users, items, embedding] tensors (12.7 GB a batch
    # on Beauty); the patched one must give the same scores from [users, items] distances.
    from recbole.model.sequential_recommender.transrec import TransRec

    assert TransRec.full_sort_predict is compat._transrec_full_sort_predict
    config = _config(tiny_sequences, model="TransRec")
    dataset = create_dataset(config)
    train, _, test = prepare_data(config, dataset)
    torch.manual_seed(0)
    model = TransRec(config, train._dataset).eval()
    interaction = next(iter(test))[0]
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
        translation = model.forward(
            interaction["user_id"], interaction["item_id_list"], interaction["item_length"]
        )
        pairs = translation[:, None, :] - model.item_embedding.weight[None]
        stock = model.bias.weight.view(1, -1) - pairs.pow(2).sum(-1).sqrt()
    assert scores.shape == (len(translation), dataset.item_num)
    torch.testing.assert_close(scores, stock)


@pytest.mark.parametrize("batch_size", [3, 4096])
def test_pop_counts_every_interaction_whatever_the_batches(tiny_sequences, batch_size):
    # Stock Pop adds one per distinct item of a batch: its counts fall as batches grow.
    from recbole.model.general_recommender import Pop

    config = _config(tiny_sequences, train_batch_size=batch_size)
    dataset = create_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    model = Pop(config, train._dataset)
    for batch in train:
        model.calculate_loss(batch)
    items = train._dataset.inter_feat["item_id"]
    expected = torch.bincount(items, minlength=dataset.item_num)
    assert torch.equal(model.item_cnt.squeeze(1), expected)
    assert int(model.max_cnt) == int(expected.max()) > 1


def test_command_line_flags_do_not_leak_into_config(tiny_sequences, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench", "--learning_rate=0.5", "--epochs=77"])
    config = _config(tiny_sequences)
    assert config["learning_rate"] != 0.5 and config["epochs"] == 1


def test_checkpoint_names_are_unique_within_a_second(tiny_sequences):
    config = _config(tiny_sequences, model="SASRec")
    dataset = create_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    from recbole.model.sequential_recommender import SASRec

    model = SASRec(config, train._dataset)
    trainer_class = get_trainer(config["MODEL_TYPE"], "SASRec")
    names = {trainer_class(config, model).saved_model_file for _ in range(5)}
    assert len(names) == 5


def test_cuda_visible_devices_is_left_alone(tiny_sequences, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    config = _config(tiny_sequences, gpu_id="0", device="cpu")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert config["device"] == torch.device("cpu")


def test_trainer_writes_no_tensorboard_files(tiny_sequences, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _config(tiny_sequences)
    dataset = create_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    from recbole.model.general_recommender import Pop

    get_trainer(config["MODEL_TYPE"], "Pop")(config, Pop(config, train._dataset))
    assert not (tmp_path / "log_tensorboard").exists()


def test_harness_imports_neither_quick_start_nor_ray():
    code = (
        "import sys, bench.api, recbole_ext.registry;"
        "print('recbole.quick_start' in sys.modules, 'ray' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False False"


def test_apply_is_idempotent():
    before = Config._load_cmd_line
    compat.apply()
    assert Config._load_cmd_line is before


@pytest.mark.parametrize("name", ["bool", "int", "float", "complex", "object", "str"])
def test_numpy_alias_present(name):
    assert hasattr(np, name)
