"""Markdown: the project's one table writer (:func:`markdown_table`: leaderboards, reports,
ablations and the run-cost tables all go through it) and the leaderboard document (table with
caption and notes, significance, provenance)."""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from bench import stats
from bench.leaderboard.board import Board, bigger_is_better, metric_names, seed_noise_flags
from bench.leaderboard.provenance import compatible, protocol

BEST_MARK = "†"
BASELINE_MARK = "‡"
NOISE_MARK = "≈"
TEST_NAMES = {"t": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}
# How the `stop` column names each way a run ended.
STOP_LABELS = {
    "early_stopping": "early",
    "epoch_limit": "limit",
    "time_budget": "budget",
    "failed": "failed",
}


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[bool] | None = None
) -> list[str]:
    """The lines of a markdown table: the header, its rule (``right[i]``: column ``i``
    right-aligned, for numbers; default: none), one line per row. Cells are written as given
    (``str``), a ``|`` in one escaped so that it cannot split the cell."""
    right = list(right) if right is not None else [False] * len(header)
    if len(right) != len(header):
        raise ValueError(f"{len(header)} columns but {len(right)} alignments")

    def line(cells: Sequence[Any]) -> str:
        if len(cells) != len(header):
            raise ValueError(f"a row has {len(cells)} cells for {len(header)} columns")
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "|".join("---:" if r else "---" for r in right) + "|"
    return [line(header), rule, *(line(cells) for cells in rows)]


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: floats to ``digits`` decimals, missing values empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}f}"
    return str(value)


def _g(value: float) -> str:
    """Test statistics and d: 4 significant digits (t and d explode for near-constant shifts)."""
    return "" if math.isnan(value) else f"{value:.4g}"


def _p(value: float) -> str:
    return "" if math.isnan(value) else (f"{value:.2e}" if value < 1e-3 else f"{value:.4f}")


def _ranks(values: pd.Series, bigger: bool) -> tuple[float | None, float | None]:
    """The best and the second-best distinct value of a column."""
    distinct = sorted(values.dropna().unique(), reverse=bigger)
    return (
        distinct[0] if distinct else None,
        distinct[1] if len(distinct) > 1 else None,
    )


def _significant(board: Board, role: str) -> set[tuple[str, str]]:
    sig = board.significance
    if sig.empty:
        return set()
    hits = sig[(sig["test"] == board.test) & (sig["role"] == role) & sig["significant"]]
    return set(zip(hits["model"], hits["metric"], strict=True))


def stop_cell(stop_reasons: str) -> str:
    """A row's ``stop_reasons`` (``time_budget:2 early_stopping:1``) as ``budget 2, early 1``."""
    parts = []
    for item in str(stop_reasons or "").split():
        reason, _, count = item.partition(":")
        parts.append(f"{STOP_LABELS.get(reason, reason)} {count}")
    return ", ".join(parts)


def table_markdown(board: Board) -> str:
    """The leaderboard table with its caption and notes."""
    table = board.table
    metrics = metric_names(table)
    shown = ["model", "family", "regime", "seeds", "noise", *metrics]
    shown += ["best_epoch", "train_seconds", "stop", "config"]
    header = [c if c != "train_seconds" else "train_s" for c in shown]
    marks = {
        BEST_MARK: _significant(board, "best"),
        BASELINE_MARK: _significant(board, "baseline"),
    }
    role_marks = {"best": BEST_MARK, "baseline": BASELINE_MARK}
    noise = {
        model: NOISE_MARK + "".join(role_marks[role] for role in roles)
        for model, roles in seed_noise_flags(board).items()
    }
    ranks = {m: _ranks(table[f"test_{m}"], bigger_is_better(m)) for m in metrics}
    left = ("model", "family", "regime", "noise", "stop", "config")
    rows = []
    for _, row in table.iterrows():
        cells = []
        for col in shown:
            if col in metrics:
                mean, std = row[f"test_{col}"], row[f"test_{col}_std"]
                if pd.isna(mean):
                    cells.append("")
                    continue
                text = f"{mean:.4f}" if pd.isna(std) else f"{mean:.4f} ± {std:.4f}"
                best, second = ranks[col]
                if mean == best:
                    text = f"**{text}**"
                elif mean == second:
                    text = f"_{text}_"
                text += "".join(m for m, hits in marks.items() if (row["model"], col) in hits)
                cells.append(text)
            elif col == "config":
                cells.append(f"`{row['config_hash']}`" if row["config_hash"] else "")
            elif col == "noise":
                cells.append(noise.get(row["model"], ""))
            elif col == "stop":
                cells.append(stop_cell(row["stop_reasons"]))
            elif col in ("best_epoch", "train_seconds"):
                cells.append(fmt(row.get(col), 1))
            else:
                cells.append(fmt(row[col]))
        rows.append(cells)
    lines = markdown_table(header, rows, [c not in left for c in shown])
    return "\n".join([*_caption(board), "", *lines, *_notes(board)])


