"""Training and validation with glibc's malloc kept (:mod:`bench.allocator`, what ``bench run``
does) against glibc's defaults (``BENCH_MALLOC=system``).

For each ``--case DATASET:MODEL[:key=value,...]``, ``--rounds`` rounds, each a fresh subprocess
per side (:mod:`benchmarks.model_speed`'s worker: the model built as ``bench run`` builds it,
``--warmup-steps`` untimed steps, then ``--max-steps`` timed ones and one full validation); the
side that goes first alternates by round. The timed steps run on the heap the warm-up left (no
``malloc_trim`` between them, unlike a run's phases): a long run's steady state, which the kept
side reaches after a few steps (its heap grows until freed blocks fit the next ones). Per side:
seconds per training step, validation seconds, the kernel's share of the process's CPU time and
its minor page faults per step in training, peak resident memory of each phase (training: with
what malloc holds from the warm-up). The report gives medians and, per case, the median
of the per-round ratios default / kept (above 1: keeping freed memory is faster), which cancels
most of a shared machine's drift. Writes ``<out>/malloc.{json,md}`` atomically.

    uv run python benchmarks/malloc_speed.py --data-dir ../shared/datasets --threads 1 \\
        --note "2-core AMD EPYC, beside a plan's two runs"
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make ``bench`` and ``benchmarks`` importable
    sys.path.insert(0, str(REPO))

from bench.io import write_text  # noqa: E402
from benchmarks.model_speed import log, make_job, spawn  # noqa: E402

SCHEMA = 1
# The converged boards' costliest rows still to run (configs/plans/converged-*.yaml).
DEFAULT_CASES = (
    "amazon-beauty:ContrastVAE:official=true",
    "amazon-beauty:SASRec",
    "amazon-beauty:SLIME4Rec",
    "amazon-beauty:Vamp",
    "amazon-beauty:HVampGated",
    "ml-1m:SLIME4Rec",
)
SIDES = {"kept": {}, "system": {"BENCH_MALLOC": "system"}}


def parse_case(text: str) -> tuple[str, str, dict[str, Any]]:
    """``DATASET:MODEL[:key=value,...]`` as (dataset, model, settings)."""
    from bench import configs

    parts = text.split(":", 2)
    if len(parts) < 2 or not all(parts[:2]):
        raise SystemExit(f"--case {text!r}: expected DATASET:MODEL[:key=value,...]")
    assignments = [a for a in (parts[2].split(",") if len(parts) > 2 else []) if a]
    return parts[0], parts[1], configs.parse_assignments(assignments)


def _side_figures(result: dict[str, Any]) -> dict[str, Any]:
    train, evaluation = result["train"], result["eval"]
    cpu = train.get("cpu") or {}
    busy = cpu.get("user_seconds", 0.0) + cpu.get("system_seconds", 0.0)
    return {
        "malloc": result.get("malloc"),
        "seconds_per_step": train["seconds_per_step"],
        "epoch_seconds": train["epoch_seconds"],
        "steps_per_epoch": train["steps_per_epoch"],
        "validation_seconds": evaluation["seconds"],
        "kernel_share": cpu.get("system_seconds", 0.0) / busy if busy else None,
        "minor_faults_per_step": cpu.get("minor_faults", 0) / max(train["steps"], 1),
        "train_peak_rss_mib": train["memory"].get("peak_rss_mib"),
        "eval_peak_rss_mib": evaluation["memory"].get("peak_rss_mib"),
        "valid_score": evaluation["valid_score"],
    }


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def measure_case(args: argparse.Namespace, case: str) -> dict[str, Any]:
    dataset, model, settings = parse_case(case)
    job = {
        **make_job(args, dataset, "cpu", settings),
        "side": "harness",
        "model": model,
        "keep_heap": True,  # no malloc_trim between the warm-up and the timed steps
    }
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = list(SIDES) if r % 2 == 0 else list(reversed(SIDES))
        entry: dict[str, Any] = {}
        for side in order:
            result = spawn({**job, "env": SIDES[side]}, args.time_limit)
            if result["status"] != "ok":
                entry[side] = {"status": result["status"], "error": result.get("error")}
                log(f"{case} round {r + 1} {side}: {result['status']}: {result.get('error')}")
                continue
            entry[side] = {"status": "ok", **_side_figures(result)}
            log(
                f"{case} round {r + 1} {side}: {entry[side]['seconds_per_step']:.3f} s a step, "
                f"validation {entry[side]['validation_seconds']:.1f} s, kernel "
                f"{entry[side]['kernel_share'] or 0:.0%}"
            )
        rounds.append(entry)
    ok = [e for e in rounds if all(e.get(s, {}).get("status") == "ok" for s in SIDES)]
    # The same model, seed and steps on both sides: the validation score must agree exactly.
    same = all(e["kept"]["valid_score"] == e["system"]["valid_score"] for e in ok)
    summary: dict[str, Any] = {
        side: {
            key: _median([e[side][key] for e in ok])
            for key in (
                "seconds_per_step",
                "epoch_seconds",
                "validation_seconds",
                "kernel_share",
                "minor_faults_per_step",
                "train_peak_rss_mib",
                "eval_peak_rss_mib",
            )
        }
        for side in SIDES
    }
    for name, key in (("train", "seconds_per_step"), ("validation", "validation_seconds")):
        summary[f"{name}_ratio"] = _median([e["system"][key] / e["kept"][key] for e in ok])
    return {
        "case": case,
        "rounds": rounds,
        "rounds_ok": len(ok),
        "same_valid_score": same if ok else None,
        **summary,
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _pair(key: str, spec: str, a: dict[str, Any], b: dict[str, Any]) -> str:
    return f"{_fmt(a[key], spec)} / {_fmt(b[key], spec)}"


def _peaks(side: dict[str, Any]) -> str:
    """Peak resident MiB: training / validation."""
    return f"{_fmt(side['train_peak_rss_mib'], ',.0f')} / {_fmt(side['eval_peak_rss_mib'], ',.0f')}"


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        "# glibc's malloc: kept freed memory (`bench run`'s default) against glibc's defaults",
        "",
        f"Measured {report['finished_at']} on {machine.get('cpu')} ({machine.get('nproc')} cores), "
        f"torch {machine.get('torch')}, {report['settings']['threads']} thread(s) a process"
        + (f"; {report['note']}" if report["note"] else "")
        + ".",
        f"Command: `{report['command']}`",
        "",
        "Each case: fresh processes, the two sides alternating which goes first, "
        f"{report['settings']['warmup_steps']} untimed then {report['settings']['max_steps']} "
        "timed training steps and one full validation. Ratio: default / kept, per round, median "
        "(above 1: kept is faster). Kernel: system CPU seconds / all CPU seconds in training. "
        "Faults: minor page faults a training step. Memory: peak resident MiB (training / "
        "validation).",
        "",
        "| case | rounds | s a step kept / default | train ratio | validation s kept / default"
        " | validation ratio | kernel kept / default | faults a step kept / default"
        " | memory kept | memory default | same score |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["cases"]:
        kept, system = c["kept"], c["system"]
        same = {True: "yes", False: "no", None: "-"}[c["same_valid_score"]]
        cells = [
            c["case"],
            str(c["rounds_ok"]),
            _pair("seconds_per_step", ".3f", kept, system),
            _fmt(c["train_ratio"], ".2f"),
            _pair("validation_seconds", ".1f", kept, system),
            _fmt(c["validation_ratio"], ".2f"),
            _pair("kernel_share", ".0%", kept, system),
            _pair("minor_faults_per_step", ",.0f", kept, system),
            _peaks(kept),
            _peaks(system),
            same,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", action="append", default=None, help="DATASET:MODEL[:k=v,...]")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=15)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--time-limit", type=float, default=900.0, help="seconds a subprocess")
    p.add_argument("--cache-dir", default=str(REPO / "results" / "cache" / "datasets"))
    p.add_argument("--note", default="")
    p.add_argument("--out", default=str(REPO / "results" / "perf"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cases = args.case or list(DEFAULT_CASES)
    for case in cases:
        parse_case(case)  # refused before anything runs
    measured = [measure_case(args, case) for case in cases]
    import torch

    from benchmarks.sequential_speed import machine_info

    machine = machine_info(torch.device("cpu"))
    report = {
        "schema": SCHEMA,
        "machine": machine,
        "command": shlex.join(["python", "benchmarks/malloc_speed.py", *(argv or sys.argv[1:])]),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            "rounds": args.rounds,
            "max_steps": args.max_steps,
            "warmup_steps": args.warmup_steps,
            "threads": args.threads,
        },
        "note": args.note,
        "cases": measured,
    }
    out = Path(args.out)
    write_text(out / "malloc.json", json.dumps(report, indent=1, default=str) + "\n")
    write_text(out / "malloc.md", markdown(report))
    log(f"wrote {out / 'malloc'}.json and .md")
    failed = [c["case"] for c in measured if c["rounds_ok"] < args.rounds]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
