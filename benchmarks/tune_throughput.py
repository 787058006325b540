"""Trials per hour of `bench tune` with 1 and with 2 workers (and, on a GPU, 1 trial per GPU
against 4 trials sharing it), at the same small fixed budget per trial.

    uv run python benchmarks/tune_throughput.py [--trials 6] [--epochs 2] [--out results/perf]

Every trial is tiny SASRec on a 2,000-sample subset of ml-100k, evaluated on 200 users, with the
random sampler and no pruner, so every configuration does the same work. One worker runs trials
in-process (the default path, no Ray); more workers run them as Ray tasks with num_cpus=1 each.
Throughput is counted two ways: over the whole call (Ray's start-up and the workers' imports
included) and in steady state (first trial start to last trial end). Writes
``<out>/tune_throughput.json`` and ``.md``; studies, caches and exported configs go to a
temporary folder and are deleted.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FAST = {
    "hidden_size": 8,
    "inner_size": 16,
    "n_layers": 1,
    "MAX_ITEM_LIST_LENGTH": 10,
    "train_batch_size": 256,
    "train_sample_limit": 2000,
    "eval_user_limit": 200,
}
SPACE = "learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"nproc": os.cpu_count(), "cpu_model": model, "gpu": None}
    import torch

    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def one_setting(
    root: Path,
    label: str,
    *,
    trials: int,
    epochs: int,
    workers: int,
    gpus: float | None,
    device: str,
) -> dict[str, Any]:
    import optuna

    from bench.tuning import tune
    from bench.tuning.storage import open_storage

    storage = root / f"{label}.log"
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    summary = tune(
        "SASRec",
        "ml-100k",
        trials=trials,
        workers=workers,
        gpus_per_trial=gpus,
        space=root / "space.yaml",
        storage=storage,
        study_name=label,
        out=root / "out",
        settings=FAST,
        epochs=epochs,
        pruner="none",
        sampler="random",
        final_seeds=(),
        device=device,
    )
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=label, storage=open_storage(str(storage)))
    done = [t for t in study.get_trials() if t.state.is_finished()]
    starts = [t.user_attrs["started_at"] for t in done]
    ends = [t.user_attrs["finished_at"] for t in done]
    span = max(ends) - min(starts)
    per_trial = [t.user_attrs["seconds"] for t in done]
    return {
        "label": label,
        "workers": workers,
        "gpus_per_trial": gpus,
        "trials": len(done),
        "complete": summary.counts.get("complete", 0),
        "wall_seconds": wall,
        "steady_seconds": span,
        "trials_per_hour_wall": len(done) * 3600 / wall,
        "trials_per_hour_steady": len(done) * 3600 / span,
        "mean_trial_seconds": sum(per_trial) / len(per_trial),
        "processes": len({t.user_attrs["pid"] for t in done}),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# bench tune throughput",
        "",
        f"Machine: {m['nproc']} CPU cores ({m['cpu_model']}), GPU: {m['gpu'] or 'none'}; "
        f"{report['date']}.",
        f"Budget per trial: tiny SASRec on ml-100k, {report['epochs']} epoch(s) on "
        f"{FAST['train_sample_limit']} training samples, {FAST['eval_user_limit']} evaluation "
        f"users; {report['trials']} trials per setting, random sampler, no pruning.",
        "",
        "| setting | workers | GPU/trial | trials | wall s | trials/h (wall) | "
        "trials/h (steady) | mean trial s | processes | load avg before -> after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['label']} | {r['workers']} | {r['gpus_per_trial'] or 0} | {r['trials']} | "
            f"{r['wall_seconds']:.0f} | {r['trials_per_hour_wall']:.0f} | "
            f"{r['trials_per_hour_steady']:.0f} | {r['mean_trial_seconds']:.1f} | "
            f"{r['processes']} | {r['load_average_before'][0]:.1f} -> "
            f"{r['load_average_after'][0]:.1f} |"
        )
    lines += ["", *[f"- {note}" for note in report["notes"]], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/perf"))
    args = parser.parse_args()

    info = machine()
    notes = [
        "1 worker runs trials in this process (PyTorch uses every core); with Ray each trial is "
        "a task with num_cpus=1 (Ray sets OMP_NUM_THREADS=1), so 2 workers trade intra-op "
        "threads for trial parallelism.",
        "wall includes Ray's start-up and each worker's first import of PyTorch and RecBole; "
        "steady is first trial start to last trial end.",
        "This machine is shared: the load average (1 min) before and after each setting is shown; "
        "numbers from a busy machine understate what an idle one does.",
    ]
    root = Path(tempfile.mkdtemp(prefix="tune-throughput-"))
    try:
        # Tuned files go to each setting's --out (root / "out" / "tuned"), not the repository.
        (root / "space.yaml").write_text(SPACE)
        common = {"trials": args.trials, "epochs": args.epochs}
        # Warm-up: process and cache ml-100k once, so no setting pays for it.
        one_setting(root, "warmup", trials=1, epochs=1, workers=1, gpus=None, device="cpu")
        runs = [
            one_setting(root, "cpu-1-worker", workers=1, gpus=None, device="cpu", **common),
            one_setting(root, "cpu-2-workers", workers=2, gpus=0.0, device="cpu", **common),
        ]
        if info["gpu"]:
            runs += [
                one_setting(root, "gpu-1-per-gpu", workers=1, gpus=1.0, device="auto", **common),
                one_setting(root, "gpu-4-share", workers=4, gpus=0.25, device="auto", **common),
            ]
        else:
            notes.append(
                "GPU: not measured (no GPU on this machine). On one, this script also runs 1 trial "
                "per GPU (--gpus-per-trial 1) against 4 trials sharing it (--workers 4 "
                "--gpus-per-trial 0.25)."
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {
        "benchmark": "tune_throughput",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        "trials": args.trials,
        "epochs": args.epochs,
        "settings": FAST,
        "runs": runs,
        "notes": notes,
    }
    from bench.io import write_json, write_text

    write_json(args.out / "tune_throughput.json", report)
    write_text(args.out / "tune_throughput.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