def _span(caps: list[float]) -> str:
    return f"{caps[0]:.0f} s" if caps[0] == caps[-1] else f"{caps[0]:.0f}-{caps[-1]:.0f} s"


def _stop_lead(board: Board) -> str | None:
    """The line above the caption that says how the runs ended: ``Budget-limited`` when a
    training time budget cut any, ``Converged`` when none was cut."""
    ok = board.ok
    capped = [r for r in ok if r.config.get("time_budget_s")]
    stopped = [r for r in capped if r.stopped_by_budget]
    if stopped:
        # The span is the stopped runs' caps: a plan's deadline gives the runs it does not mean
        # to cap (budget 0) all the time left, and that number says nothing about the board.
        caps = sorted({float(r.config["time_budget_s"]) for r in stopped})
        finished = len(capped) - len(stopped)
        lead = (
            f"**Budget-limited:** {len(stopped)} of {len(ok)} runs stopped at a wall-clock "
            f"training cap (`time_budget_s`, {_span(caps)}) before early stopping; their numbers "
            "are lower bounds of what the models reach."
        )
        if finished:
            lead += f" {finished} more ran under a cap and finished before it."
        return lead
    if not ok or any(r.stopped_by_budget for r in ok):
        return None  # a cut run with no cap recorded: nothing true to say in one line
    early = sum(r.stop_reason == "early_stopping" for r in ok)
    ended = [f"{early} ended by early stopping"] if early else []
    limit = sum(r.stop_reason == "epoch_limit" for r in ok)
    ended += [f"{limit} at their epoch limit (`epochs`)"] if limit else []
    lead = (
        f"**Converged:** no run was cut by a training time budget; of {len(ok)} runs, "
        f"{' and '.join(ended)}."
    )
    if capped:
        caps = sorted({float(r.config["time_budget_s"]) for r in capped})
        lead += f" {len(capped)} ran under a cap (`time_budget_s`, {_span(caps)}) and finished."
    return lead


def _tuned(command: str | None) -> bool:
    """Whether a run's recorded command layered tuned or own hyperparameter files."""
    words = shlex.split(command or "")
    return words[:2] == ["bench", "tune"] or "--tuned" in words or "--config" in words


def _hyperparameter_line(board: Board) -> str | None:
    """Where the rows' hyperparameters come from, read from the runs' recorded commands."""
    if not board.ok:
        return None
    tuned = sorted({r.model for r in board.ok if _tuned(r.command)})
    if not tuned:
        return (
            "**Hyperparameters:** every row runs its model's defaults (`configs/models/`: the "
            "papers' or RecBole's), untuned; a row named after a variant adds the `--set` "
            "settings its provenance command shows."
        )
    return (
        f"**Hyperparameters:** {', '.join(tuned)} use tuned or own configuration files "
        "(`--tuned` / `--config`, see the provenance commands); the other rows run their "
        "model's defaults, untuned."
    )


