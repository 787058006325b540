"""Helpers shared by the tests: tiny atomic datasets and running the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Settings that make any built-in model train in seconds on a CPU.
TINY = {
    "hidden_size": 8,
    "inner_size": 16,
    "n_layers": 1,
    "MAX_ITEM_LIST_LENGTH": 10,
    "train_batch_size": 4096,
}


def write_inter(folder: Path, name: str, rows: list[tuple[int, int, float]]) -> Path:
    path = folder / name / f"{name}.inter"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{t}" for u, i, t in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None):
    """Run ``python -m bench ...`` in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("BENCH_DATA_DIR", None) if env is None or "BENCH_DATA_DIR" not in env else None
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=900,
    )


# --- the Mult-VAE family's tiny data and protocol ----------------------------------------------
VAE_USERS, VAE_ITEMS = 30, 40
VAE_PROTOCOL = {
    "eval_args": {
        "split": {"RS": [0.8, 0.1, 0.1]},
        "order": "RO",
        "group_by": "user",
        "mode": "full",
    },
    "metrics": ["RecallCap", "NDCG"],
    "topk": [5],
    "valid_metric": "NDCG@5",
    "train_batch_size": 16,
    "epochs": 2,
    "seed": 0,
    "show_progress": False,
}


def write_taste_groups(root: Path, name: str = "tiny") -> None:
    """VAE_USERS users in two taste groups over VAE_ITEMS items, so there is structure to learn."""
    import numpy as np

    rng = np.random.default_rng(0)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(VAE_USERS):
        pool = np.arange(0, 24) if u % 2 else np.arange(16, VAE_ITEMS)
        for ts, i in enumerate(rng.choice(pool, size=rng.integers(6, 12), replace=False)):
            lines.append(f"u{u}\ti{i}\t{ts}")
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / f"{name}.inter").write_text("\n".join(lines) + "\n")


def build_vae(tmp_path: Path, cls: type, model_settings: dict, **settings: object) -> tuple:
    """(config, train, valid, model) of ``cls`` on the taste-group data with its YAML defaults,
    ``model_settings`` and then ``settings`` over the tiny protocol."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    write_taste_groups(tmp_path)
    config_dict = {
        "data_path": str(tmp_path),
        "checkpoint_dir": str(tmp_path / "ck"),
        **VAE_PROTOCOL,
        **model_settings,
        **settings,
    }
    yaml_file = ROOT / "configs" / "models" / f"{cls.__name__}.yaml"
    config = Config(
        model=cls, dataset="tiny", config_file_list=[str(yaml_file)], config_dict=config_dict
    )
    init_seed(config["seed"], config["reproducibility"])
    train, valid, _ = data_preparation(config, create_dataset(config))
    return config, train, valid, cls(config, train._dataset)


# --- the sequential VAE / filter models' tiny data ---------------------------------------------
def sequential_setup(tmp: Path, cls: type, settings: dict, n_items: int = 25) -> tuple:
    """(config, train, test, one training batch, config snapshot) of ``cls`` with its YAML
    defaults and ``settings``, on 30 users' random sequences of 5-9 of ``n_items`` items, split
    leave-one-out. ``make_model`` restores the snapshot, so one test's overrides never leak."""
    import numpy as np
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    rng = np.random.default_rng(0)
    rows = []
    for user in range(1, 31):
        items = rng.choice(np.arange(1, n_items + 1), size=rng.integers(5, 10), replace=False)
        rows += [(user, int(i), float(t)) for t, i in enumerate(items)]
    write_inter(tmp, "tiny", rows)
    config = Config(
        model=cls,
        dataset="tiny",
        config_file_list=[str(ROOT / "configs" / "models" / f"{cls.__name__}.yaml")],
        config_dict={
            "data_path": str(tmp),
            "checkpoint_dir": str(tmp / "ck"),
            "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            **settings,
        },
    )
    init_seed(0, True)
    train, _, test = data_preparation(config, create_dataset(config))
    return config, train, test, next(iter(train)), dict(config.final_config_dict)


def make_model(setup: tuple, cls: type, **overrides: object) -> object:
    """A fresh ``cls`` from a ``sequential_setup``, seeded, with ``overrides`` on its config."""
    from recbole.utils import init_seed

    config, train = setup[0], setup[1]
    config.final_config_dict.update(setup[4])  # undo earlier tests' overrides
    for key, value in overrides.items():
        config[key] = value
    init_seed(0, True)
    return cls(config, train._dataset)


def train_steps(model: object, batch: object, steps: int, lr: float = 1e-2) -> tuple[list, list]:
    """``steps`` Adam steps on one batch: (losses, the model's loss terms after each step)."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses, terms = [], []
    for _ in range(steps):
        opt.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        terms.append(dict(model.last_loss_terms))
    return losses, terms


def trimmed_batch(batch: object) -> object:
    """The sequential batch padded only to its own longest sequence."""
    from recbole.data.interaction import Interaction

    width = int(batch["item_length"].max())
    return Interaction(
        {
            k: v[:, :width] if k.endswith("_list") and v.dim() == 2 else v
            for k, v in batch.interaction.items()
        }
    )


def assert_same_terms_when_trimmed(model: object, batch: object) -> None:
    """``model`` (in eval mode) gives the same loss terms, under the same seed, and the same
    full-ranking scores on ``batch`` and on it trimmed to its longest sequence."""
    import pytest
    import torch

    trimmed = trimmed_batch(batch)
    assert trimmed["item_id_list"].shape[1] < batch["item_id_list"].shape[1]
    terms = []
    for each in (batch, trimmed):
        torch.manual_seed(0)
        with torch.no_grad():
            model.calculate_loss(each)
        terms.append(model.last_loss_terms)
    assert terms[0].keys() == terms[1].keys()
    for name in terms[0]:
        assert terms[1][name] == pytest.approx(terms[0][name], rel=1e-5, abs=1e-6), name
    with torch.no_grad():
        scores = [model.full_sort_predict(each) for each in (batch, trimmed)]
    torch.testing.assert_close(scores[1], scores[0])
