"""Provenance: what produced a board's numbers (protocol, data, configs, code, packages,
hardware, dates, how the runs stopped), as the ``.provenance.json`` record."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from bench import stats
from bench.contract import RunResult
from bench.leaderboard.board import (
    Board,
    distinct,
    metric_sort_key,
    run_digest,
    stop_counts,
)

_FILTER_KEYS = (
    "user_inter_num_interval",
    "item_inter_num_interval",
    "val_interval",
    "rm_dup_inter",
    "filter_inter_by_user_or_item",
)


def protocol(result: RunResult) -> dict[str, Any]:
    """The evaluation protocol a run followed, from its resolved config."""
    config = result.config
    eval_args = config.get("eval_args") or {}
    return {
        "split": eval_args.get("split"),
        "order": eval_args.get("order"),
        "group_by": eval_args.get("group_by"),
        "mode": eval_args.get("mode"),
        "filters": {k: config.get(k) for k in _FILTER_KEYS},
        # Only sequential models read it; RecBole's default in a general model's config is noise.
        "max_sequence_length": (
            config.get("MAX_ITEM_LIST_LENGTH") if result.family == "sequential" else None
        ),
        "exclude_history_items": config.get("exclude_history_items"),
        "valid_metric": result.valid_metric,
        "metrics": config.get("metrics"),
        "topk": config.get("topk"),
        "eval_user_limit": config.get("eval_user_limit"),
    }


def compatible(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same protocol; a general model (no max sequence length) fits any sequential one."""
    for key in a.keys() | b.keys():
        if key == "max_sequence_length" and None in (a.get(key), b.get(key)):
            continue
        if a.get(key) != b.get(key):
            return False
    return True


def merge_protocols(protocols: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct protocols among runs, general models merged into a compatible one."""
    groups: list[dict[str, Any]] = []
    for p in protocols:
        for i, group in enumerate(groups):
            if compatible(group, p):
                if group["max_sequence_length"] is None:
                    groups[i] = p
                break
        else:
            groups.append(p)
    return groups


def _environment(result: RunResult, key: str) -> Any:
    return getattr(result.environment, key) if result.environment else None


def provenance(board: Board) -> dict[str, Any]:
    """What produced the numbers: protocol, data, configs, code, packages, hardware, dates."""
    ok = board.ok
    protocols = merge_protocols([protocol(r) for r in ok])
    fingerprints = []
    for digest in distinct([run_digest(r) for r in ok]):
        data = next(r for r in ok if run_digest(r) == digest).data
        fingerprints.append(
            {
                "digest": digest,
                "sha256": data.sha256 if data else None,
                "users": data.users if data else None,
                "items": data.items if data else None,
                "interactions": data.interactions if data else None,
                "source": data.source if data else None,
                "models": sorted({r.model for r in ok if run_digest(r) == digest}),
            }
        )
    packages: dict[str, list[str]] = defaultdict(list)
    for r in ok:
        for name, version in (_environment(r, "packages") or {}).items():
            if version is not None and version not in packages[name]:
                packages[name].append(version)
    hardware: list[dict[str, Any]] = []
    for r in ok:
        key = {k: _environment(r, k) for k in ("device", "device_name", "cpu_count", "platform")}
        entry = next((h for h in hardware if h["machine"] == key), None)
        if entry is None:
            entry = {"machine": key, "models": []}
            hardware.append(entry)
        if r.model not in entry["models"]:
            entry["models"].append(r.model)
    finished = sorted(r.finished_at for r in ok if r.finished_at)
    models: dict[str, Any] = {}
    for row in board.table.itertuples(index=False):
        runs = sorted((r for r in ok if r.model == row.model), key=lambda r: r.seed)
        done = sorted(r.finished_at for r in runs if r.finished_at)
        models[row.model] = {
            "seeds": [r.seed for r in runs],
            "failed": int(row.failed),
            "config_hashes": distinct([r.config_hash for r in runs]),
            "git_commits": distinct([_environment(r, "git_commit") for r in runs]),
            # The last commit that changed code: what the mixed-commit flag compares.
            "code_versions": distinct([r.code_version for r in runs]),
            "data_digests": distinct([run_digest(r) for r in runs]),
            "flags": row.flags.split() if row.flags else [],
            "stop_reasons": stop_counts(runs),
            "train_regimes": distinct([r.config.get("train_regime") for r in runs]),
            "quick": bool(row.quick),
            "first_finished_at": done[0] if done else None,
            "last_finished_at": done[-1] if done else None,
            # What trained the row: each run's own command line, as it was typed or planned.
            "commands": distinct([r.command for r in runs]),
        }
    return {
        "dataset": board.dataset,
        "protocol": protocols[0] if len(protocols) == 1 else None,
        "protocols": protocols if len(protocols) > 1 else [],
        "dataset_fingerprints": fingerprints,
        "models": models,
        "git_commits": distinct([_environment(r, "git_commit") for r in ok]),
        "code_versions": distinct([r.code_version for r in ok]),
        "packages": dict(packages),
        "python": distinct([_environment(r, "python") for r in ok]),
        "hardware": hardware,
        "runs": {
            "ok": len(ok),
            "failed": len(board.results) - len(ok),
            "stop_reasons": stop_counts(ok),
            "first_finished_at": finished[0] if finished else None,
            "last_finished_at": finished[-1] if finished else None,
        },
        "statistics": {
            "aggregation": "mean and sample standard deviation (ddof=1) over seeds",
            "pairing": "by user id; users evaluated for both models; "
            "each user's value averaged over a model's seeds first",
            "tests": "two-sided paired t-test and Wilcoxon signed-rank test (zero differences "
            "dropped)",
            "marker_test": board.test,
            "correction": "Holm, over the models compared with the same reference on the same "
            "metric with the same test",
            "alpha": board.alpha,
            "confidence_intervals": f"{stats.CONFIDENCE:.0%} interval of the mean difference "
            f"(model - reference): percentile bootstrap over users "
            f"({stats.BOOTSTRAP_RESAMPLES} resamples, seed {stats.BOOTSTRAP_SEED}) on the "
            "primary metric, t-interval on the others",
            "seed_noise_flag": "a row with at least two seeds whose mean differs from a "
            "reference's by less than the larger of the two rows' std over seeds",
            "effect_sizes": "rank-biserial correlation (Wilcoxon), Cohen's d_z (t-test), "
            "on model - reference",
            "primary_metric": board.primary,
            "metrics_tested": sorted(set(board.significance["metric"]), key=metric_sort_key),
            "best": board.best,
            "baseline": board.baseline,
            "untested_models": board.untested,
        },
    }
