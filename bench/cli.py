"""The ``bench`` command line: a thin layer over :mod:`bench.api`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from bench.errors import BenchError

app = typer.Typer(
    help="Benchmark recommender models on RecBole: train, evaluate, compare.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(
    help="Bring datasets into RecBole's atomic-file format.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
checkpoints_app = typer.Typer(
    help="Checkpoint files for a git host: split the large ones into parts, join them back.",
    no_args_is_help=True,
)
app.add_typer(checkpoints_app, name="checkpoints")

# Options several commands share.
SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="key=value, repeatable; YAML values")
]
ConfigOption = Annotated[
    list[Path] | None, typer.Option(help="Extra RecBole YAML file, repeatable")
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")]
DataDirOption = Annotated[Path | None, typer.Option(help="Folder holding <dataset>/")]
ResultsOption = Annotated[Path, typer.Option(help="Results folder")]
# Where runs execute (bench.executor): the same names for run, plan, tune and ablate.
WorkersOption = Annotated[
    int | None,
    typer.Option(
        help="Runs at a time: 1 in this process (default), N in worker processes; with "
        "--ray-address, Ray tasks (default: as many as the cluster holds)"
    ),
]
GpusPerRunOption = Annotated[
    float | None,
    typer.Option(
        "--gpus-per-run",
        "--gpus-per-trial",
        help="GPU share of each run (0.25: 4 a GPU); Ray default 1 where there are GPUs, else 0",
    ),
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(help="Ray cluster HEAD:PORT to run on, or 'local' (a Ray instance of our own)"),
]


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise BenchError(f"--seeds expects comma-separated integers, got {text!r}") from exc
    if not seeds:
        raise BenchError("--seeds is empty")
    return seeds


def _pair(text: str) -> tuple[str, str]:
    model, sep, reference = text.partition(":")
    if not sep or not model or not reference or ":" in reference:
        raise BenchError(f"--pair {text!r}: expected MODEL:REFERENCE")
    return model, reference


@app.command()
def run(
    models: Annotated[str, typer.Option(help="'all' (the dataset's suite) or names: A,B")],
    dataset: Annotated[str, typer.Option(help="Dataset name (configs/datasets/<name>.yaml)")],
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds")] = "0",
    epochs: Annotated[int | None, typer.Option(help="Override every model's epochs")] = None,
    quick: Annotated[bool, typer.Option(help="Smoke setting: configs/quick.yaml")] = False,
    tuned: Annotated[
        bool,
        typer.Option(help="Layer <out>/tuned/<dataset>/<Model>.yaml (from bench tune --out)"),
    ] = False,
    set_: SetOption = None,
    config: ConfigOption = None,
    device: DeviceOption = "auto",
    data_dir: DataDirOption = None,
    out: ResultsOption = Path("results"),
    resume: Annotated[
        bool,
        typer.Option(
            help="Skip runs already done (same settings, not cut off by a smaller budget); "
            "continue killed or budget-cut runs from their last epoch"
        ),
    ] = False,
    name: Annotated[
        str | None,
        typer.Option(help="Store one model's runs as this leaderboard row (a variant)"),
    ] = None,
    workers: WorkersOption = None,
    gpus_per_run: GpusPerRunOption = None,
    ray_address: RayAddressOption = None,
) -> None:
    """Train and evaluate models on a dataset; write results and the leaderboard."""
    from bench import api, configs

    summary = api.run(
        models,
        dataset,
        seeds=_seeds(seeds),
        epochs=epochs,
        quick=quick,
        tuned=tuned,
        settings=configs.parse_assignments(set_ or []),
        config_files=config or [],
        device=device,
        data_dir=data_dir,
        out=out,
        resume=resume,
        progress=True,
        command=shlex.join(["bench", *sys.argv[1:]]),
        name=name,
        workers=workers,
        gpus_per_run=gpus_per_run,
        ray_address=ray_address,
        echo=typer.echo,
    )
    for model, seed in summary.skipped:
        typer.echo(f"skipped {model} seed {seed}: result exists (--resume)")
    if summary.leaderboard is not None:
        typer.echo(summary.leaderboard.read_text(encoding="utf-8"))
        typer.echo(f"leaderboard: {summary.leaderboard_csv} and {summary.leaderboard}")
    for failed in summary.failed:
        error = failed.error
        why = f"{error.type}: {error.first_line}" if error else "?"
        typer.echo(f"FAILED {failed.model} seed {failed.seed}: {why}", err=True)
    if summary.failed:
        raise typer.Exit(1)


@app.command("leaderboard")
def leaderboard_command(
    results: ResultsOption = Path("results"),
    dataset: Annotated[str | None, typer.Option(help="Only this dataset")] = None,
    baseline: Annotated[
        str | None, typer.Option(help="Also test every model against this one")
    ] = None,
    test: Annotated[
        str, typer.Option(help="Test deciding the significance markers: t or wilcoxon")
    ] = "t",
) -> None:
    """Rebuild leaderboard/<dataset>.csv, .md, .significance.csv and .provenance.json."""
    from bench import leaderboard
    from bench.contract import runs_dir

    datasets = [dataset] if dataset else leaderboard.datasets_with_results(results)
    if not datasets:
        raise BenchError(f"no results under {runs_dir(results)}")
    for name in datasets:
        written = leaderboard.write(results, name, baseline=baseline, test=test)
        if written is None:
            raise BenchError(f"no results for dataset {name!r} under {runs_dir(results)}")
        typer.echo(f"{name}: {written[0]} and {written[1]}")


@app.command()
def plan(
    plan_file: Annotated[Path, typer.Argument(help="Plan file, e.g. configs/plans/<name>.yaml")],
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            "--parallel",
            help="Runs at a time: 1 in this process (default), N in worker processes; with "
            "--ray-address, Ray tasks (default: as many as the cluster holds)",
        ),
    ] = None,
    gpus_per_run: GpusPerRunOption = None,
    ray_address: RayAddressOption = None,
    deadline_s: Annotated[
        float, typer.Option(help="Seconds for the whole plan; late runs get less budget; 0: none")
    ] = 0,
    reserve_s: Annotated[
        float, typer.Option(help="Seconds kept for data loading and the test pass of a run")
    ] = 120,
    min_budget_s: Annotated[
        float, typer.Option(help="A run granted less training time is not started")
    ] = 60,
    threads: Annotated[
        int, typer.Option(help="PyTorch CPU threads per run; 0: its share of the cores")
    ] = 0,
    device: DeviceOption = "auto",
    data_dir: DataDirOption = None,
    out: ResultsOption = Path("results"),
    resume: Annotated[
        bool,
        typer.Option(help="Skip runs already done: same settings, not cut off by a smaller budget"),
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the commands; run nothing")] = False,
    status: Annotated[
        bool,
        typer.Option(
            help="Show each run's state (finished, unfinished with its checkpoint's epoch and "
            "patience, not started) under --out; run nothing"
        ),
    ] = False,
) -> None:
    """Run a plan's runs (as `bench run` would, in parallel or on a Ray cluster); rebuild the
    leaderboards."""
    from bench import plans

    if status:
        _print_progress(plan_file, out, data_dir, device)
        return

    record = plans.execute(
        plan_file,
        out=out,
        device=device,
        data_dir=data_dir,
        workers=workers,
        gpus_per_run=gpus_per_run,
        ray_address=ray_address,
        deadline_s=deadline_s,
        reserve_s=reserve_s,
        min_budget_s=min_budget_s,
        threads=threads,
        resume=resume,
        dry_run=dry_run,
        echo=typer.echo,
    )
    failed = [r for r in record.runs if r.get("status") != "ok"]
    if failed or record.not_started:
        typer.echo(f"{len(failed)} run(s) failed, {len(record.not_started)} not started", err=True)
        raise typer.Exit(1)


def _print_progress(plan_file: Path, out: Path, data_dir: Path | None, device: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from bench.progress import plan_progress, remaining

    progress = plan_progress(plan_file, out, data_dir, "cpu" if device == "auto" else device)
    table = Table("dataset", "row", "seed", "state", "epochs", "best valid (epoch)", "patience")
    for column in ("training h", "ended", "test", "note"):
        table.add_column(column)
    for p in progress:
        limit = f" / {p.epoch_limit}" if p.epoch_limit else ""
        best = "" if p.best_valid_score is None else f"{p.best_valid_score:.4f} ({p.best_epoch})"
        row = [p.run.dataset, p.run.label, str(p.run.seed), p.state]
        inside = f" + {p.batches_into_epoch} batches" if p.batches_into_epoch else ""
        row += [f"{p.epochs}{limit}{inside}" if p.state != "not started" else "", best]
        if p.patience and p.epochs < p.warmup:
            row.append(f"warm-up to {p.warmup}")
        else:
            row.append(f"{p.patience[0]} / {p.patience[1]}" if p.patience else "")
        row.append(f"{p.train_seconds / 3600:.2f}" if p.state != "not started" else "")
        row.append(p.stop_reason or "")
        row.append("" if p.test_score is None else f"{p.test_score:.4f}")
        row.append(p.note or "")
        table.add_row(*row)
    console = Console(width=200)
    console.print(table)
    counts = {s: sum(p.state == s for p in progress) for s in ("finished", "unfinished")}
    hours = sum(p.train_seconds for p in progress) / 3600
    console.print(
        f"{counts['finished']} of {len(progress)} runs finished, {counts['unfinished']} "
        f"unfinished, {len(progress) - sum(counts.values())} not started; "
        f"{hours:.1f} training hours so far (every sitting's, all runs together)"
    )
    left = remaining(progress)
    console.print(
        "Still to go, from the runs' own records (hours of one thread each): the unfinished "
        f"runs {left.unfinished_min_h:.1f} (no new best from now) to {left.unfinished_max_h:.1f} "
        f"(their epoch limits); {left.not_started_runs} not-started runs of rows with finished "
        f"ones about {left.not_started_h:.1f} (their rows' mean); {left.unmeasured} others not "
        "measured yet"
    )


@app.command()
def report(
    dataset: Annotated[str, typer.Option(help="Dataset name")],
    results: ResultsOption = Path("results"),
    baseline: Annotated[
        str | None, typer.Option(help="Also test every model against this one")
    ] = None,
    test: Annotated[
        str, typer.Option(help="Test deciding the significance markers: t or wilcoxon")
    ] = "t",
    pair: Annotated[
        list[str] | None,
        typer.Option(help="MODEL:REFERENCE, tested on its own (repeatable): e.g. A:A-ablated"),
    ] = None,
) -> None:
    """Write the leaderboard and a markdown report with figures beside it:
    <results>/reports/<dataset>/report.md, linking to the leaderboard's files."""
    from bench.report import write_report

    pairs = [_pair(text) for text in pair or []]
    path = write_report(results, dataset, baseline=baseline, test=test, pairs=pairs)
    typer.echo(f"report: {path}")


