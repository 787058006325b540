"""The YAML configuration tree, in RecBole's conventions.

``configs/defaults.yaml``           settings of the harness that apply to every run
``configs/datasets/<name>.yaml``    fields, filtering, split protocol, metrics, cutoffs, validation
                                    metric; harness-only keys sit under a top-level ``bench:`` key
``configs/models/<Model>.yaml``     a model's defaults (never the protocol keys above)
``configs/search/<Model>.yaml``     a model's search space for ``bench tune``
``configs/suites.yaml``             what ``--models all`` means for each dataset
``configs/quick.yaml``              the ``--quick`` smoke setting
``configs/protocol-default.yaml``   the protocol of a user's dataset that has no config file

Later files override earlier ones: defaults < dataset < model < tuned < quick < ``--config``
files, and ``--epochs`` / ``--set`` override every file. The tuned files are not part of the
tree: ``bench tune --out OUT`` writes them to ``OUT/tuned/<dataset>/<Model>.yaml`` and
``bench run --tuned --out OUT`` reads them from there.

The tree is a :class:`ConfigTree` object handed to what reads it, never a module global.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.errors import BenchError

# The repository's tree, and the variable that points runs at another one.
PACKAGE_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIG_DIR_ENV = "BENCH_CONFIG_DIR"

# Keys a dataset file fixes for every model: a model file that sets one would change the protocol.
PROTOCOL_KEYS = frozenset(
    {
        "eval_args",
        "metrics",
        "topk",
        "valid_metric",
        "load_col",
        "user_inter_num_interval",
        "item_inter_num_interval",
        "val_interval",
        "USER_ID_FIELD",
        "ITEM_ID_FIELD",
        "TIME_FIELD",
        "exclude_history_items",
        # How much history a sequential model sees is part of the protocol: a model file that
        # shortened it would put its row on another benchmark than the rest of the board.
        "MAX_ITEM_LIST_LENGTH",
        "heldout_users",
    }
)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float, as RecBole's loader does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping, or raise a one-line BenchError naming the file and the problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BenchError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BenchError(f"malformed YAML in {path}{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BenchError(f"malformed YAML in {path}: expected a mapping of keys to values")
    return data


def parse_value(text: str) -> Any:
    """A ``--set`` value as YAML: ``0.1`` is a float, ``[1, 2]`` a list, ``~`` None."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> ``{key: value}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


@dataclass(frozen=True)
class ConfigTree:
    """One configuration tree (``root`` holds ``defaults.yaml``, ``datasets/``, ``models/`` ...),
    passed to whatever reads it: a notebook or a test points a run at its own copy by passing
    another tree, and a Ray worker gets its driver's root in its job."""

    root: Path

    @classmethod
    def default(cls) -> ConfigTree:
        """``$BENCH_CONFIG_DIR`` if set (read now, not at import), else the repository's."""
        return cls(Path(os.environ.get(CONFIG_DIR_ENV) or PACKAGE_CONFIG_DIR))

    def _names(self, folder: str) -> list[str]:
        return sorted(p.stem for p in (self.root / folder).glob("*.yaml"))

    def dataset_names(self) -> list[str]:
        return self._names("datasets")

    def has_dataset_config(self, name: str) -> bool:
        return (self.root / "datasets" / f"{name}.yaml").is_file()

    def dataset_file(self, name: str, has_data: bool = False) -> Path:
        """The dataset's config; for data with no config of its own, the default protocol."""
        path = self.root / "datasets" / f"{name}.yaml"
        if not path.is_file() and has_data:
            return self.root / "protocol-default.yaml"
        if not path.is_file():
            names = self.dataset_names()
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise BenchError(f"unknown dataset {name!r}{hint} (configured: {', '.join(names)})")
        return path

    def dataset_settings(
        self, name: str, has_data: bool = False
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(RecBole keys, harness keys) of a dataset's config file."""
        path = self.dataset_file(name, has_data)
        data = load_yaml(path)
        harness = data.pop("bench", None) or {}
        if not isinstance(harness, dict):
            raise BenchError(f"malformed dataset config {path}: 'bench' must be a mapping")
        return data, harness

    def model_file(self, name: str) -> Path | None:
        path = self.root / "models" / f"{name}.yaml"
        return path if path.is_file() else None

    def suite(self, dataset: str) -> list[str]:
        """The models ``--models all`` runs on this dataset."""
        path = self.root / "suites.yaml"
        suites = load_yaml(path)
        table = suites.get("datasets") or {}
        models = table.get(dataset, suites.get("default"))
        if not models:
            raise BenchError(f"{path} names no suite for {dataset!r} and has no 'default' suite")
        return list(models)

    def search_file(self, model: str) -> Path:
        """A model's search space for ``bench tune``."""
        return self.root / "search" / f"{model}.yaml"

    @property
    def defaults_file(self) -> Path:
        return self.root / "defaults.yaml"

    @property
    def quick_file(self) -> Path:
        return self.root / "quick.yaml"


def tuned_folder(out: str | os.PathLike) -> Path:
    """Where ``bench tune --out OUT`` exports best parameters and ``bench run --tuned`` reads
    them: ``<out>/tuned``, beside the results they were found for (never the source tree)."""
    return Path(out) / "tuned"


def tuned_file(folder: str | os.PathLike, dataset: str, model: str) -> Path:
    """``<folder>/<dataset>/<Model>.yaml`` of a tuned folder (:func:`tuned_folder`)."""
    return Path(folder) / dataset / f"{model}.yaml"


def recbole_known_keys(model_name: str) -> set[str]:
    """Every key RecBole's own property files define (overall, dataset and this model's)."""
    import recbole

    root = Path(recbole.__file__).parent / "properties"
    keys: set[str] = set()
    files = [root / "overall.yaml", root / "dataset" / "sample.yaml"]
    files.append(root / "model" / f"{model_name}.yaml")
    for path in files:
        if path.is_file():
            keys |= set(load_yaml(path))
    # Keys RecBole's Config sets or reads without a property file entry.
    keys |= {"model", "dataset", "data_path", "config_files", "device", "MODEL_TYPE"}
    return keys
