"""Figures of a leaderboard, as PNG and SVG, written atomically.

matplotlib is imported inside the functions (``import bench`` stays light) and used through its
object API on the Agg canvas, so no global backend or pyplot state is touched.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from bench.contract import RunResult

FORMATS = ("png", "svg")


# Up to this many legend entries sit inside the axes; more go in columns below the plot (30
# models inside collapsed the axes), and the figure grows by the legend's measured height.
LEGEND_INSIDE_MAX = 8
LEGEND_COLUMNS = 3
# Dashes and marker shapes that follow the ten colours, group by group: a marker at every epoch
# hides a line's dashes, so the marker's shape tells the groups apart as well.
_STYLE_GROUPS = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))


def _figure(width: float = 7.0, height: float = 4.5) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _line_styles(ax: Any) -> None:
    """Ten colours, then the same ten dashed with squares, dotted with triangles, dash-dotted
    with diamonds: 40 lines stay distinguishable."""
    from cycler import cycler
    from matplotlib import colormaps

    colours = list(colormaps["tab10"].colors)
    groups = cycler(linestyle=[g[0] for g in _STYLE_GROUPS]) + cycler(
        marker=[g[1] for g in _STYLE_GROUPS]
    )
    ax.set_prop_cycle(groups * cycler(color=colours))


def _legend(fig: Any, ax: Any, fontsize: str = "small") -> Any:
    """The axes' legend: inside for a few entries; for many, below the plot in as many columns
    (at most LEGEND_COLUMNS) as fit the figure's width, the figure grown to hold them (wider too
    when one column of long names is wider than the figure)."""
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) <= LEGEND_INSIDE_MAX:
        return ax.legend(handles, labels, fontsize=fontsize)
    renderer = fig.canvas.get_renderer()
    width, height = fig.get_size_inches()
    for ncol in range(LEGEND_COLUMNS, 0, -1):
        legend = fig.legend(
            handles, labels, loc="outside lower center", ncol=ncol, fontsize=fontsize
        )
        box = legend.get_window_extent(renderer)
        if box.width / fig.dpi <= width - 0.2 or ncol == 1:
            break
        legend.remove()
    fig.set_size_inches(max(width, box.width / fig.dpi + 0.3), height + box.height / fig.dpi + 0.2)
    return legend


def save(fig: Any, folder: str | os.PathLike, stem: str) -> list[Path]:
    """``<folder>/<stem>.png`` and ``.svg``, each saved to a temp file then renamed over."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in FORMATS:
        target = folder / f"{stem}.{fmt}"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            # The temp name has no image suffix, so the format is given explicitly.
            fig.savefig(tmp, format=fmt, dpi=150)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide figures from others
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        written.append(target)
    return written


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _seeds(n: int) -> str:
    """``1 seed``, ``3 seeds``: how many seeds a curve averages, for its legend entry."""
    return f"{n} seed{'s' if n != 1 else ''}"


def _epoch_scores(results: list[RunResult]) -> dict[str, pd.DataFrame]:
    """Per model: one row per (seed, epoch) with the validation score."""
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if not r.ok:
            continue
        for e in r.epochs:
            if e.valid_score is not None:
                rows[r.model].append(
                    {"seed": r.seed, "epoch": e.epoch, "score": float(e.valid_score)}
                )
    return {model: pd.DataFrame(v) for model, v in rows.items() if v}


def learning_curves(
    results: list[RunResult],
    folder: str | os.PathLike,
    stem: str = "learning_curves",
    models: list[str] | None = None,
) -> list[Path]:
    """Validation score per epoch for each model: mean over seeds, min-max band over seeds.

    Seeds that stopped early contribute to the epochs they ran.
    """
    from matplotlib.ticker import MaxNLocator

    scores = _epoch_scores(results)
    order = [m for m in (models or sorted(scores)) if m in scores]
    metric = next((r.valid_metric for r in results if r.valid_metric), "score")
    fig = _figure()
    ax = fig.add_subplot()
    _line_styles(ax)
    for model in order:
        by_epoch = scores[model].groupby("epoch")["score"].agg(["mean", "min", "max", "count"])
        epochs = by_epoch.index.to_numpy()  # 0-based, as best_epoch in the tables
        seeds = int(scores[model]["seed"].nunique())
        (line,) = ax.plot(
            epochs, by_epoch["mean"], markersize=3, label=f"{model} ({_seeds(seeds)})"
        )
        if len(epochs) > 1:
            ax.fill_between(
                epochs, by_epoch["min"], by_epoch["max"], color=line.get_color(), alpha=0.2
            )
        else:  # a band needs two epochs; a single validated epoch (e.g. Pop) gets a range bar
            # Clipped: the mean of equal scores (a deterministic model's seeds) can round one
            # ulp past them, and matplotlib refuses a negative error bar.
            spread = [
                (by_epoch["mean"] - by_epoch["min"]).clip(lower=0.0),
                (by_epoch["max"] - by_epoch["mean"]).clip(lower=0.0),
            ]
            ax.errorbar(epochs, by_epoch["mean"], yerr=spread, color=line.get_color(), capsize=4)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (from 0)")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("Validation learning curves (mean over seeds, band: min-max)")
    ax.grid(True, alpha=0.3)
    if order:
        _legend(fig, ax)
    else:
        ax.text(0.5, 0.5, "no validation scores", ha="center", transform=ax.transAxes)
    return save(fig, folder, stem)


