"""How long a model takes to train to its stopping rule on this machine, and what it reaches.

Each (model, seed) is one ``bench.run`` with the model's defaults (no time cap unless ``--set
time_budget_s=...``), timed from the call to its return (data loading, every epoch and
validation, the test pass). The table gives per run: epochs run, the best epoch, how training
ended (``early_stopping``, ``epoch_limit`` or ``time_budget``), wall-clock minutes, median seconds
of a training epoch and of a validation, and the test metrics; ``--reference MODEL=VALUE`` adds a
figure to compare the primary test metric with (say where it comes from with ``--note``).

    uv run python benchmarks/time_to_convergence.py --dataset amazon-beauty --models SASRec \
        --data-dir ../shared/datasets --reference SASRec=0.0549 \
        --note "0.0549: per-prefix SASRec, H100, budget-limited (results/leaderboard)"

Writes ``<out>/time_to_convergence_<dataset>.{json,md}`` atomically (``--out`` defaults to
``results/perf``); the runs' own records go to ``--runs-out`` (default: a temporary folder that is
removed).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make ``bench`` and ``benchmarks`` importable
    sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    PERF_DIR,
    command_line,
    fmt,
    machine_info,
    markdown_table,
    median,
    usable_cores,
    write_report,
)

SCHEMA = 1
METRICS = ("ndcg@10", "hit@10")


def summarise(result: Any, wall_seconds: float, reference: float | None) -> dict[str, Any]:
    """One table row of a finished run (``bench.contract.RunResult``)."""
    primary = result.valid_metric or "ndcg@10"
    test = {k: result.test.get(k) for k in dict.fromkeys((primary, *METRICS))}
    value = result.test.get(primary)
    return {
        "model": result.model,
        "seed": result.seed,
        "status": result.status,
        "error": result.error.message if result.error else None,
        "epochs": len(result.epochs),
        "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason,
        "wall_seconds": wall_seconds,
        "epoch_seconds": median(e.train_seconds for e in result.epochs),
        "valid_seconds": median(e.valid_seconds for e in result.epochs),
        "primary_metric": primary,
        "test": test,
        "reference": reference,
        "ratio_to_reference": value / reference if value is not None and reference else None,
        "threads": result.config.get("threads"),
        "train_regime": result.config.get("train_regime"),
        "code_version": result.code_version,
    }


def render(report: dict[str, Any]) -> str:
    lines = [
        f"# Time to convergence on {report['dataset']}",
        "",
        f"Produced by `{report['command']}` on {report['machine']['date']}.",
        "",
        f"Machine: {report['machine']['cpu']} ({report['machine']['usable_cores']} usable cores), "
        f"torch {report['machine']['torch']}, RecBole {report['machine']['recbole']}; "
        f"commit `{report['machine']['git_commit']}`; load average when it started: "
        f"{report['machine'].get('load_average')}.",
    ]
    if report.get("note"):
        lines += ["", report["note"]]
    headers = [
        "model", "seed", "regime", "epochs", "best epoch", "stopped by", "wall min",
        "s / epoch", "s / validation", "test metric", "test", "reference", "x reference",
    ]  # fmt: skip
    rows = []
    for row in report["runs"]:
        primary = row["primary_metric"]
        rows.append([
            row["model"], row["seed"], row["train_regime"] or "", row["epochs"],
            fmt(row["best_epoch"]), row["stop_reason"] or row["status"],
            fmt(row["wall_seconds"] / 60, 1), fmt(row["epoch_seconds"]),
            fmt(row["valid_seconds"]), primary, fmt(row["test"].get(primary), 4),
            fmt(row["reference"], 4), fmt(row["ratio_to_reference"]),
        ])  # fmt: skip
    lines += ["", *markdown_table(headers, rows, [False, True, False, *[True] * 10])]
    lines += [
        "",
        "Wall minutes: from the call to its return (data loading, every epoch and validation,"
        " the test pass). s / epoch and s / validation: medians over the run's epochs.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--models", required=True, help="comma list")
    parser.add_argument("--seeds", default="0", help="comma list (default 0)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--reference", action="append", default=[], metavar="MODEL=VALUE")
    parser.add_argument("--note", default=None, help="a line under the header (a source)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs-out", default=None)
    parser.add_argument("--out", default=str(PERF_DIR))
    args = parser.parse_args(argv)

    from bench import api
    from bench.configs import parse_assignments
    from bench.errors import BenchError

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    try:
        settings = parse_assignments(args.set)
        references = {k: float(v) for k, v in parse_assignments(args.reference).items()}
    except (BenchError, TypeError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    runs_out = Path(args.runs_out) if args.runs_out else Path(tempfile.mkdtemp(prefix="ttc-"))
    machine = machine_info(threads=int(settings.get("threads", 0)) or usable_cores())
    rows = []
    try:
        for model in models:
            for seed in seeds:
                started = time.perf_counter()
                try:
                    summary = api.run(
                        [model], args.dataset, seeds=[seed], settings=dict(settings),
                        device=args.device, data_dir=args.data_dir, out=runs_out,
                    )  # fmt: skip
                except BenchError as exc:
                    raise SystemExit(f"error: {exc}") from None
                wall = time.perf_counter() - started
                (result,) = summary.results
                row = summarise(result, wall, references.get(model))
                rows.append(row)
                print(
                    f"{model} seed {seed}: {row['epochs']} epochs ({row['stop_reason']}), "
                    f"{wall / 60:.1f} min, test {row['primary_metric']} "
                    f"{fmt(row['test'].get(row['primary_metric']), 4)}",
                    flush=True,
                )
    finally:
        if not args.runs_out:
            shutil.rmtree(runs_out, ignore_errors=True)
    report = {
        "schema": SCHEMA,
        "dataset": args.dataset,
        "command": command_line("benchmarks/time_to_convergence.py", argv),
        "machine": machine,
        "settings": settings,
        "note": args.note,
        "runs": rows,
    }
    json_path, md_path = write_report(
        args.out, f"time_to_convergence_{args.dataset}", report, render(report)
    )
    print(f"wrote {json_path} and {md_path.name}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
