"""LightGCN and NGCF on CSR products: the same numbers as RecBole's classes, and a harness run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.general_recommender.lightgcn import LightGCN as RecBoleLightGCN
from recbole.model.general_recommender.ngcf import NGCF as RecBoleNGCF
from recbole.utils import init_seed

from bench import api
from recbole_ext import registry
from recbole_ext.layers.graph import (
    csr_identity,
    csr_matmul,
    drop_edges,
    normalized_adjacency,
    transpose_positions,
)
from recbole_ext.models.lightgcn import LightGCN
from recbole_ext.models.ngcf import NGCF
from tests.helpers import ROOT, write_inter

PAIRS = {"LightGCN": (LightGCN, RecBoleLightGCN), "NGCF": (NGCF, RecBoleNGCF)}
TINY_SIZES = {
    "LightGCN": {"embedding_size": 8, "n_layers": 3},
    "NGCF": {"embedding_size": 8, "hidden_size_list": [8, 6]},
}
# Equality with RecBole: only the summation order of the sparse products differs.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 users, 25 items, 5-10 interactions each, one repeated interaction."""
    root = tmp_path_factory.mktemp("graph")
    rng = np.random.default_rng(0)
    rows = []
    for user in range(1, 31):
        items = rng.choice(np.arange(1, 26), size=int(rng.integers(5, 11)), replace=False)
        rows += [(user, int(item), float(t)) for t, item in enumerate(items)]
    rows.append((rows[0][0], rows[0][1], 99.0))  # a repeat: one edge, as in RecBole
    write_inter(root, "tiny", rows)
    return root


def _setup(root: Path, model: str, **settings: Any) -> tuple[Any, Any, Any]:
    """(config, training dataset, one training batch with negatives) for ``model``."""
    config = Config(
        model=PAIRS[model][1],
        dataset="tiny",
        config_file_list=[str(ROOT / "configs" / "models" / f"{model}.yaml")],
        config_dict={
            "data_path": str(root),
            "checkpoint_dir": str(root / "ck"),
            "eval_args": {
                "split": {"RS": [0.8, 0.1, 0.1]},
                "order": "RO",
                "group_by": "user",
                "mode": "full",
            },
            "train_batch_size": 64,
            "show_progress": False,
            **TINY_SIZES[model],
            **settings,
        },
    )
    init_seed(0, True)
    train, _, _ = data_preparation(config, create_dataset(config))
    return config, train._dataset, next(iter(train))


def _both(root: Path, model: str, **settings: Any) -> tuple[Any, Any, Any]:
    """(ours, RecBole's, a training batch), built from the same seed: the same weights."""
    config, dataset, batch = _setup(root, model, **settings)
    ours_cls, theirs_cls = PAIRS[model]
    init_seed(0, True)
    ours = ours_cls(config, dataset)
    init_seed(0, True)
    theirs = theirs_cls(config, dataset)
    return ours, theirs, batch


def _loss_and_grads(model: Any, batch: Any, seed: int) -> tuple[torch.Tensor, dict]:
    model.train()
    model.zero_grad()
    torch.manual_seed(seed)  # the same dropout draws for both models
    loss = model.calculate_loss(batch)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_registry_resolves_both_names_to_these_classes() -> None:
    for name, (cls, _) in PAIRS.items():
        spec = registry.get(name)
        assert spec.cls is cls and spec.source == "recbole_ext" and spec.family == "general"


@pytest.mark.parametrize("model", sorted(PAIRS))
def test_adjacency_is_recboles_matrix_in_csr(data_root: Path, model: str) -> None:
    ours, theirs, _ = _both(data_root, model)
    matrix = ours.norm_adj_matrix
    assert matrix.layout == torch.sparse_csr and matrix.dtype == torch.float32
    assert matrix.crow_indices().dtype == torch.int32
    # Bit for bit: the same float64 products rounded to float32.
    assert torch.equal(matrix.to_dense(), theirs.norm_adj_matrix.to_dense())


