"""Each RecBole compatibility fix, with a check that fails without it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from typing import Any

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
    # The harness's trainers keep the best weights only: RecBole's resume refuses them clearly.
    trainer.best_weights_only = True
    trainer._save_checkpoint(0, verbose=False)
    assert "optimizer" not in torch.load(trainer.saved_model_file, weights_only=True)
    trainer.start_epoch, weights = 7, [w.clone() for w in model.parameters()]
    torch.nn.init.zeros_(next(model.parameters()))  # differs from the checkpoint's weights
    weights[0].zero_()
    with pytest.raises(ValueError, match="best weights only"):
        trainer.resume_checkpoint(trainer.saved_model_file)
    # Refused before anything was loaded: the trainer and the model are as they were.
    assert trainer.start_epoch == 7
    assert all(torch.equal(w, v) for w, v in zip(weights, model.parameters(), strict=True))


def test_sequential_import_leaves_anomaly_detection_off():
    # recbole's sine.py calls torch.autograd.set_detect_anomaly(True) at import.
    code = (
        "import torch; from recbole_ext import compat; compat.apply();"
        "import recbole.model.sequential_recommender; print(torch.is_anomaly_enabled())"
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


# --- 13. per-cell lengths where RecBole called Series.agg(len) --------------------------------
# Each scenario is real atomic files plus the settings that reach one call site; each is read with
# every fix and again with RecBole's own methods in place of this fix's rewrites.
PRE_SPLIT = {  # (user, history = item_id_list, next item) per row of each pre-split file
    "train": [("1", "10", "11"), ("1", "10 11", "12"), ("1", "10 11 12", "13"), ("2", "20", "21")],
    "valid": [("1", "10 11 12 13", "14"), ("2", "20 21", "22")],
    "test": [("3", "30", "31")],
}
PRE_SPLIT_HISTORIES = [row[1].split() for part in PRE_SPLIT.values() for row in part]
PRICES = {"1": [1.0, 3.0], "2": [5.0], "3": [2.0, 4.0, 6.0], "4": [0.0]}  # an item float_seq
WEIGHTS = {"1": 0.5, "2": 9.0, "3": 3.0, "4": 20.0}  # an item float field
SEQUENTIAL = {
    "benchmark_filename": list(PRE_SPLIT),
    "alias_of_item_id": ["item_id_list"],  # the histories share the item ids (one embedding)
    "load_col": {"inter": ["user_id", "item_id_list", "item_id"]},
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
    "train_neg_sample_args": None,
    "loss_type": "CE",
    "MAX_ITEM_LIST_LENGTH": 5,
}
KG = {
    **SEQUENTIAL,
    "load_col": {
        "inter": ["user_id", "item_id_list", "item_id"],
        "kg": ["head_id", "relation_id", "tail_id"],
        "link": ["item_id", "entity_id"],
    },
    "additional_feat_suffix": None,  # no pre-trained entity embeddings (.ent) needed to load
}
PRICED = {
    "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "price"]},
    "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "mode": "full"},
}
WEIGHED = {**PRICED, "load_col": {**PRICED["load_col"], "item": ["item_id", "weight"]}}
ITEM_LISTS = [("inter_feat", "item_length"), ("inter_feat", "item_id_list")]
# name: (files, model, settings, (frame, field) columns to compare)
SCENARIOS = {
    "pre_split": ("pre_split", "SASRec", SEQUENTIAL, ITEM_LISTS),
    "pre_split_seq_len": (
        "pre_split",
        "SASRec",
        {**SEQUENTIAL, "seq_len": {"item_id_list": 3}},
        ITEM_LISTS,
    ),
    "pre_split_kg": ("pre_split_kg", "GRU4RecKG", KG, [*ITEM_LISTS, ("inter_feat", "item_id")]),
    "float_seq_normalize_field": (
        "float_seq",
        "Pop",
        {**PRICED, "normalize_field": ["price"]},
        [("item_feat", "price")],
    ),
    "float_seq_normalize_all": (
        "float_seq",
        "Pop",
        {**PRICED, "normalize_all": True},
        [("item_feat", "price"), ("inter_feat", "timestamp")],
    ),
    "float_seq_discretized": (
        "float_seq",
        "Pop",
        {
            **PRICED,
            "numerical_features": ["price"],
            "discretization": {"price": {"method": "ED", "bucket": 3}},
        },
        [("item_feat", "price")],
    ),
    "float_seq_numerical": (
        "float_seq",
        "Pop",
        {**PRICED, "numerical_features": ["price"]},
        [("item_feat", "price")],
    ),
    # float (not float_seq) fields: the rewritten methods must do what stock RecBole does.
    "float_normalize_all": (
        "float",
        "Pop",
        {**WEIGHED, "normalize_all": True},
        [("item_feat", "weight"), ("inter_feat", "timestamp")],
    ),
    "float_discretized": (
        "float",
        "Pop",
        {
            **WEIGHED,
            "numerical_features": ["weight", "timestamp"],
            "discretization": {
                "weight": {"method": "LD"},
                "timestamp": {"method": "ED", "bucket": 4},
            },
        },
        [("item_feat", "weight"), ("inter_feat", "timestamp")],
    ),
}


def _write_pre_split(folder, kg: bool) -> None:
    folder.mkdir(parents=True)
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    for part, rows in PRE_SPLIT.items():
        text = header + "".join("\t".join(row) + "\n" for row in rows)
        (folder / f"{folder.name}.{part}.inter").write_text(text)
    if kg:
        rows = [row for part in PRE_SPLIT.values() for row in part]
        items = sorted({item for _, history, last in rows for item in [*history.split(), last]})
        links = "".join(f"{item}\te{item}\n" for item in items)
        triples = "".join(f"e{a}\tnext\te{b}\n" for a, b in zip(items, items[1:], strict=False))
        (folder / f"{folder.name}.link").write_text("item_id:token\tentity_id:token\n" + links)
        kg_header = "head_id:token\trelation_id:token\ttail_id:token\n"
        (folder / f"{folder.name}.kg").write_text(kg_header + triples)


def _write_items(folder, seq: bool) -> None:
    rows = [(u, i, float(10 * u + i)) for u in range(1, 5) for i in range(1, 5)]
    write_inter(folder.parent, folder.name, rows)
    if seq:
        cells = [f"{item}\t{' '.join(map(str, v))}" for item, v in PRICES.items()]
        lines = ["item_id:token\tprice:float_seq", *cells]
    else:
        lines = ["item_id:token\tweight:float", *(f"{i}\t{v}" for i, v in WEIGHTS.items())]
    (folder / f"{folder.name}.item").write_text("\n".join(lines) + "\n")


def _column_cells(dataset, frame: str, field: str) -> list:
    """One column of a loaded dataset's frame as plain lists, one entry per row."""
    return [np.asarray(cell, dtype=float).tolist() for cell in getattr(dataset, frame)[field]]