@app.command()
def reproduce(
    result: Annotated[Path, typer.Argument(help="A result file: <results>/runs/.../seed-N.json")],
    data_dir: DataDirOption = None,
    device: Annotated[str, typer.Option(help="cpu (metrics must match exactly) or cuda")] = "cpu",
    tolerance: Annotated[
        float | None,
        typer.Option(help="Largest absolute difference that counts as a match; default 0 on CPU"),
    ] = None,
    save: Annotated[
        Path | None,
        typer.Option(help="Write the re-run's result (epochs, metrics) to this JSON file"),
    ] = None,
) -> None:
    """Run a stored result again from its record; exit 1 if a metric differs."""
    from bench.contract import write_record
    from bench.reproduce import reproduce as run_again

    done = run_again(result, data_dir=data_dir, device=device, tolerance=tolerance)
    if save is not None:
        typer.echo(f"re-run's record: {write_record(save, done.again)}")
    for note in done.notes:
        typer.echo(f"note: {note}")
    if not done.again.ok:
        error = done.again.error
        typer.echo(f"FAILED: {error.type}: {error.first_line}" if error else "FAILED", err=True)
        raise typer.Exit(1)
    compared = len(done.recorded.test) + len(done.recorded.valid)
    how = "exactly" if done.tolerance == 0 else f"within {done.tolerance:g}"
    if done.matched:
        typer.echo(f"reproduced: all {compared} test and validation metrics match {how}")
    else:
        differ = len(done.differences)
        typer.echo(f"not reproduced: {differ} of {compared} metric(s) differ ({how}):")
        for phase, metric, recorded, again in done.differences:
            typer.echo(f"  {phase} {metric}: recorded {recorded!r}, reproduced {again!r}")
    if done.first_divergence:
        typer.echo(f"first difference in the epoch records: {done.first_divergence}")
    if not done.matched:
        raise typer.Exit(1)