def test_normalized_adjacency_by_hand() -> None:
    # 2 users, 3 items; user 1 has item 0 twice (one edge) and item 2; user 0 has item 2.
    matrix = normalized_adjacency(
        np.array([1, 1, 1, 0]), np.array([0, 0, 2, 2]), n_users=2, n_items=3
    ).to_dense()
    degree = np.array([1, 2, 1, 0, 2]) + 1e-7  # users 0, 1, then items 0, 1, 2
    expected = np.zeros((5, 5))
    for user, item in [(1, 0), (1, 2), (0, 2)]:
        value = 1 / math.sqrt(degree[user] * degree[2 + item])
        expected[user, 2 + item] = expected[2 + item, user] = value
    np.testing.assert_allclose(matrix.numpy(), expected, rtol=1e-7)


def test_state_dict_and_initial_weights_are_recboles(data_root: Path) -> None:
    for model in PAIRS:
        ours, theirs, _ = _both(data_root, model)
        mine, recboles = ours.state_dict(), theirs.state_dict()
        assert list(mine) == list(recboles)
        for key in mine:
            assert torch.equal(mine[key], recboles[key]), key
        ours.load_state_dict(recboles)  # a RecBole checkpoint loads as is


@pytest.mark.parametrize("model", sorted(PAIRS))
def test_propagation_equals_recboles(data_root: Path, model: str) -> None:
    ours, theirs, _ = _both(data_root, model)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        for mine, recboles in zip(ours.forward(), theirs.forward(), strict=True):
            torch.testing.assert_close(mine, recboles, **TOLERANCE)


CASES = {
    "LightGCN": ("LightGCN", {}),
    "LightGCN-require-pow": ("LightGCN", {"require_pow": True, "n_layers": 1}),
    "NGCF": ("NGCF", {}),  # message dropout 0.1 (the default)
    "NGCF-node-dropout": ("NGCF", {"node_dropout": 0.3}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_and_gradients_equal_recboles(data_root: Path, case: str) -> None:
    model, settings = CASES[case]
    ours, theirs, batch = _both(data_root, model, **settings)
    if model == "NGCF":
        # RecBole draws the node-dropout mask over its COO values: the same order as our CSR.
        rows, cols = theirs.norm_adj_matrix._indices()
        keys = rows * theirs.norm_adj_matrix.size(1) + cols
        assert bool((keys[1:] > keys[:-1]).all())
    for seed in (1, 2):  # two steps' draws
        loss, grads = _loss_and_grads(ours, batch, seed)
        recbole_loss, recbole_grads = _loss_and_grads(theirs, batch, seed)
        torch.testing.assert_close(loss, recbole_loss, **TOLERANCE)
        assert list(grads) == list(recbole_grads)
        for name, grad in grads.items():
            assert grad.abs().sum() > 0, name  # every parameter is reached
            torch.testing.assert_close(grad, recbole_grads[name], **TOLERANCE, msg=name)


def test_node_dropout_changes_the_loss_only_in_training(data_root: Path) -> None:
    ours, _, batch = _both(data_root, "NGCF", node_dropout=0.3, message_dropout=0.0)
    plain, _, _ = _both(data_root, "NGCF", node_dropout=0.0, message_dropout=0.0)
    dropped_loss, _ = _loss_and_grads(ours, batch, seed=1)
    plain_loss, _ = _loss_and_grads(plain, batch, seed=1)
    assert not torch.allclose(dropped_loss, plain_loss)
    ours.eval(), plain.eval()
    with torch.no_grad():
        for mine, reference in zip(ours.forward(), plain.forward(), strict=True):
            assert torch.equal(mine, reference)


@pytest.mark.parametrize("model", sorted(PAIRS))
def test_full_sort_predict_equals_recboles_and_is_cached(data_root: Path, model: str) -> None:
    settings = {"node_dropout": 0.3} if model == "NGCF" else {}
    ours, theirs, batch = _both(data_root, model, **settings)
    for m in (ours, theirs):  # one identical training step, so the weights are not the init's
        _loss_and_grads(m, batch, seed=3)
        torch.optim.SGD(m.parameters(), lr=0.1).step()
        m.eval()
    users = {ours.USER_ID: torch.arange(1, ours.n_users)}
    with torch.no_grad():
        scores = ours.full_sort_predict(users)
        # Scores near 0 after a step: an absolute bound (1e-5, the scores are ~1e-2 to 1).
        torch.testing.assert_close(scores, theirs.full_sort_predict(users), rtol=0, atol=1e-5)
        assert scores.shape == ((ours.n_users - 1) * ours.n_items,)
        assert ours.restore_user_e is not None and ours.restore_item_e is not None

        def no_propagation() -> None:
            raise AssertionError("full_sort_predict propagated again instead of using its cache")

        ours.forward = no_propagation  # type: ignore[method-assign]
        assert torch.equal(ours.full_sort_predict(users), scores)
        del ours.forward
    ours.train()
    ours.calculate_loss(batch)  # training clears the cache, as in RecBole
    assert ours.restore_user_e is None and ours.restore_item_e is None


def test_csr_matmul_backward_uses_the_given_transpose() -> None:
    dense_matrix = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 3.0], [0.0, 4.0, 0.0]])
    matrix, transposed = dense_matrix.to_sparse_csr(), dense_matrix.T.contiguous().to_sparse_csr()
    x = torch.randn(3, 2, requires_grad=True)
    weights = torch.randn(3, 2)
    (csr_matmul(matrix, x, transposed) * weights).sum().backward()
    torch.testing.assert_close(x.grad, dense_matrix.T @ weights)
    x.grad = None
    # Without a transpose the matrix is taken as symmetric (its own transpose).
    (csr_matmul(matrix, x) * weights).sum().backward()
    torch.testing.assert_close(x.grad, dense_matrix @ weights)