@pytest.fixture(scope="module")
def scenario_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("agg_len")
    _write_pre_split(root / "pre_split", kg=False)
    _write_pre_split(root / "pre_split_kg", kg=True)
    _write_items(root / "float_seq", seq=True)
    _write_items(root / "float", seq=False)
    return root


def _load(root, name: str) -> tuple:
    """(the dataset, its compared columns) of a scenario, with the fixes now in place."""
    dataset, model, settings, columns = SCENARIOS[name]
    config = Config(model=model, dataset=dataset, config_dict={**settings, "data_path": str(root)})
    loaded = create_dataset(config)
    return loaded, {
        f"{frame}.{field}": _column_cells(loaded, frame, field) for frame, field in columns
    }


def _stock_recbole_method(module_name: str, class_name: str, method: str) -> Any:
    """RecBole's own method, from a fresh copy of its module (the imported one is patched)."""
    spec = importlib.util.find_spec(module_name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(getattr(module, class_name), method)


@pytest.fixture
def without_seq_lengths(scenario_root, monkeypatch) -> Any:
    """A scenario's columns, or its error, with RecBole's methods in place of fix 13's rewrites
    (every other fix stays): what stock RecBole does on pandas 3."""

    def load(name: str) -> dict | str:
        with monkeypatch.context() as patch:
            for key, rewrite in compat._PER_CELL_LENGTH_METHODS.items():
                owner = getattr(importlib.import_module(key[0]), key[1])
                assert owner.__dict__[key[2]] is rewrite  # the fix is in place until now
                patch.setattr(owner, key[2], _stock_recbole_method(*key))
            try:
                return _load(scenario_root, name)[1]
            except Exception as error:  # stock failing is what is observed
                return f"{type(error).__name__}: {error}"

    return load


@pytest.mark.parametrize("name,limit", [("pre_split", None), ("pre_split_seq_len", 3)])
def test_pre_split_sequences_get_each_rows_length(scenario_root, without_seq_lengths, name, limit):
    # Stock on pandas 3: every row's item_length was the number of rows (7), silently.
    dataset, columns = _load(scenario_root, name)
    histories = [history[:limit] for history in PRE_SPLIT_HISTORIES]  # seq_len keeps the first
    assert columns["inter_feat.item_length"] == [len(h) for h in histories]
    item_lists = dataset.inter_feat["item_id_list"]
    assert [list(dataset.id2token("item_id", ids)) for ids in item_lists] == histories

    # What training and evaluation read: the parts of the built dataset, lengths and items agree.
    parts = dataset.build()
    assert [len(part) for part in parts] == [len(rows) for rows in PRE_SPLIT.values()]
    for part in parts:
        lengths = part.inter_feat["item_length"]
        torch.testing.assert_close(lengths, (part.inter_feat["item_id_list"] > 0).sum(dim=1))
    assert torch.cat([part.inter_feat["item_length"] for part in parts]).tolist() == [
        len(h) for h in histories
    ]

    stock = without_seq_lengths(name)
    assert stock["inter_feat.item_length"] == [float(len(histories))] * len(histories)


def test_kg_pre_split_item_lists_are_remapped_row_by_row(scenario_root, without_seq_lengths):
    # GRU4RecKG / KSR datasets merge item and entity ids; stock crashed splitting item_id_list.
    dataset, columns = _load(scenario_root, "pre_split_kg")
    assert columns["inter_feat.item_length"] == [len(h) for h in PRE_SPLIT_HISTORIES]
    item_lists = dataset.inter_feat["item_id_list"]
    assert [list(dataset.id2token("item_id", ids)) for ids in item_lists] == PRE_SPLIT_HISTORIES
    next_items = [row[2] for part in PRE_SPLIT.values() for row in part]
    assert list(dataset.id2token("item_id", dataset.inter_feat["item_id"])) == next_items
    assert dataset.field2id_token["item_id_list"] is dataset.field2id_token["item_id"]

    stock = without_seq_lengths("pre_split_kg")
    assert isinstance(stock, str) and stock.startswith("ValueError: Length of values")


def _expected_prices(name: str) -> list:
    """The price column by item (raw ids 1-4, [PAD] first) as RecBole means it."""
    every = np.concatenate(list(PRICES.values()))
    low, high = every.min(), every.max()
    cells = []
    for values in [np.array([]), *map(np.array, PRICES.values())]:
        if name.startswith("float_seq_normalize"):
            cells.append(((values - low) / (high - low)).tolist())
        elif name == "float_seq_discretized":  # equal-width buckets 1..3: (1, bucket)
            buckets = np.floor((values - low) * 3 / (high + 1e-9 - low) + 1)
            cells.append([np.ones_like(values).tolist(), buckets.tolist()])
        else:  # a numerical feature as it is: (value, 1)
            cells.append([values.tolist(), np.ones_like(values).tolist()])
    return cells


@pytest.mark.parametrize(
    "name",
    [
        "float_seq_normalize_field",
        "float_seq_normalize_all",
        "float_seq_discretized",
        "float_seq_numerical",
    ],
)
def test_float_seq_fields_are_scaled_cell_by_cell(scenario_root, without_seq_lengths, name):
    # Stock on pandas 3 crashed splitting the scaled values back into cells.
    dataset, columns = _load(scenario_root, name)
    order = [dataset.token2id("item_id", item) for item in ["[PAD]", *PRICES]]
    by_item = [columns["item_feat.price"][row] for row in order]
    for got, want in zip(by_item, _expected_prices(name), strict=True):
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-12)
    if name == "float_seq_discretized":
        assert dataset.field2bucketnum["price"] == 4
    if name == "float_seq_normalize_all":  # float fields are normalised too
        stamps = np.array([10 * u + i for u in range(1, 5) for i in range(1, 5)], dtype=float)
        expected = (stamps - stamps.min()) / (stamps.max() - stamps.min())
        np.testing.assert_allclose(columns["inter_feat.timestamp"], expected)
    dataset.build()  # the cells convert to tensors

    stock = without_seq_lengths(name)
    assert isinstance(stock, str) and stock.startswith("ValueError: Length of values")


