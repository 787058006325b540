"""Ablation grids: every combination of a grid x seeds, compared with the full model.

A grid file (``configs/ablations/<Model>.yaml``)::

    # what the grid studies (these leading comment lines become the report's description)
    grid:
      key_a: [value1, value2]
      key_b: [v1, v2]

Runs go through :mod:`bench.executor` (in this process, worker processes or Ray tasks) and land in
``<out>/ablations/<dataset>/<Model>/variant-<i>/seed-<s>.json``; the report is
``<out>/ablations/<dataset>/<Model>.md`` and ``.csv``. The reference ("full model") is the variant
whose values are the model's defaults, else the grid's first combination; the report says which.
A difference "holds" when it has the same sign on every seed; with >= 3 seeds a paired t-test
across seeds (``scipy.stats.ttest_rel``, paired by seed) gives its p-value.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import configs
from bench.configs import ConfigTree
from bench.contract import RunError, RunResult, write_record
from bench.errors import BenchError
from bench.executor import RunOutcome, RunRequest, is_cluster, make_executor
from bench.io import write_text
from bench.leaderboard.render import markdown_table
from bench.preflight import PreparedRun, preflight

_MISSING = object()


@dataclass
class AblationSummary:
    """What :func:`ablate` wrote, and the numbers behind it."""

    markdown: Path
    csv: Path
    rows: list[dict[str, Any]]
    reference: int  # index into variants
    reference_reason: str
    variants: list[dict[str, Any]]
    runs: dict[tuple[int, int], RunResult] = field(default_factory=dict)

    @property
    def failed(self) -> list[RunResult]:
        return [r for r in self.runs.values() if not r.ok]


def load_grid(path: str | os.PathLike) -> tuple[str, dict[str, list[Any]]]:
    """(description from the leading comment lines, {key: [values]}) of a grid file."""
    path = Path(path)
    data = configs.load_yaml(path)  # BenchError for a missing or malformed file
    extra = sorted(set(data) - {"grid"})
    if extra:
        raise BenchError(f"{path}: unknown top-level key(s) {', '.join(extra)} (expected 'grid')")
    grid = data.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise BenchError(f"{path}: 'grid' must map each key to a list of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise BenchError(f"{path}: grid key {key}: expected a non-empty list, got {values!r}")
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
            raise BenchError(f"{path}: grid key {key}: duplicate values")
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(x for x in lines if x), {str(k): v for k, v in grid.items()}


def variants(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination, in file order (the first key varies slowest)."""
    return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]


def _recbole_default(model: str, key: str) -> Any:
    import recbole

    root = Path(recbole.__file__).parent / "properties"
    for path in (root / "model" / f"{model}.yaml", root / "overall.yaml"):
        if path.is_file():
            values = configs.load_yaml(path)
            if key in values:
                return values[key]
    return _MISSING


def find_reference(base: PreparedRun, combos: list[dict[str, Any]]) -> tuple[int, str]:
    """The variant with the model's default values (after --set), else the first one."""
    defaults = {}
    for key in combos[0]:
        value = base.config_dict.get(key, _MISSING)
        defaults[key] = _recbole_default(base.spec.name, key) if value is _MISSING else value
    for index, combo in enumerate(combos):
        if all(defaults[k] is not _MISSING and defaults[k] == v for k, v in combo.items()):
            return index, "the model's defaults"
    shown = ", ".join(
        f"{k}={'unset' if v is _MISSING else _fmt_value(v)}" for k, v in defaults.items()
    )
    return 0, f"the grid's first combination (no variant has the model's defaults: {shown})"


