"""What each model's reference runs cost: seconds per epoch, per validation, per test pass, and
peak memory, read from the results ``bench run`` wrote (no training here).

Every result records its per-epoch training and validation seconds (``epochs``), its phase
timings (``timing``) and, since the harness records it, the peak memory of training
(validations included) and of the test pass (``memory``, see ``bench/memory.py``). This script
gathers them into one table per dataset, one row per (model, device):

- ``epochs``: epochs run, mean over seeds; ``epoch s``: median seconds of a training epoch over
  every complete epoch of every seed (an epoch the time budget cut short is left out; where every
  epoch was cut, the median of the cut ones, marked ``cut``);
- ``train s``: mean seconds of the whole training stage (building the model, which is where
  ItemKNN and EASE fit, every epoch and every validation; a resumed run's earlier sittings
  included); ``valid s``: median seconds of one
  full validation pass; ``test s``: mean seconds of the test pass; ``data s``: mean seconds to
  load and split the data (the dataset cache included);
- ``peak MiB train / test``: the largest over seeds (CPU: the process's peak resident memory,
  dataset included; CUDA: ``max_memory_allocated``); ``start MiB``: what the process held when
  that seed's training began. A plan's worker runs one job after another in one process, and
  where glibc keeps freed memory and nothing gives it back before a phase (``GLIBC_TUNABLES`` set
  by hand, or results from before ``bench.allocator`` trimmed under ``BENCH_MALLOC=keep``) a run
  starts on the heap its predecessor grew: a start near the peak means the peak is that
  inherited heap, an upper bound on what the run itself needed.

The figures are as fast as the runs were: a plan that ran two processes on two cores, or thirty
on one GPU, measured each under that load (the plan's record says how many ran at once). Compare
rows of one table, not tables of different plans.

    uv run python benchmarks/run_costs.py --results results --dataset ml-1m \
        --note "configs/plans/cpu-reference.yaml: two runs at a time, one thread each"

Writes ``results/perf/run_costs_<dataset>.{json,md}`` atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(REPO))

from bench.contract import PhaseMemory, RunResult, load_results, runs_dir  # noqa: E402
from bench.io import write_json, write_text  # noqa: E402
from bench.leaderboard.render import markdown_table  # noqa: E402

SCHEMA = 3  # 2: train_start_mib; 3: runs_dir (where the records were read)


@dataclass(frozen=True)
class ModelCost:
    """One (model, device) row: what its successful runs cost (see the module docstring)."""

    model: str
    device: str
    seeds: int
    epochs: float | None
    epoch_seconds: float | None
    epoch_cut: bool  # every training epoch was cut by the budget: epoch_seconds is theirs
    valid_seconds: float | None
    train_seconds: float | None
    test_seconds: float | None
    data_seconds: float | None
    train_peak_mib: float | None
    test_peak_mib: float | None
    train_start_mib: float | None
    budget_limited: int  # seeds the time budget stopped


@dataclass(frozen=True)
class CostReport:
    """``run_costs_<dataset>.json``: the rows and where and how they were read."""

    dataset: str
    runs_dir: str
    note: str
    command: str
    rows: list[ModelCost]
    schema: int = SCHEMA

    def to_json(self) -> dict:
        record = dataclasses.asdict(self)
        return {"schema": record.pop("schema"), **record}  # the schema first, as written before


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _known_mean(values: list[float | None]) -> float | None:
    """Mean over the runs that recorded the value."""
    return _mean([v for v in values if v is not None])


def _device(result: RunResult) -> str:
    env = result.environment
    name = env.device_name if env else None
    cores = env.cpu_count if env else None
    if env is not None and env.device == "cuda":
        return f"cuda ({name})" if name else "cuda"
    return f"cpu ({cores} cores)" if cores else "cpu"


def _largest(phases: list[PhaseMemory | None]) -> PhaseMemory:
    """The phase with the largest recorded peak over the runs (an empty one where none has)."""
    known = [p for p in phases if p is not None and p.peak_mib is not None]
    return max(known, key=lambda p: p.peak_mib) if known else PhaseMemory()


def costs(results: list[RunResult]) -> list[ModelCost]:
    """One row per (model, device) over the successful results, in the order first seen."""
    groups: dict[tuple[str, str], list[RunResult]] = defaultdict(list)
    for result in results:
        if result.ok:
            groups[(result.model, _device(result))].append(result)
    rows = []
    for (model, device), runs in groups.items():
        epochs = [e for r in runs for e in r.epochs]
        trained = [e for e in epochs if e.train_seconds]
        whole = [e.train_seconds for e in trained if e.cut_after_batches is None]
        cut = [e.train_seconds for e in trained if e.cut_after_batches is not None]
        valid = [e.valid_seconds for e in epochs if e.valid_score is not None]
        timings = [r.timing for r in runs if r.timing is not None]
        memories = [r.memory for r in runs if r.memory is not None]
        train = _largest([m.train for m in memories])
        rows.append(
            ModelCost(
                model=model,
                device=device,
                seeds=len(runs),
                epochs=_mean([float(r.epochs_run) for r in runs]),
                epoch_seconds=_median(whole) if whole else _median(cut),
                epoch_cut=not whole and bool(cut),
                valid_seconds=_median([v for v in valid if v]),
                train_seconds=_known_mean([t.train_seconds_all_sittings for t in timings]),
                test_seconds=_known_mean([t.eval_seconds for t in timings]),
                data_seconds=_known_mean([t.data_seconds for t in timings]),
                train_peak_mib=train.peak_mib,
                test_peak_mib=_largest([m.test for m in memories]).peak_mib,
                train_start_mib=train.start_mib,
                budget_limited=sum(r.stopped_by_budget for r in runs),
            )
        )
    return rows


def _fmt(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def markdown(report: CostReport) -> str:
    lines = [
        f"# What the runs cost: {report.dataset}",
        "",
        f"Read from the runs' own records under `{report.runs_dir}/` (no training here): "
        "median seconds of a complete training epoch "
        "(\u2020: every epoch was cut by the time budget, the cut ones' median), mean seconds of "
        "the whole training stage (model building, epochs, validations), median seconds of a "
        "full validation pass, mean seconds of the test pass and of loading the data, and "
        "the largest peak memory over seeds (CPU: peak resident memory of the process, dataset "
        "included; CUDA: `max_memory_allocated`) with what the process held when that seed's "
        "training began (`start`: a plan's worker runs its jobs one after another in one "
        "process, and where glibc keeps freed memory and nothing gives it back first, a run "
        "starts on the heap its predecessor grew, so a start near the peak makes the peak an "
        "upper bound on the run's own need). "
        "A run measures as fast as the machine let it: compare rows of this table only.",
    ]
    if report.note:
        lines += ["", f"Runs: {report.note}"]
    header = ["model", "device", "seeds", "epochs", "epoch s", "train s", "valid s", "test s"]
    header += ["data s", "peak MiB train / test", "start MiB"]
    cells = []
    for row in report.rows:
        epoch = _fmt(row.epoch_seconds) + (" \u2020" if row.epoch_cut else "")
        memory = f"{_fmt(row.train_peak_mib, 0)} / {_fmt(row.test_peak_mib, 0)}"
        cells.append(
            [
                row.model,
                row.device,
                str(row.seeds),
                _fmt(row.epochs),
                epoch,
                _fmt(row.train_seconds),
                _fmt(row.valid_seconds),
                _fmt(row.test_seconds),
                _fmt(row.data_seconds),
                memory,
                _fmt(row.train_start_mib, 0),
            ]
        )
    lines += ["", *markdown_table(header, cells, [False, False] + [True] * 9)]
    missing = [r.model for r in report.rows if r.train_peak_mib is None]
    if missing:
        lines += [
            "",
            "No memory recorded (runs from before the harness recorded it): "
            + ", ".join(missing)
            + ".",
        ]
    lines += ["", f"Command: `{report.command}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--note", default="", help="How the runs were made (plan, parallelism)")
    parser.add_argument("--out", type=Path, default=None, help="Default: <results>/perf")
    args = parser.parse_args(argv)
    results = load_results(args.results, args.dataset)
    if not results:
        print(f"run_costs: no results for {args.dataset!r} under {args.results}", file=sys.stderr)
        return 2
    rows = costs(results)
    rows.sort(key=lambda r: (r.device, r.epoch_seconds or 0.0))
    command = shlex.join(["python", "benchmarks/run_costs.py", *(argv or sys.argv[1:])])
    report = CostReport(
        dataset=args.dataset,
        runs_dir=runs_dir(args.results, args.dataset).as_posix(),
        note=args.note,
        command=command,
        rows=rows,
    )
    out = args.out or args.results / "perf"
    write_json(out / f"run_costs_{args.dataset}.json", report.to_json())
    write_text(out / f"run_costs_{args.dataset}.md", markdown(report))
    print(out / f"run_costs_{args.dataset}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