def _caption(board: Board) -> list[str]:
    ranked_on = f"ranked by test {board.primary}" if board.primary else "ranked"
    text = (
        "Test metrics: mean ± sample standard deviation over seeds (the `seeds` column; no ± for "
        "a single seed). Per column, **bold** is the best and _italics_ the second best. Models "
        f"are selected (best epoch) on validation {board.primary or 'metric'} and {ranked_on}. "
        "`config`: the row's config hash."
    )
    text += (
        " `regime`: how a sequential model trained, `per-prefix` (RecBole's: every prefix of a "
        "sequence is one sample, the loss at its last position; `train_regime: interactions`) "
        "or `whole-sequence` (one sample per user, a loss at every position; `train_regime: "
        "users`); `mixed` when its seeds differ; empty for other families."
    )
    text += (
        " `stop`: how the row's runs ended, with their counts: `early` (early stopping on the "
        "validation metric), `limit` (the epoch limit, `epochs`), `budget` (cut by the "
        "training time budget, `time_budget_s`)."
    )
    if board.best:
        other = next(t for t in stats.TESTS if t != board.test)
        text += (
            f" {BEST_MARK}: significantly different from the best model, {board.best} "
            f"({TEST_NAMES[board.test]} on per-user values, Holm-adjusted, alpha {board.alpha}; "
            f"the {TEST_NAMES[other]} is in the significance table)."
        )
    if board.baseline and board.baseline != board.best:
        text += f" {BASELINE_MARK}: significantly different from the baseline, {board.baseline}."
    elif board.baseline:
        text += f" The baseline, {board.baseline}, is the best model."
    if board.best and board.primary:
        baseline_noise = (
            f" ({NOISE_MARK}{BASELINE_MARK}: from the baseline's)"
            if board.baseline and board.baseline != board.best
            else ""
        )
        text += (
            f" `noise`: {NOISE_MARK}{BEST_MARK} marks a row whose mean test {board.primary} "
            f"differs from the best model's{baseline_noise} by less than the larger of the two "
            "rows' std over seeds: the per-user tests ignore training randomness, so a marker "
            "there may not survive other seeds. A row with a single seed has no std and cannot "
            "be flagged."
        )
    for lead in (_hyperparameter_line(board), _stop_lead(board)):
        if lead is not None:
            text = lead + "\n\n" + text
    return [text]


def _notes(board: Board) -> list[str]:
    table = board.table
    notes = []
    if table["quick"].any():
        notes.append("Rows from `--quick` smoke runs are not comparable with full runs.")
    for row in table.itertuples(index=False):
        if row.budget_limited:
            notes.append(
                f"{row.model}: {row.budget_limited} of {row.seeds} run(s) stopped by the "
                "training time budget (`time_budget_s`) before early stopping: budget-limited."
            )
        if row.mixed_config:
            notes.append(
                f"Seeds of {row.model} ran with different configs ({row.config_hash}); "
                "their mean mixes them."
            )
        model = board.provenance.get("models", {}).get(row.model, {})
        if row.mixed_commit:
            versions = ", ".join(str(c) for c in model.get("code_versions", []))
            notes.append(f"Seeds of {row.model} ran on different code versions ({versions}).")
        if row.mixed_data:
            digests = ", ".join(str(d) for d in model.get("data_digests", []))
            notes.append(f"Seeds of {row.model} ran on different data files ({digests}).")
    if len(board.provenance.get("dataset_fingerprints", [])) > 1:
        notes.append(
            "Rows ran on different data files (see the dataset fingerprints below); "
            "they are not comparable."
        )
    if board.provenance.get("protocols"):
        notes.append("Rows followed different protocols (see below); they are not comparable.")
    if board.untested:
        notes.append(
            f"No per-user values stored for {', '.join(board.untested)}: not tested for "
            "significance."
        )
    if table["failed"].any():
        failed = table.loc[table["failed"] > 0]
        notes.extend(f"{r.model}: {r.failed} failed run(s)." for r in failed.itertuples())
    return ["", *[f"- {n}" for n in notes]] if notes else []