@app.command()
def models() -> None:
    """List every registered model: name, family, source, and the RecBole class it replaces."""
    from rich.console import Console
    from rich.table import Table

    from recbole_ext import registry

    table = Table("name", "family", "source", "replaces")
    for spec in registry.all_models():
        table.add_row(spec.name, spec.family, spec.source, spec.shadows or "")
    Console(width=160).print(table)


@data_app.command("import")
def data_import(
    input: Annotated[Path, typer.Option(help="The file to convert")],
    name: Annotated[str, typer.Option(help="Dataset name: writes <out>/<name>/<name>.inter")],
    format: Annotated[
        str, typer.Option(help="Input format: seqtxt (user item item ...)")
    ] = "seqtxt",
    out: Annotated[Path, typer.Option(help="Data folder")] = Path("data"),
) -> None:
    """Convert a dataset file into RecBole atomic files."""
    from bench.datasets import import_seqtxt

    if format != "seqtxt":
        raise BenchError(f"unknown --format {format!r} (supported: seqtxt)")
    target = import_seqtxt(input, name, out)
    typer.echo(f"wrote {target}")


CheckpointsFolder = Annotated[
    Path, typer.Argument(help="A checkpoints folder, e.g. results/converged/checkpoints")
]


@checkpoints_app.command("split")
def checkpoints_split(
    folder: CheckpointsFolder,
    max_mib: Annotated[float, typer.Option(help="Largest file (and part) in MiB")] = 95.0,
) -> None:
    """Replace every file over --max-mib by parts and a manifest (before a git commit)."""
    from bench.checkpoint_parts import split_large

    if not folder.is_dir():
        raise BenchError(f"no such folder: {folder}")
    for manifest in split_large(folder, int(max_mib * 2**20)):
        mib = manifest.size / 2**20
        typer.echo(f"split {manifest.name}: {mib:.1f} MiB in {len(manifest.parts)} parts")