def _fmt_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def summarize(
    combos: list[dict[str, Any]],
    runs: dict[tuple[int, int], RunResult],
    seeds: Sequence[int],
    reference: int,
    valid_metric: str,
) -> list[dict[str, Any]]:
    """One row per variant: test metrics' mean and std over seeds, and for every metric the mean
    paired difference from the reference, whether it has the same sign on every seed, and the
    paired t-test's p-value (>= 3 paired seeds)."""
    from scipy import stats

    def ok_tests(index: int) -> dict[int, dict[str, float]]:
        ok = {s: runs.get((index, s)) for s in seeds}
        return {s: run.test for s, run in ok.items() if run is not None and run.ok}

    metrics: list[str] = []
    for run in runs.values():
        for name in run.test:
            if name not in metrics:
                metrics.append(name)
    ref = ok_tests(reference)
    rows = []
    for index, combo in enumerate(combos):
        tests = ok_tests(index)
        valid = [
            runs[(index, s)].valid[valid_metric]
            for s in tests
            if valid_metric in runs[(index, s)].valid
        ]
        row: dict[str, Any] = {
            "variant": index + 1,
            **{k: _fmt_value(v) for k, v in combo.items()},
            "reference": index == reference,
            "seeds_ok": len(tests),
            "seeds_failed": len(seeds) - len(tests),
            f"valid_{valid_metric}_mean": statistics.fmean(valid) if valid else None,
        }
        for name in metrics:
            values = [t[name] for t in tests.values() if name in t]
            row[f"{name}_mean"] = statistics.fmean(values) if values else None
            row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else None
            paired = [s for s in seeds if s in tests and s in ref and name in tests[s]]
            diff = same_sign = p_value = None
            if index != reference and paired:
                mine = [tests[s][name] for s in paired]
                theirs = [ref[s][name] for s in paired]
                diffs = [a - b for a, b in zip(mine, theirs, strict=True)]
                diff = statistics.fmean(diffs)
                same_sign = all(d > 0 for d in diffs) or all(d < 0 for d in diffs)
                if len(paired) >= 3:
                    p = float(stats.ttest_rel(mine, theirs).pvalue)
                    p_value = p if math.isfinite(p) else None  # identical differences: no test
            row[f"{name}_diff"] = diff
            row[f"{name}_same_sign"] = same_sign
            row[f"{name}_p"] = p_value
        rows.append(row)
    return rows


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        # Full precision, as the leaderboard's CSV: repr of floats round-trips.
        writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    return buffer.getvalue()


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _markdown(
    *,
    model: str,
    dataset: str,
    grid_path: Path,
    description: str,
    combos: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    seeds: Sequence[int],
    reference: int,
    reason: str,
    metric: str,
    runs: dict[tuple[int, int], RunResult],
) -> str:
    keys = list(combos[0])
    cutoff = metric.split("@")[1] if "@" in metric else None
    others = [
        k[: -len("_mean")]
        for k in rows[0]
        if k.endswith("_mean")
        and not k.startswith("valid_")
        and cutoff
        and k[: -len("_mean")].endswith(f"@{cutoff}")
        and k[: -len("_mean")] != metric
    ]
    ref_values = ", ".join(f"{k}={_fmt_value(v)}" for k, v in combos[reference].items())
    lines = [f"# Ablation: {model} on {dataset}", ""]
    if description:
        lines += [description, ""]
    lines += [
        f"Grid `{grid_path}`: {' x '.join(keys)}, {len(combos)} variants x seeds "
        f"{', '.join(map(str, seeds))}. Test metrics, mean ± std over seeds; model selection "
        "(best epoch) on the validation metric.",
        "",
        f"Reference (full model): variant {reference + 1} ({ref_values}), {reason}.",
        f"Δ: mean paired difference from the reference in test {metric}; holds: same sign on "
        "every seed; p: paired t-test across seeds (scipy.stats.ttest_rel), with >= 3 seeds.",
        "",
    ]
    header = ["variant", *keys, "seeds", f"test {metric}", "Δ", "holds", "p", *others]
    cells = []
    for row in rows:
        is_ref = row["reference"]
        mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
        cell = _num(mean) + (f" ± {std:.4f}" if std is not None else "")
        holds = row.get(f"{metric}_same_sign")
        p = row.get(f"{metric}_p")
        cells.append(
            [
                f"{row['variant']}" + (" (ref)" if is_ref else ""),
                *[str(row[k]) for k in keys],
                f"{row['seeds_ok']}/{row['seeds_ok'] + row['seeds_failed']}",
                cell,
                "reference" if is_ref else _num(row.get(f"{metric}_diff"), signed=True),
                "" if is_ref else ("–" if holds is None else ("yes" if holds else "no")),
                "" if is_ref else ("–" if p is None else f"{p:.3g}"),
                *[_num(row.get(f"{name}_mean")) for name in others],
            ]
        )
    lines += markdown_table(header, cells, [i > len(keys) for i in range(len(header))])
    failed = [(i, s, r) for (i, s), r in sorted(runs.items()) if not r.ok]
    if failed:
        lines.append("")
        for index, seed, run in failed:
            why = run.error.message if run.error else "?"
            lines.append(f"- variant {index + 1} seed {seed} failed: {why}")
    return "\n".join(lines) + "\n"


def _run_of(request: RunRequest, outcome: RunOutcome) -> RunResult:
    """A run as the ablation counts it: its result when it trained to the end with a finite
    validation score, else a failed one saying why."""
    if outcome.state == "ok" and outcome.value is not None and outcome.result is not None:
        return outcome.result
    options = request.options
    error = outcome.error or f"no finite validation score ({outcome.value})"
    return RunResult(
        status="failed",
        dataset=options.dataset,
        model=options.model,
        seed=options.seed,
        stop_reason="failed",
        error=RunError(message=error, traceback=outcome.traceback),
    )


