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


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise BenchError(f"--seeds expects comma-separated integers, got {text!r}") from exc
    if not seeds:
        raise BenchError("--seeds is empty")
    return seeds


@app.command()
def run(
    models: Annotated[str, typer.Option(help="'all' (the dataset's suite) or names: A,B")],
    dataset: Annotated[str, typer.Option(help="Dataset name (configs/datasets/<name>.yaml)")],
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds")] = "0",
    epochs: Annotated[int | None, typer.Option(help="Override every model's epochs")] = None,
    quick: Annotated[bool, typer.Option(help="Smoke setting: configs/quick.yaml")] = False,
    tuned: Annotated[
        bool, typer.Option(help="Use configs/tuned/<dataset>/<Model>.yaml from bench tune")
    ] = False,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="key=value, repeatable; YAML values")
    ] = None,
    config: Annotated[
        list[Path] | None, typer.Option(help="Extra RecBole YAML file, repeatable")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    data_dir: Annotated[Path | None, typer.Option(help="Folder holding <dataset>/")] = None,
    out: Annotated[Path, typer.Option(help="Results folder")] = Path("results"),
    resume: Annotated[bool, typer.Option(help="Skip runs whose result exists")] = False,
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
    )
    for model, seed in summary.skipped:
        typer.echo(f"skipped {model} seed {seed}: result exists (--resume)")
    if summary.leaderboard is not None:
        typer.echo(summary.leaderboard.read_text(encoding="utf-8"))
        typer.echo(f"leaderboard: {summary.leaderboard_csv} and {summary.leaderboard}")
    for failed in summary.failed:
        message = failed["error"]["message"].splitlines()[0] if failed["error"]["message"] else ""
        typer.echo(
            f"FAILED {failed['model']} seed {failed['seed']}: {failed['error']['type']}: {message}",
            err=True,
        )
    if summary.failed:
        raise typer.Exit(1)


@app.command("leaderboard")
def leaderboard_command(
    results: Annotated[Path, typer.Option(help="Results folder")] = Path("results"),
    dataset: Annotated[str | None, typer.Option(help="Only this dataset")] = None,
) -> None:
    """Rebuild leaderboard/<dataset>.csv and .md from the results folder."""
    from bench import leaderboard

    datasets = [dataset] if dataset else leaderboard.datasets_with_results(results)
    if not datasets:
        raise BenchError(f"no results under {results / 'runs'}")
    for name in datasets:
        written = leaderboard.write(results, name)
        if written is None:
            raise BenchError(f"no results for dataset {name!r} under {results / 'runs'}")
        typer.echo(f"{name}: {written[0]} and {written[1]}")


@app.command()
def models() -> None:
    """List every registered model: name, family, source."""
    from rich.console import Console
    from rich.table import Table

    from recbole_ext import registry

    table = Table("name", "family", "source")
    for spec in registry.all_models():
        table.add_row(spec.name, spec.family, spec.source)
    Console().print(table)


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


def main() -> None:
    try:
        app()
    except BenchError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