def _kl_terms(results: list[RunResult]) -> dict[str, pd.DataFrame]:
    """Per model: one row per (seed, epoch, term) for the epoch means of its KL loss terms
    (``kl``, ``kl1``, ``kl2`` ... in ``loss_terms``)."""
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if not r.ok:
            continue
        for e in r.epochs:
            for term, value in (e.loss_terms or {}).items():
                if term.startswith("kl") and value is not None:
                    rows[r.model].append(
                        {"seed": r.seed, "epoch": e.epoch, "term": term, "value": value}
                    )
    return {model: pd.DataFrame(v) for model, v in rows.items() if v}


def kl_curves(
    results: list[RunResult],
    folder: str | os.PathLike,
    stem: str = "kl_curves",
    models: list[str] | None = None,
) -> list[Path] | None:
    """Each KL term per epoch (mean over seeds, log scale): a term falling towards 0 is
    posterior collapse. None when no run records a KL term."""
    fig = kl_figure(results, models)
    return None if fig is None else save(fig, folder, stem)


def kl_figure(results: list[RunResult], models: list[str] | None = None) -> Any | None:
    """The figure of :func:`kl_curves`, unsaved; None when no run records a KL term."""
    terms = _kl_terms(results)
    order = [m for m in (models or sorted(terms)) if m in terms]
    if not order:
        return None
    fig = _figure(8.0, 5.0)
    ax = fig.add_subplot()
    # One colour per model and one dash per term (kl1 solid, kl2 dashed, ...): a model's branches
    # read as one family, and 15 curves never share a colour the way a 10-colour cycle makes them.
    colours = _colours(len(order))
    names = sorted({term for model in order for term in terms[model]["term"].unique()})
    styles = itertools.cycle(style for style, _ in _STYLE_GROUPS)
    dashes = {term: style for term, style in zip(names, styles, strict=False)}
    for model, colour in zip(order, colours, strict=True):
        for term, part in terms[model].groupby("term"):
            mean = part.groupby("epoch")["value"].mean()
            seeds = int(part["seed"].nunique())
            ax.plot(
                mean.index,
                mean.to_numpy(),
                color=colour,
                linestyle=dashes[term],
                marker="o" if len(mean) == 1 else None,  # a single epoch draws no line
                label=f"{model} {term} ({_seeds(seeds)})",
            )
    ax.set_yscale("log")
    ax.set_xlabel("epoch (from 0)")
    ax.set_ylabel("KL per position, epoch mean")
    ax.set_title("KL terms per epoch (mean over seeds): collapse shows as a fall towards 0")
    ax.grid(True, alpha=0.3, which="both")
    _legend(fig, ax, fontsize="x-small")
    return fig


def _colours(n: int) -> list[Any]:
    """``n`` distinct colours: tab10's for up to ten, tab20's for up to twenty, then a cycle."""
    from matplotlib import colormaps

    palette = list(colormaps["tab10" if n <= 10 else "tab20"].colors)
    return [palette[i % len(palette)] for i in range(n)]


def metric_bars(
    table: pd.DataFrame, metric: str, folder: str | os.PathLike, stem: str | None = None
) -> list[Path]:
    """Test ``metric`` per model (table order): mean over seeds, error bars one std."""
    column = f"test_{metric}"
    rows = table[table[column].notna()] if column in table else table.iloc[0:0]
    fig = _figure(max(5.5, 1.0 + 0.8 * len(rows)), 4.5)
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    std = rows[f"{column}_std"].fillna(0.0).to_numpy() if len(rows) else np.zeros(0)
    ax.bar(x, rows[column].to_numpy() if len(rows) else [], yerr=std, capsize=4, alpha=0.85)
    ax.set_xticks(x, [f"{m}\n(n={s})" for m, s in zip(rows["model"], rows["seeds"], strict=True)])
    if len(rows) > 6:  # slanted, each name ending under its bar rather than centred across two
        for label in ax.get_xticklabels():
            label.set(rotation=45, horizontalalignment="right", rotation_mode="anchor")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"Test {metric}\n(mean over seeds, error bars: std)")
    ax.grid(True, axis="y", alpha=0.3)
    return save(fig, folder, stem or f"bar_{metric.replace('@', '_at_')}")


def metric_at_k(
    table: pd.DataFrame, folder: str | os.PathLike, stem: str = "metric_at_k"
) -> list[Path]:
    """Test metric vs K, one panel per metric family, one line per model (mean over seeds)."""
    families: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for col in table.columns:
        if col.startswith("test_") and not col.endswith("_std"):
            base, _, k = col.removeprefix("test_").partition("@")
            if k.isdigit():
                families[base].append((int(k), col))
    names = list(families)
    ncols = min(2, max(1, len(names)))
    nrows = max(1, -(-len(names) // ncols))
    rows = table[table["seeds"] > 0]
    fig = _figure(5.0 * ncols, 3.6 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, base in zip(axes, names, strict=False):
        _line_styles(ax)
        points = sorted(families[base])
        ks = [k for k, _ in points]
        for _, row in rows.iterrows():
            ax.plot(ks, [row[c] for _, c in points], markersize=3, label=row["model"])
        ax.set_xticks(ks)
        ax.set_xlabel("K")
        ax.set_ylabel(f"test {base}@K")
        ax.set_title(f"{base}@K")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    if names and len(rows):
        _legend(fig, axes[0])
    fig.suptitle("Test metrics at K (mean over seeds)")
    return save(fig, folder, stem)