def test_drop_edges_zeroes_and_rescales_and_transposes(data_root: Path) -> None:
    ours, _, _ = _both(data_root, "NGCF")
    matrix = ours.norm_adj_matrix
    torch.manual_seed(0)
    dropped, transposed = drop_edges(matrix, transpose_positions(matrix), drop_prob=0.25)
    full, kept = matrix.to_dense(), dropped.to_dense()
    assert torch.equal(dropped.col_indices(), matrix.col_indices())  # the indices are kept
    assert torch.equal(transposed.to_dense(), kept.T)
    on_graph = full != 0
    zeroed = on_graph & (kept == 0)
    share = zeroed.sum().item() / on_graph.sum().item()
    assert 0.15 < share < 0.35  # ~600 edges, p = 0.25
    torch.testing.assert_close(kept[on_graph & ~zeroed], full[on_graph & ~zeroed] / 0.75)
    assert not bool(torch.equal(kept, kept.T))  # each direction is dropped on its own


def test_ngcf_eye_matrix_is_a_csr_identity(data_root: Path) -> None:
    ours, _, _ = _both(data_root, "NGCF")
    n = ours.n_users + ours.n_items
    assert ours.eye_matrix.layout == torch.sparse_csr
    assert torch.equal(ours.eye_matrix.to_dense(), torch.eye(n))
    assert torch.equal(csr_identity(3).to_dense(), torch.eye(3))


HARNESS = {"train_sample_limit": 2000, "eval_user_limit": 100, "train_batch_size": 512}


@pytest.mark.parametrize(
    ("model", "settings"),
    [
        ("LightGCN", {"embedding_size": 8, "n_layers": 2}),
        ("NGCF", {"embedding_size": 8, "hidden_size_list": [8, 8], "node_dropout": 0.2}),
    ],
)
def test_trains_end_to_end_through_the_harness(
    tmp_path: Path, model: str, settings: dict[str, Any]
) -> None:
    summary = api.run([model], "ml-100k", epochs=1, settings={**HARNESS, **settings}, out=tmp_path)
    (result,) = summary.results
    assert result.ok, result.error
    assert result.source == "recbole_ext" and result.model_class == model
    assert result.test and all(math.isfinite(v) for v in result.test.values())
    (epoch,) = result.epochs
    assert math.isfinite(epoch.train_loss)
    for key, value in settings.items():
        assert result.config[key] == value
