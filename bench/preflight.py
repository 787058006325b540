"""The one pre-flight of every run, whoever starts it (``bench run``, ``tune``, ``ablate``,
``plan``, a Ray worker): settings -> paths -> prepare -> checks.

- settings: ``--set`` values and ``--epochs`` become the overrides of every run;
- paths: ``--config`` files are resolved and read, seeds and a run name are checked;
- prepare (:func:`prepare`): each (model, seed) is resolved against the registry, the config
  tree (:class:`~bench.configs.ConfigTree`) and the data folders, its harness keys parsed into
  :class:`~recbole_ext.data.HarnessSettings`;
- checks: every override (and every key a search or a grid will set) must mean something to
  RecBole or to one of the models.

So bad input fails with one :class:`BenchError` before anything trains.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import allocator, configs
from bench.configs import ConfigTree
from bench.contract import PLACEMENT_KEYS, RunOptions
from bench.datasets import check_atomic_header, locate
from bench.errors import BenchError
from recbole_ext import compat, registry
from recbole_ext.data import HarnessSettings

# Harness keys RecBole's Config never sees (models read train_regime: it stays).
_HARNESS_ONLY_KEYS = frozenset(HarnessSettings.keys()) - HarnessSettings.MODEL_KEYS


@dataclass
class PreparedRun:
    """A run's options resolved against the registry, the config tree and the data folders."""

    options: RunOptions
    spec: registry.ModelSpec
    # Every key the layers and overrides set, the harness's included: what the run was asked.
    config_dict: dict[str, Any]
    settings: HarnessSettings  # the harness keys of config_dict, parsed
    data_name: str  # the RecBole dataset (folder and file prefix) the files come from
    data_path: Path
    data_source: str
    known_keys: set[str]

    @property
    def recbole_config(self) -> dict[str, Any]:
        """What RecBole's ``Config`` gets: every key but the harness's own."""
        return {k: v for k, v in self.config_dict.items() if k not in _HARNESS_ONLY_KEYS}


@dataclass
class Preflight:
    """The prepared runs, and the overrides every one of them was asked with."""

    runs: list[PreparedRun]
    overrides: dict[str, Any]
    config_files: list[Path]


def resolve_device(device: str) -> Any:
    import torch

    if device in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise BenchError(
            f"--device {device!r} is not a device (auto, cpu, cuda or cuda:N)"
        ) from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise BenchError(f"--device {device} requested but CUDA is not available here")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise BenchError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    elif resolved.type != "cpu":
        raise BenchError(f"--device {device!r} is not supported (auto, cpu, cuda or cuda:N)")
    return resolved


def model_spec(name: str) -> registry.ModelSpec:
    """The registered model ``name``, or a BenchError suggesting close names."""
    try:
        return registry.get(name)
    except registry.UnknownModelError as exc:
        raise BenchError(str(exc)) from exc


def model_defaults_file(spec: registry.ModelSpec, tree: ConfigTree) -> Path | None:
    """``<tree>/models/<Model>.yaml``, else a ``<Model>.yaml`` beside a third-party class."""
    path = tree.model_file(spec.name)
    if path is not None:
        return path
    beside = Path(sys.modules[spec.cls.__module__].__file__ or "").parent / f"{spec.name}.yaml"
    return beside if beside.is_file() else None


def check_settings(settings: dict[str, Any], runs: list[PreparedRun]) -> None:
    """Every ``--set`` key must be known to RecBole or to the config of at least one model run."""
    known = set().union(*(run.known_keys for run in runs)) if runs else set()
    models = ", ".join(sorted({run.spec.name for run in runs}))
    for key in settings:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.7)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise BenchError(f"unknown setting {key!r} (not used by RecBole or {models}){hint}")


def prepare(options: RunOptions) -> PreparedRun:
    """Resolve and check everything about one run that can be checked before training starts."""
    compat.apply()  # RecBole on today's stack, before any model or dataset class is touched
    tree = options.config_tree
    spec = model_spec(options.model)
    has_config = tree.has_dataset_config(options.dataset)
    found = None
    if not has_config:  # a user's own data folder runs under the default protocol
        try:
            found = locate(options.dataset, options.data_dir)
        except BenchError:
            found = None
    dataset_keys, harness = tree.dataset_settings(options.dataset, has_data=found is not None)
    # A protocol variant (ml-1m-strong) reads the files of another dataset (ml-1m).
    data_name = str(harness.get("data", options.dataset))
    layers: list[dict[str, Any]] = [configs.load_yaml(tree.defaults_file), dataset_keys]
    model_path = model_defaults_file(spec, tree)
    if model_path is not None:
        model_keys = configs.load_yaml(model_path)
        clashing = sorted(set(model_keys) & configs.PROTOCOL_KEYS)
        if clashing:
            raise BenchError(
                f"{model_path} sets protocol key(s) {', '.join(clashing)}; "
                "those belong to the dataset config"
            )
        layers.append(model_keys)
    if options.tuned_from is not None:
        tuned = configs.tuned_file(options.tuned_from, options.dataset, spec.name)
        if not tuned.is_file():
            raise BenchError(
                f"--tuned: no {tuned} for {spec.name} on {options.dataset}; run bench tune "
                f"with --out {Path(options.tuned_from).parent} first"
            )
        layers.append(configs.load_yaml(tuned))
    if options.quick:
        layers.append(configs.load_yaml(tree.quick_file))
    layers.extend(configs.load_yaml(path) for path in options.config_files)

    known = configs.recbole_known_keys(spec.name) | set(HarnessSettings.keys())
    for layer in layers:
        known |= set(layer)

    config_dict: dict[str, Any] = {}
    for layer in layers:
        config_dict.update(layer)
    config_dict.update(options.settings)

    device = resolve_device(options.device)
    config_dict.update(
        seed=options.seed,
        device=str(device),
        use_gpu=device.type == "cuda",
        gpu_id="" if device.type == "cpu" else str(device.index or 0),
    )
    if int(config_dict.get("epochs", 1)) < 1:
        raise BenchError(f"epochs must be at least 1, got {config_dict['epochs']}")
    bound_pretraining(config_dict, options.settings)
    try:
        settings = HarnessSettings.from_mapping(config_dict)
    except ValueError as exc:
        raise BenchError(str(exc)) from exc

    location = found or locate(data_name, options.data_dir, harness.get("how_to_get", ""))
    inter = location.folder(data_name) / f"{data_name}.inter"
    load_col = (config_dict.get("load_col") or {}).get("inter")
    required = (
        list(load_col)
        if load_col
        else [
            config_dict.get("USER_ID_FIELD", "user_id"),
            config_dict.get("ITEM_ID_FIELD", "item_id"),
        ]
    )
    check_atomic_header(inter, required)
    if settings.heldout_users is not None and spec.family == "sequential":
        raise BenchError(
            f"{options.dataset} holds out whole users (strong generalization), which needs a "
            f"general model; {spec.name} is sequential"
        )
    return PreparedRun(
        options,
        spec,
        config_dict,
        settings,
        data_name,
        location.data_path,
        location.source,
        known,
    )