def ablate(
    model: str,
    dataset: str,
    grid: str | os.PathLike,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    workers: int | None = None,
    gpus_per_run: float | None = None,
    ray_address: str | None = None,
    settings: dict[str, Any] | None = None,
    epochs: int | None = None,
    config_files: Sequence[str | os.PathLike] = (),
    device: str = "auto",
    data_dir: str | os.PathLike | None = None,
    out: str | os.PathLike = "results",
    progress: Callable[[str], None] | None = None,
    command: str | None = None,
    config_tree: ConfigTree | None = None,
    gpus_per_trial: float | None = None,
) -> AblationSummary:
    """Run every grid variant x seed of ``model`` on ``dataset``; write the report.

    ``settings`` / ``epochs`` / ``config_files`` apply to every run (a grid key may not also be
    set). A run that fails is recorded and reported; the others go on. Runs go through
    :mod:`bench.executor`: ``workers``, ``gpus_per_run`` (``gpus_per_trial``: its old name) and
    ``ray_address`` as for :func:`bench.tuning.tune`. ``config_tree``: the configuration to read
    (default: the repository's).
    """
    from bench.tuning.study import _gpus_alias

    gpus_per_run = _gpus_alias(gpus_per_run, gpus_per_trial)
    say = progress or (lambda _line: None)
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise BenchError(f"seeds must be distinct and non-empty, got {seeds}")
    grid_path = Path(grid)
    description, grid_values = load_grid(grid_path)
    out = Path(out).resolve()
    tree = config_tree or ConfigTree.default()
    cache_dir = out / "cache" / "datasets"
    checked = preflight(
        [model],
        dataset,
        seeds=seeds[:1],
        settings=settings,
        epochs=epochs,
        config_files=config_files,
        device="cpu" if is_cluster(ray_address) else device,
        data_dir=data_dir,
        cache_dir=cache_dir,
        searched=list(grid_values),
        searched_by=f"in the grid {grid_path}",
        config_tree=tree,
    )
    base, overrides = checked.runs[0], checked.overrides
    model = base.spec.name
    combos = variants(grid_values)
    reference, reason = find_reference(base, combos)
    metric = str(base.config_dict.get("valid_metric", "MRR@10")).lower()
    folder = out / "ablations" / dataset
    runs: dict[tuple[int, int], RunResult] = {}

    queue = [(i, s) for i in range(len(combos)) for s in seeds]
    executor = make_executor(workers, gpus_per_run, ray_address)
    executor.on_requeue = lambda request, why: say(f"{request.key}: worker lost ({why}), again")
    try:
        run_device = executor.device_for(device)
        while queue or executor.pending():
            while queue and executor.pending() < executor.capacity:
                index, seed = queue.pop(0)
                executor.submit(
                    RunRequest(
                        key=(index, seed),
                        options=replace(
                            base.options,
                            model=model,
                            seed=seed,
                            settings={**overrides, **combos[index]},
                            device=run_device,
                            checkpoint_root=folder / model / "checkpoints",
                        ),
                        command=command,
                    )
                )
            for request, outcome in executor.wait(timeout=1.0):
                index, seed = request.key
                run = _run_of(request, outcome)
                write_record(
                    folder / model / f"variant-{index + 1}" / f"seed-{seed}.json",
                    run,
                    variant={"index": index + 1, "values": combos[index]},
                )
                runs[(index, seed)] = run
                values = ", ".join(f"{k}={_fmt_value(v)}" for k, v in combos[index].items())
                if run.ok:
                    score = run.test.get(metric, float("nan"))
                    say(f"variant {index + 1} [{values}] seed {seed}: test {metric}={score:.4f}")
                else:
                    why = run.error.message if run.error else "?"
                    say(f"variant {index + 1} [{values}] seed {seed}: FAILED {why}")
    except KeyboardInterrupt:
        executor.cancel()
        raise
    finally:
        executor.close()

    rows = summarize(combos, runs, seeds, reference, metric)
    csv_path = write_text(folder / f"{model}.csv", _csv_text(rows))
    md_path = write_text(
        folder / f"{model}.md",
        _markdown(
            model=model,
            dataset=dataset,
            grid_path=grid_path,
            description=description,
            combos=combos,
            rows=rows,
            seeds=seeds,
            reference=reference,
            reason=reason,
            metric=metric,
            runs=runs,
        ),
    )
    return AblationSummary(md_path, csv_path, rows, reference, reason, combos, runs)