def significance_markdown(
    board: Board,
    metrics: list[str] | None = None,
    csv_ref: str | None = None,
    pairs: bool = False,
) -> str:
    """The paired tests of ``metrics`` (default: the primary metric) as a markdown table;
    ``csv_ref`` is the markdown that names the full table (default: the CSV's file name beside
    the leaderboard, as code). ``pairs``: the tests of the chosen pairs (``board.pair_tests``)
    instead of every row against the best and the baseline."""
    sig = board.pair_tests if pairs and board.pair_tests is not None else board.significance
    family = "the pairs listed" if pairs else "the models compared with the same reference"
    metrics = metrics or ([board.primary] if board.primary else [])
    level = f"{stats.CONFIDENCE:.0%}"
    interval_methods = "t-interval"
    if board.primary:
        interval_methods = (
            f"percentile bootstrap over users, {stats.BOOTSTRAP_RESAMPLES} resamples with a "
            f"fixed seed, for {board.primary}; t-interval for the other metrics"
        )
    intro = (
        "Paired tests on per-user test values: users paired by id (those evaluated for both "
        "models), each user's value averaged over a model's seeds first. Two-sided paired "
        "t-test and Wilcoxon signed-rank test (zero differences dropped); the "
        f"{TEST_NAMES[board.test]} decides the markers. p-values Holm-adjusted over {family} "
        f"on the same metric and test; alpha {board.alpha}. "
        "Differences, intervals and effect sizes are model minus reference: "
        f"{level} CI of the mean difference ({interval_methods}), Cohen's d_z (t-test) and "
        "rank-biserial correlation r (Wilcoxon). "
        f"All metric@k: {csv_ref or '`' + board.dataset + '.significance.csv`'}."
    )
    rows = sig[sig["metric"].isin(metrics)] if not sig.empty else sig
    if rows.empty:
        return intro + "\n\nNo tests: fewer than two models with per-user values."
    header = [
        "model",
        "reference",
        "metric",
        "n users",
        "mean diff",
        f"{level} CI",
        "t",
        "p",
        "p Holm",
        "d",
        "Wilcoxon W",
        "p",
        "p Holm",
        "r",
    ]
    tt = rows[rows["test"] == "t"].set_index(["model", "reference", "metric"])
    wil = rows[rows["test"] == "wilcoxon"].set_index(["model", "reference", "metric"])
    cells = []
    for key, t in tt.iterrows():
        w = wil.loc[key]
        model, reference, metric = key
        cells.append(
            [
                model,
                reference if t["role"] == "pair" else f"{reference} ({t['role']})",
                metric,
                str(t["n_users"]),
                f"{t['mean_diff']:+.4f}",
                _interval(t["ci_low"], t["ci_high"]),
                _g(t["statistic"]),
                _p(t["p_value"]),
                f"{_p(t['p_holm'])}{_star(t)}",
                _g(t["effect_size"]),
                _g(w["statistic"]),
                _p(w["p_value"]),
                f"{_p(w['p_holm'])}{_star(w)}",
                f"{w['effect_size']:+.3f}",
            ]
        )
    table = markdown_table(header, cells, [False] * 3 + [True] * 11)
    lines = [intro, "", *table, "", f"\\* Holm-adjusted p < {board.alpha}."]
    return "\n".join(lines)


def _star(row: pd.Series) -> str:
    return " *" if row["significant"] else ""


def _interval(low: float, high: float) -> str:
    return "" if pd.isna(low) or pd.isna(high) else f"[{low:+.4f}, {high:+.4f}]"


def _describe_protocol(p: dict[str, Any]) -> str:
    split = p.get("split") or {}
    split_text = ", ".join(f"{k} {v}" for k, v in split.items()) if split else "?"
    if split == {"LS": "valid_and_test"}:
        split_text += " (leave-one-out: last item test, second-last validation)"
    order = {"TO": "by time", "RO": "random"}.get(p.get("order") or "", "")
    mode = p.get("mode")
    mode_text = (
        ", ".join(f"{k}: {v}" for k, v in mode.items()) if isinstance(mode, dict) else str(mode)
    )
    # filter_inter_by_user_or_item only matters with .user/.item filters: the JSON keeps it.
    filters = {
        k: v
        for k, v in (p.get("filters") or {}).items()
        if v not in (None, False) and k != "filter_inter_by_user_or_item"
    }
    filter_text = ", ".join(f"{k}={v}" for k, v in filters.items()) or "none"
    excluded = "yes" if p.get("exclude_history_items") else "no"
    full_note = " ('full' ranks every item)" if "full" in mode_text else ""
    parts = [
        f"split {split_text}",
        f"order {p.get('order')}{f' ({order})' if order else ''}",
        f"grouped by {p.get('group_by') or 'none'}",
        f"ranking {mode_text}{full_note}",
        f"filters: {filter_text}",
        f"history items excluded from the ranking: {excluded}",
        f"validation metric {p.get('valid_metric')}",
        f"metrics {', '.join(p.get('metrics') or [])} at {p.get('topk')}",
    ]
    if p.get("max_sequence_length") is not None:
        parts.insert(5, f"max sequence length {p['max_sequence_length']} (sequential models)")
    if p.get("eval_user_limit"):
        parts.append(f"evaluated on {p['eval_user_limit']} sampled users")
    return "; ".join(parts)