def bound_pretraining(config_dict: dict[str, Any], settings: dict[str, Any]) -> None:
    """``--epochs N`` (or ``--set epochs=N``) bounds every stage of a two-stage model:
    fine-tuning gets N epochs and pre-training min(N, pretrain_epochs), unless
    ``pretrain_epochs`` is set explicitly too."""
    if "epochs" in settings and "pretrain_epochs" in config_dict:
        if "pretrain_epochs" not in settings:
            epochs = int(settings["epochs"])
            config_dict["pretrain_epochs"] = min(epochs, int(config_dict["pretrain_epochs"]))


def resolve_models(
    models: str | Sequence[str], dataset: str, tree: ConfigTree | None = None
) -> list[str]:
    """``"all"`` -> the dataset's suite; ``"A,B"`` or ``["A", "B"]`` -> those names."""
    names = models.split(",") if isinstance(models, str) else list(models)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return (tree or ConfigTree.default()).suite(dataset)
    if not names:
        raise BenchError("no model given (--models all or --models A,B)")
    return names


_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def check_run_name(name: str, models: list[str]) -> None:
    """A run name labels one model's runs and becomes a folder: letters, digits, ``._+-``."""
    if len(models) != 1:
        raise BenchError(f"--name labels one model's runs, but {len(models)} models were given")
    if not _RUN_NAME.fullmatch(name):
        raise BenchError(f"run name {name!r}: use letters, digits and . _ + - (at most 100)")


def resume_settings(prepared: PreparedRun) -> dict[str, Any]:
    """What ``--resume`` compares an existing result's config with: the settings a run computes
    with, and its training budget (a run cut off by a smaller one is run again)."""
    config = prepared.config_dict
    wanted = {k: v for k, v in config.items() if k not in PLACEMENT_KEYS}
    wanted["time_budget_s"] = prepared.settings.time_budget_s
    return wanted


def preflight(
    models: Sequence[str],
    dataset: str,
    *,
    seeds: Sequence[int] = (0,),
    settings: dict[str, Any] | None = None,
    epochs: int | None = None,
    config_files: Sequence[str | Path] = (),
    quick: bool = False,
    tuned_from: Path | None = None,
    device: str = "auto",
    data_dir: str | Path | None = None,
    cache_dir: Path | None = None,
    name: str | None = None,
    checkpoint_root: Path | None = None,
    resume: bool = False,
    searched: Sequence[str] = (),
    searched_by: str = "searched",
    config_tree: ConfigTree | None = None,
    concurrent_runs: int = 1,
) -> Preflight:
    """Settings -> paths -> prepare -> checks for every (model, seed). ``searched`` names the
    keys a search or a grid (``searched_by`` says which, for the error) will set on top: they
    may not be fixed by the overrides too, and are checked as the overrides are."""
    allocator.requested()  # a bad BENCH_MALLOC is refused here, not inside the first run
    tree = config_tree or ConfigTree.default()
    overrides = dict(settings or {})
    if epochs is not None:
        overrides["epochs"] = epochs
    clashing = sorted(set(searched) & set(overrides))
    if clashing:
        raise BenchError(f"{', '.join(clashing)}: both {searched_by} and fixed by --set/--epochs")
    config_paths = [Path(p).resolve() for p in config_files]
    for path in config_paths:
        configs.load_yaml(path)
    if not seeds:
        raise BenchError("no seed given")
    if name is not None:
        check_run_name(name, list(models))
    runs = [
        prepare(
            RunOptions(
                dataset=dataset,
                model=model,
                seed=int(seed),
                settings=overrides,
                config_files=config_paths,
                quick=quick,
                tuned_from=tuned_from,
                device=device,
                data_dir=str(data_dir) if data_dir is not None else None,
                cache_dir=cache_dir,
                name=name,
                checkpoint_root=checkpoint_root,
                resume=resume,
                concurrent_runs=concurrent_runs,
                config_tree=tree,
            )
        )
        for model in models
        for seed in seeds
    ]
    check_settings({**overrides, **dict.fromkeys(searched)}, runs)
    return Preflight(runs, overrides, config_paths)