@checkpoints_app.command("join")
def checkpoints_join(
    folder: CheckpointsFolder,
) -> None:
    """Put every split file back from its parts, checked against its manifest."""
    from bench.checkpoint_parts import join_all

    if not folder.is_dir():
        raise BenchError(f"no such folder: {folder}")
    for path in join_all(folder):
        typer.echo(f"joined {path}")


def _final_seeds(text: str) -> list[int]:
    return [] if text.strip().lower() in ("", "none") else _seeds(text)


@app.command()
def tune(
    model: Annotated[str, typer.Option(help="Model to tune")],
    dataset: Annotated[str, typer.Option(help="Dataset name")],
    trials: Annotated[int, typer.Option(help="Finished trials the study holds in total")],
    workers: WorkersOption = None,
    gpus_per_run: GpusPerRunOption = None,
    storage: Annotated[
        str | None,
        typer.Option(help="Journal file or database URL; default <out>/studies/journal.log"),
    ] = None,
    study: Annotated[str | None, typer.Option(help="Study name; default <Model>-<dataset>")] = None,
    timeout: Annotated[float | None, typer.Option(help="Start no trial after S seconds")] = None,
    pruner: Annotated[str, typer.Option(help="median, hyperband or none")] = "median",
    sampler: Annotated[str, typer.Option(help="tpe, random or grid")] = "tpe",
    seed: Annotated[int, typer.Option(help="Seed of the sampler and of every trial")] = 0,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster HEAD:PORT (needs a database --storage), or 'local' (a Ray "
            "instance of our own)"
        ),
    ] = None,
    final_seeds: Annotated[
        str, typer.Option(help="Seeds to re-run the best config on; 'none' skips")
    ] = "0,1,2",
    space: Annotated[
        Path | None, typer.Option(help="Search space; default configs/search/<Model>.yaml")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs of every trial")] = None,
    set_: SetOption = None,
    config: ConfigOption = None,
    device: DeviceOption = "auto",
    data_dir: DataDirOption = None,
    out: ResultsOption = Path("results"),
) -> None:
    """Search hyperparameters with Optuna; export the best to <out>/tuned; re-run it over
    seeds."""
    from bench import configs
    from bench.tuning import tune as tune_study

    try:
        summary = tune_study(
            model,
            dataset,
            trials=trials,
            workers=workers,
            gpus_per_run=gpus_per_run,
            storage=storage,
            study_name=study,
            timeout=timeout,
            pruner=pruner,
            sampler=sampler,
            seed=seed,
            ray_address=ray_address,
            final_seeds=_final_seeds(final_seeds),
            space=space,
            settings=configs.parse_assignments(set_ or []),
            epochs=epochs,
            config_files=config or [],
            device=device,
            data_dir=data_dir,
            out=out,
            progress=typer.echo,
            command=shlex.join(["bench", *sys.argv[1:]]),
        )
    except KeyboardInterrupt:
        typer.echo("interrupted: run the same command again to continue the study", err=True)
        raise typer.Exit(130) from None
    counts = ", ".join(f"{n} {state}" for state, n in summary.counts.items() if n)
    typer.echo(f"study {summary.study_name!r} in {summary.storage}: {counts}")
    if summary.best_trial is None:
        raise typer.Exit(1)