def provenance_markdown(board: Board, json_ref: str | None = None) -> str:
    """Protocol, data, runs, code, packages, hardware and config hashes as a bullet list;
    ``json_ref`` is the markdown that names the provenance record (default: its file name
    beside the leaderboard, as code)."""
    prov = board.provenance
    lines = []
    p = prov.get("protocol")
    if p and any(p.get(k) is not None for k in ("split", "order", "mode")):
        lines.append(f"- Protocol: {_describe_protocol(p)}.")
    elif not prov.get("protocols"):
        lines.append("- Protocol: not recorded in the results.")
    for i, p in enumerate(prov.get("protocols") or []):
        models = sorted({r.model for r in board.ok if compatible(protocol(r), p)})
        lines.append(f"- Protocol {i + 1} ({', '.join(models)}): {_describe_protocol(p)}.")
    fingerprints = prov.get("dataset_fingerprints", [])
    for fp in fingerprints:
        who = f" ({', '.join(fp['models'])})" if len(fingerprints) > 1 else ""
        if fp["digest"] is None:
            lines.append(f"- Dataset{who}: no fingerprint recorded.")
            continue
        files = ", ".join(f"{n} {h[:12]}" for n, h in sorted((fp.get("sha256") or {}).items()))
        lines.append(
            f"- Dataset{who}: fingerprint `{fp['digest']}` (sha256 of the files: {files}); "
            f"{fp.get('users')} users, {fp.get('items')} items, "
            f"{fp.get('interactions')} interactions"
            + (f"; from {fp['source']}." if fp.get("source") else ".")
        )
    runs = prov.get("runs", {})
    when = ""
    if runs.get("first_finished_at"):
        when = f"; finished between {runs['first_finished_at']} and {runs['last_finished_at']}"
    lines.append(f"- Runs: {runs.get('ok', 0)} successful, {runs.get('failed', 0)} failed{when}.")
    versions = ", ".join(f"`{c}`" for c in prov.get("code_versions", []) if c)
    lines.append(f"- Code: commit {versions or 'unknown'}.")
    packages = ", ".join(f"{k} {'/'.join(v)}" for k, v in prov.get("packages", {}).items())
    python = "/".join(str(v) for v in prov.get("python", []) if v)
    lines.append(
        f"- Packages: {packages or 'unknown'}" + (f"; Python {python}." if python else ".")
    )
    for h in prov.get("hardware", []):
        m = h["machine"]
        if not any(m.values()):
            continue
        who = f" ({', '.join(h['models'])})" if len(prov["hardware"]) > 1 else ""
        lines.append(
            f"- Hardware{who}: {m.get('device')} ({m.get('device_name')}), "
            f"{m.get('cpu_count')} CPUs" + (f", {m['platform']}." if m.get("platform") else ".")
        )
    hashes = "; ".join(
        f"{model} `{', '.join(str(h) for h in info['config_hashes'])}`"
        for model, info in prov.get("models", {}).items()
        if info["config_hashes"]
    )
    if hashes:
        lines.append(f"- Config hashes: {hashes}.")
    json_ref = json_ref or f"`{board.dataset}.provenance.json`"
    if prov.get("rebuild_command"):
        lines.append(
            f"- Rebuilt by `{prov['rebuild_command']}`; each row's runs came from the command "
            f"lines under `models.<row>.commands` in {json_ref}."
        )
    lines.append(f"- Full record: {json_ref}.")
    return "\n".join(lines)


def to_markdown(board: Board) -> str:
    """The leaderboard document: table, significance, provenance."""
    parts = [
        f"# Leaderboard: {board.dataset}",
        "",
        table_markdown(board),
        "",
        f"## Significance ({board.primary})" if board.primary else "## Significance",
        "",
        significance_markdown(board),
        "",
        "## Provenance",
        "",
        provenance_markdown(board),
    ]
    return "\n".join(parts) + "\n"
