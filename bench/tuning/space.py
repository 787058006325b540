"""Search spaces: ``configs/search/<Model>.yaml`` (of a :class:`~bench.configs.ConfigTree`) ->
Optuna distributions.

Each top-level key is a RecBole or model config key, mapped to one distribution::

    learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    dropout_prob: {type: float, low: 0.0, high: 0.5, step: 0.1}
    n_layers: {type: int, low: 1, high: 3}
    hidden_size: {type: categorical, choices: [32, 64, 128]}

Categorical choices may also be lists or mappings (layer widths, say). Optuna stores only
scalars, so such choices are kept as their JSON text in the study and decoded for the run.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import configs
from bench.configs import ConfigTree
from bench.errors import BenchError

TYPES = ("float", "int", "categorical")
_ALLOWED = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}


@dataclass(frozen=True)
class SearchSpace:
    """The distributions of one model's search, and where they came from."""

    source: str
    distributions: dict[str, Any]  # key -> optuna.distributions.BaseDistribution
    encoded: frozenset[str]  # categorical keys whose choices are stored as JSON text

    def settings(self, params: dict[str, Any]) -> dict[str, Any]:
        """A trial's params as run settings (JSON-encoded choices decoded)."""
        return {k: json.loads(v) if k in self.encoded else v for k, v in params.items()}

    def grid(self) -> dict[str, list[Any]]:
        """Every value of every key, for Optuna's GridSampler; continuous keys are refused."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        grid: dict[str, list[Any]] = {}
        for key, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                grid[key] = list(dist.choices)
            elif dist.step is None or (isinstance(dist, FloatDistribution) and dist.log):
                raise BenchError(
                    f"{self.source}: {key}: --sampler grid needs a step (or categorical choices) "
                    "for every key"
                )
            else:
                count = int(round((dist.high - dist.low) / dist.step)) + 1
                grid[key] = [dist.low + i * dist.step for i in range(count)]
                if isinstance(dist, FloatDistribution):
                    # Round away float noise so the values match what the space would suggest.
                    grid[key] = [round(v, 12) for v in grid[key]]
        return grid

    def describe(self) -> dict[str, Any]:
        """JSON-able description, kept on the study so a resumed run can compare."""
        from optuna.distributions import distribution_to_json

        return {k: json.loads(distribution_to_json(d)) for k, d in self.distributions.items()}


def load_space(
    model: str, path: str | os.PathLike | None = None, tree: ConfigTree | None = None
) -> SearchSpace:
    """Read ``path``, else the tree's ``search/<model>.yaml`` (default tree: the repository's),
    into a :class:`SearchSpace`."""
    file = Path(path) if path is not None else (tree or ConfigTree.default()).search_file(model)
    if not file.is_file():
        raise BenchError(
            f"no search space for {model}: {file} does not exist "
            "(one key per line, e.g. learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2})"
        )
    return parse_space(configs.load_yaml(file), str(file))


def _number(source: str, key: str, entry: dict[str, Any], name: str, integer: bool) -> Any:
    if name not in entry:
        raise BenchError(f"{source}: {key}: missing '{name}'")
    value = entry[name]
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or (not integer and not math.isfinite(value)):
        kind = "an integer" if integer else "a number"
        raise BenchError(f"{source}: {key}: '{name}' must be {kind}, got {value!r}")
    return value


def _distribution(source: str, key: str, entry: Any) -> tuple[Any, bool]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not isinstance(entry, dict):
        raise BenchError(
            f"{source}: {key}: expected a mapping like {{type: float, low: ..., high: ...}}, "
            f"got {entry!r}"
        )
    kind = entry.get("type")
    if kind not in TYPES:
        raise BenchError(f"{source}: {key}: unknown type {kind!r} (one of {', '.join(TYPES)})")
    extra = sorted(set(entry) - _ALLOWED[kind])
    if extra:
        raise BenchError(f"{source}: {key}: unknown field(s) {', '.join(extra)} for type {kind}")
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise BenchError(f"{source}: {key}: 'choices' must be a non-empty list")
        encoded = any(isinstance(c, list | dict) for c in choices)
        if encoded:
            choices = [json.dumps(c) for c in choices]
        if len(set(map(repr, choices))) != len(choices):
            raise BenchError(f"{source}: {key}: 'choices' has duplicates")
        return CategoricalDistribution(choices), encoded

    integer = kind == "int"
    low = _number(source, key, entry, "low", integer)
    high = _number(source, key, entry, "high", integer)
    log = entry.get("log", False)
    step = entry.get("step")
    if not isinstance(log, bool):
        raise BenchError(f"{source}: {key}: 'log' must be true or false, got {log!r}")
    if low > high:
        raise BenchError(f"{source}: {key}: low ({low}) > high ({high})")
    if log and low <= 0:
        raise BenchError(f"{source}: {key}: a log scale needs low > 0, got {low}")
    if step is not None:
        step = _number(source, key, entry, "step", integer)
        if step <= 0:
            raise BenchError(f"{source}: {key}: 'step' must be positive, got {step}")
        if log and not integer:
            raise BenchError(f"{source}: {key}: 'step' and 'log' cannot be combined for floats")
    try:
        if integer:
            return IntDistribution(low, high, log=log, step=step or 1), False
        return FloatDistribution(float(low), float(high), log=log, step=step), False
    except ValueError as exc:  # Optuna's own checks (e.g. a step that does not divide the range)
        raise BenchError(f"{source}: {key}: {exc}") from exc


def parse_space(data: dict[str, Any], source: str = "search space") -> SearchSpace:
    """A mapping of key -> distribution entry (as in the YAML files) into a SearchSpace."""
    distributions: dict[str, Any] = {}
    encoded: set[str] = set()
    for key, entry in data.items():
        distributions[str(key)], is_encoded = _distribution(source, str(key), entry)
        if is_encoded:
            encoded.add(str(key))
    return SearchSpace(source, distributions, frozenset(encoded))