@app.command()
def ablate(
    model: Annotated[str, typer.Option(help="Model whose variants to compare")],
    dataset: Annotated[str, typer.Option(help="Dataset name")],
    grid: Annotated[Path, typer.Option(help="Grid file, e.g. configs/ablations/<Model>.yaml")],
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds")] = "0,1,2",
    workers: WorkersOption = None,
    gpus_per_run: GpusPerRunOption = None,
    ray_address: RayAddressOption = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs of every run")] = None,
    set_: SetOption = None,
    config: ConfigOption = None,
    device: DeviceOption = "auto",
    data_dir: DataDirOption = None,
    out: ResultsOption = Path("results"),
) -> None:
    """Run every variant of a grid over seeds; write ablations/<dataset>/<Model>.md and .csv."""
    from bench import configs
    from bench.tuning import ablate as run_ablation

    summary = run_ablation(
        model,
        dataset,
        grid,
        seeds=_seeds(seeds),
        workers=workers,
        gpus_per_run=gpus_per_run,
        ray_address=ray_address,
        settings=configs.parse_assignments(set_ or []),
        epochs=epochs,
        config_files=config or [],
        device=device,
        data_dir=data_dir,
        out=out,
        progress=typer.echo,
        command=shlex.join(["bench", *sys.argv[1:]]),
    )
    typer.echo(summary.markdown.read_text(encoding="utf-8"))
    typer.echo(f"ablation: {summary.csv} and {summary.markdown}")
    if summary.failed:
        raise typer.Exit(1)


@app.command()
def dashboard(
    storage: Annotated[
        str | None,
        typer.Option(help="Journal file or database URL; default <out>/studies/journal.log"),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback unless told)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 8080,
    out: Annotated[Path, typer.Option(help="Results folder (for the default storage)")] = Path(
        "results"
    ),
) -> None:
    """Serve optuna-dashboard on the study storage (learning curves, params, importances)."""
    from bench.tuning import serve_dashboard

    serve_dashboard(storage, host=host, port=port, out=out, say=typer.echo)


def main() -> None:
    from recbole_ext import compat

    try:
        compat.apply()  # on purpose, once: RecBole 1.2.1 on today's NumPy, pandas, SciPy, torch
        app()
    except BenchError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