@pytest.mark.parametrize("name", ["float_normalize_all", "float_discretized"])
def test_float_fields_are_processed_as_stock_recbole_does(scenario_root, without_seq_lengths, name):
    # The rewritten _normalize and _discretization change nothing where stock worked.
    _, columns = _load(scenario_root, name)
    assert columns == without_seq_lengths(name)
    assert len(set(map(str, columns["item_feat.weight"]))) > 2  # values that differ per item


def test_importing_recbole_ext_changes_nothing_outside_it():
    """Only compat.apply() patches: a fresh interpreter that imports the package (and its glue
    modules) still has stock NumPy, SciPy, RecBole and torch; apply() then patches them."""
    script = (
        "import numpy as np, scipy.sparse as sp, torch\n"
        "import recbole_ext, recbole_ext.data, recbole_ext.training, recbole_ext.registry\n"
        "from recbole.config import configurator\n"
        "from recbole.evaluator import register\n"
        "before = dict(alias='float' in np.__dict__, dok=hasattr(sp.dok_matrix, '_update'),\n"
        "    cmd=configurator.Config._load_cmd_line.__module__, metric='recallcap' in\n"
        "    register.metrics_dict, anomaly=torch.is_anomaly_enabled())\n"
        "from recbole_ext import compat\n"
        "compat.apply()\n"
        "after = dict(alias='float' in np.__dict__, dok=hasattr(sp.dok_matrix, '_update'),\n"
        "    cmd=configurator.Config._load_cmd_line.__module__, metric='recallcap' in\n"
        "    register.metrics_dict, anomaly=torch.is_anomaly_enabled())\n"
        "print(before); print(after)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = (eval(line) for line in done.stdout.strip().splitlines()[-2:])
    assert before == {
        "alias": False,
        "dok": False,
        "cmd": "recbole.config.configurator",
        "metric": False,
        "anomaly": False,
    }
    assert after["alias"] and after["dok"] and after["metric"]
    assert after["cmd"] == "recbole_ext.compat" and not after["anomaly"]


def test_apply_refuses_another_recbole(monkeypatch):
    import recbole

    from recbole_ext import compat

    monkeypatch.setattr(recbole, "__version__", "1.3.0")
    with pytest.raises(compat.IncompatibleRecBole, match="written for RecBole 1.2.1"):
        compat.check_recbole_version()
