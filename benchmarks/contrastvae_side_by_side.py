"""ContrastVAE, ours against the official implementation, epoch by epoch, side by side.

Both train on the same Amazon Beauty data (the official code's ``Beauty.txt`` is the file our
atomic file was made from), with the official README's Beauty settings, on the same device and for
the same number of epochs. After every epoch each side runs its own full validation and full test
(every user, every item ranked) and reports HR@10, NDCG@10, HR@20, NDCG@20, with the seconds of
the epoch, of each evaluation, and the peak device memory of each phase. Each side runs in a fresh
process, one after the other, so memory figures and timings do not interfere.

The official code runs unmodified from ``--official-dir`` (see ``OfficialContrastVAE`` in
``sequential_speed.py``: its ``main()`` builds everything and this script drives its trainer's
``train``, ``valid`` and ``test``); nothing of it is copied here.

    python benchmarks/contrastvae_side_by_side.py --dataset amazon-beauty --data-dir DIR \\
        --official-dir DIR --device cuda --epochs 10 --out results/perf

``--set KEY=VALUE`` changes our side's settings (``--set official=true``: every switch the
official code's, as the boards' ``ContrastVAE-official`` row). ``--sides official,ours
--match-epochs`` runs the official side first and ours for as many epochs as it completed (with
``--side-time-limit 3600``: what the official code trains in an hour, and ours the same).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sequential_speed import (  # noqa: E402
    OFFICIAL_BEAUTY_ARGS,
    OfficialContrastVAE,
    _Limited,
    cuda_peak,
    machine_info,
    sync,
)

from bench.io import write_text  # noqa: E402

METRICS = ("hit@10", "ndcg@10", "hit@20", "ndcg@20")
SIDES = ("ours", "official")
_EPOCHS: list[dict[str, Any]] = []  # a worker's epochs so far


def _phase(device: torch.device, fn: Any, *args: Any) -> tuple[Any, float, dict[str, float]]:
    """(result, seconds, cuda peak) of one phase: ``fn(*args)``."""
    peak: dict[str, float] = {}
    with cuda_peak(device, peak):
        sync(device)
        start = time.perf_counter()
        result = fn(*args)
        sync(device)
        seconds = time.perf_counter() - start
    return result, seconds, peak


def run_ours(args: argparse.Namespace) -> list[dict[str, Any]]:
    from recbole.config import Config
    from recbole.utils import init_seed

    from bench.configs import parse_assignments
    from bench.contract import RunOptions
    from bench.preflight import prepare
    from recbole_ext.data import load_dataset, prepare_data
    from recbole_ext.training import recording_trainer

    device = torch.device(args.device)
    request = RunOptions(
        dataset=args.dataset,
        model="ContrastVAE",
        seed=args.seed,
        device=args.device,
        data_dir=args.data_dir,
        cache_dir=Path(args.cache_dir),
        settings=parse_assignments(args.set),
    )
    prepared = prepare(request)
    config_dict = dict(prepared.config_dict)
    checkpoints = tempfile.mkdtemp(prefix="side-by-side-")
    config_dict.update(data_path=str(prepared.data_path), checkpoint_dir=checkpoints)
    config = Config(model=prepared.spec.cls, dataset=prepared.data_name, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    dataset, _ = load_dataset(config, request.cache_dir)
    train, valid, test = prepare_data(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = prepared.spec.cls(config, train._dataset).to(device)
    trainer = recording_trainer(config, model)

    def evaluate(data: Any) -> dict[str, float]:
        return trainer.evaluate(data, load_best_model=False, show_progress=False)

    def train_epoch(epoch: int) -> float:
        batches = list(itertools.islice(train, args.train_steps)) if args.train_steps else train
        loss = trainer._train_epoch(batches, epoch)
        return float(sum(loss) if isinstance(loss, tuple) else loss)

    epochs = []
    for epoch in range(args.epochs):
        loss, train_s, train_peak = _phase(device, train_epoch, epoch)
        v, valid_s, eval_peak = _phase(device, evaluate, valid)
        t, test_s, _ = _phase(device, evaluate, test)
        epochs.append(_epoch(epoch, loss, train_s, valid_s, test_s, train_peak, eval_peak, v, t))
        _progress("ours", epochs[-1], args)
    return epochs


def _test_matrix(trainer: Any) -> Any:
    """The official test-time rating matrix (every item but the last of each user), built as
    its ``generate_rating_matrix_test`` builds it."""
    import numpy as np
    from scipy.sparse import csr_matrix

    user_seq = trainer.test_dataloader.dataset.user_seq
    rows = [u for u, items in enumerate(user_seq) for _ in items[:-1]]
    cols = [i for items in user_seq for i in items[:-1]]
    shape = trainer.args.train_matrix.shape
    return csr_matrix((np.ones(len(rows)), (rows, cols)), shape=shape)


def run_official(args: argparse.Namespace) -> list[dict[str, Any]]:
    from recbole_ext import compat

    compat.apply()

    device = torch.device(args.device)
    data_dir = Path(args.official_data_dir or Path(args.data_dir) / args.dataset)
    official = OfficialContrastVAE(Path(args.official_dir), data_dir, device)
    trainer = official.trainer
    valid_matrix, test_matrix = trainer.args.train_matrix, _test_matrix(trainer)

    def evaluate(which: str, epoch: int) -> dict[str, float]:
        trainer.args.train_matrix = valid_matrix if which == "valid" else test_matrix
        with contextlib.redirect_stdout(sys.stderr):
            scores = getattr(trainer, which)(epoch, full_sort=True)[0]
        # [HIT@1, NDCG@1, HIT@5, NDCG@5, HIT@10, NDCG@10, HIT@15, NDCG@15, HIT@20, NDCG@20, ...]
        return dict(zip(METRICS, (scores[4], scores[5], scores[8], scores[9]), strict=True))

    def train(epoch: int) -> float:
        with contextlib.redirect_stdout(sys.stderr):
            if args.train_steps:  # smoke runs: a few batches of its own loader
                trainer.iteration(epoch, _Limited(official._next_batch, args.train_steps))
            else:
                trainer.train(epoch)
        return float("nan")  # its loop prints the loss; it returns none

    epochs = []
    for epoch in range(args.epochs):
        loss, train_s, train_peak = _phase(device, train, epoch)
        v, valid_s, eval_peak = _phase(device, evaluate, "valid", epoch)
        t, test_s, _ = _phase(device, evaluate, "test", epoch)
        epochs.append(_epoch(epoch, loss, train_s, valid_s, test_s, train_peak, eval_peak, v, t))
        _progress("official", epochs[-1], args)
    return epochs


def _epoch(
    epoch: int,
    loss: Any,
    train_s: float,
    valid_s: float,
    test_s: float,
    train_peak: dict[str, float],
    eval_peak: dict[str, float],
    valid: dict[str, float],
    test: dict[str, float],
) -> dict[str, Any]:
    return {
        "epoch": epoch + 1,
        "loss": float(loss) if loss is not None else None,
        "train_s": train_s,
        "valid_s": valid_s,
        "test_s": test_s,
        "train_peak_mib": train_peak.get("peak_mib"),
        "eval_peak_mib": eval_peak.get("peak_mib"),
        "valid": {m: float(valid[m]) for m in METRICS},
        "test": {m: float(test[m]) for m in METRICS},
    }


def _progress(side: str, e: dict[str, Any], args: argparse.Namespace) -> None:
    """Print the epoch, and save the epochs so far (a side stopped at its time limit keeps them)."""
    _EPOCHS.append(e)
    write_text(Path(args.worker_out), json.dumps(_EPOCHS))
    print(
        f"{side} epoch {e['epoch']}: train {e['train_s']:.1f} s, valid {e['valid_s']:.1f} s, "
        f"valid ndcg@10 {e['valid']['ndcg@10']:.4f}, test ndcg@10 {e['test']['ndcg@10']:.4f}",
        flush=True,
    )


# --- the report -------------------------------------------------------------------------------
def _median(values: list[float]) -> float:
    values = sorted(v for v in values if v is not None)
    n = len(values)
    return (values[n // 2] + values[(n - 1) // 2]) / 2 if n else float("nan")


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """Per side: median epoch / validation / test seconds, peak memory, the best-validation
    epoch and its test metrics; and the ratios ours / official."""
    out: dict[str, Any] = {}
    for side in SIDES:
        epochs = report["sides"].get(side) or []
        if not epochs:
            continue
        best = max(epochs, key=lambda e: e["valid"]["ndcg@10"])
        out[side] = {
            "train_s": _median([e["train_s"] for e in epochs]),
            "valid_s": _median([e["valid_s"] for e in epochs]),
            "test_s": _median([e["test_s"] for e in epochs]),
            "train_peak_mib": max((e["train_peak_mib"] or 0) for e in epochs) or None,
            "eval_peak_mib": max((e["eval_peak_mib"] or 0) for e in epochs) or None,
            "best_epoch": best["epoch"],
            "best_valid": best["valid"],
            "best_test": best["test"],
        }
    if len(out) == 2:
        out["ratio"] = {
            k: out["ours"][k] / out["official"][k]
            for k in ("train_s", "valid_s", "test_s", "train_peak_mib", "eval_peak_mib")
            if out["ours"][k] and out["official"][k]
        }
    return out


def _f(value: Any, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _length_text(report: dict[str, Any]) -> str:
    official = report["sides"].get("official") or []
    if report.get("match_epochs"):
        limit = report.get("side_time_limit_s")
        within = f" within its {limit:g}-second limit" if limit else ""
        epochs = f"{len(official)} epoch" + ("" if len(official) == 1 else "s")
        return f"the official code {epochs}{within}, ours as many"
    return f"{report['epochs']} epochs each"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    settings = report.get("ours_set") or []
    ours = "`configs/models/ContrastVAE.yaml` (the same README settings)"
    if settings:
        ours += " with " + ", ".join(f"`--set {item}`" for item in settings)
    lines = [
        "# ContrastVAE: ours against the official implementation, epoch by epoch",
        "",
        f"Dataset {report['dataset']} (same `Beauty.txt`), device `{m.get('device')}` "
        f"({m.get('device_name') or m.get('cpu')}), {_length_text(report)}, each side in "
        f"its own process, one after the other. Official code: commit `{report['official_commit']}`"
        f", run as `{report['official_command']}`. Ours: {ours} through the harness. Measured on "
        f"{report['measured_at']}; regenerate with `{report['command']}`.",
        "",
        "Per epoch: training seconds, full validation and full test seconds (every user, every "
        "item), peak device memory (`max_memory_allocated`, MiB) of the training epoch and of the "
        "validation, and each side's own metrics after the epoch (HR = hit = recall with one "
        "target).",
        "",
        "| epoch | train s ours | train s official | valid s ours | valid s official "
        "| test s ours | test s official | peak MiB ours (train/eval) | peak MiB official "
        "| valid NDCG@10 ours | valid NDCG@10 official | test HR@10 ours | test HR@10 official "
        "| test NDCG@10 ours | test NDCG@10 official | test HR@20 ours | test HR@20 official "
        "| test NDCG@20 ours | test NDCG@20 official |",
        "|" + "---:|" * 19,
    ]
    ours, official = report["sides"].get("ours") or [], report["sides"].get("official") or []
    for i in range(max(len(ours), len(official))):
        o = ours[i] if i < len(ours) else None
        f = official[i] if i < len(official) else None

        def cell(e: Any, key: str, digits: int = 1) -> str:
            return _f(e[key], digits) if e and e[key] is not None else ""

        def metric(e: Any, split: str, name: str) -> str:
            return _f(e[split][name]) if e else ""

        peaks = [
            f"{cell(e, 'train_peak_mib', 0)}/{cell(e, 'eval_peak_mib', 0)}" if e else ""
            for e in (o, f)
        ]
        row = [str(i + 1)]
        row += [cell(o, "train_s"), cell(f, "train_s"), cell(o, "valid_s"), cell(f, "valid_s")]
        row += [cell(o, "test_s"), cell(f, "test_s"), *peaks]
        row += [metric(o, "valid", "ndcg@10"), metric(f, "valid", "ndcg@10")]
        for name in METRICS:
            row += [metric(o, "test", name), metric(f, "test", name)]
        lines.append("| " + " | ".join(row) + " |")
    s = report["summary"]
    lines += ["", "## Summary", ""]
    for side in SIDES:
        if side in s:
            x = s[side]
            peak = (
                f"; peak {_f(x['train_peak_mib'], 0)} MiB training, "
                f"{_f(x['eval_peak_mib'], 0)} MiB evaluation"
                if x["train_peak_mib"] or x["eval_peak_mib"]
                else ""  # a CPU: no CUDA peak
            )
            lines.append(
                f"- {side}: median {x['train_s']:.2f} s per training epoch, {x['valid_s']:.2f} s "
                f"per full validation, {x['test_s']:.2f} s per full test{peak}; best "
                f"validation NDCG@10 at epoch {x['best_epoch']}: test HR@10 "
                f"{x['best_test']['hit@10']:.4f}, NDCG@10 {x['best_test']['ndcg@10']:.4f}, HR@20 "
                f"{x['best_test']['hit@20']:.4f}, NDCG@20 {x['best_test']['ndcg@20']:.4f}."
            )
    for side, error in (report.get("errors") or {}).items():
        lines.append(f"- {side}: {error} (the table holds the epochs it finished).")
    if "ratio" in s:
        r = s["ratio"]
        lines.append(
            "- ours / official: "
            + ", ".join(f"{k.replace('_', ' ')} {v:.2f}x" for k, v in r.items())
            + "."
        )
    lines += [
        "",
        "## How the two differ",
        "",
        "- History: the official validation sets the scores of the user's training items to 0 "
        "(items with negative scores can then rank below them); ours ranks every item the user "
        "interacted with last (`exclude_history_items`). The official test masks every item but "
        "the test item; ours masks the user's history before the test item, the same set.",
        "- Sampling: both draw one negative per position for the BCE loss; their random streams "
        "differ, so their curves differ by noise even where the models agree.",
        "- Ours uses its principled defaults (`first_branch_mu_plus_sigma: false`, "
        "`share_encoder_pass: true`, `da_targets: augmented`) unless set otherwise above "
        "(`official: true` turns every one to the official code's); the official quirks are "
        "options of our model (see `configs/models/ContrastVAE.yaml`).",
    ]
    return "\n".join(lines) + "\n"


def _official_commit(official_dir: str) -> str:
    path = Path(official_dir) / "COMMIT"
    return path.read_text().strip() if path.is_file() else "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="amazon-beauty")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--official-dir", default=None)
    p.add_argument("--official-data-dir", default=None, help="folder holding Beauty.txt")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-steps", type=int, default=0, help="smoke runs: batches per epoch")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = PyTorch's default")
    p.add_argument("--sides", default="ours,official", help="in the order they run")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE for our side (YAML)")
    p.add_argument(
        "--match-epochs",
        action="store_true",
        help="ours runs as many epochs as the official side (run first) completed",
    )
    p.add_argument("--side-time-limit", type=float, default=None, help="seconds per side")
    p.add_argument("--cache-dir", default="results/cache/datasets")
    p.add_argument("--out", default="results/perf")
    p.add_argument("--from-json", default=None, help="re-render the markdown of a saved report")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker_command(
    argv: list[str], side: str, worker_out: Path, report: dict[str, Any]
) -> list[str]:
    """The command of one side's worker process. With ``--match-epochs``, ours gets as many
    epochs as the official side completed (argparse keeps the last ``--epochs``)."""
    cmd = [sys.executable, __file__, *argv, "--worker", side, "--worker-out", str(worker_out)]
    official = report["sides"].get("official")
    if side == "ours" and report.get("match_epochs") and official:
        cmd += ["--epochs", str(len(official))]
    return cmd


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        report["summary"] = summary(report)
        write_text(out / "contrastvae_side_by_side.md", markdown(report))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        run_ours(args) if args.worker == "ours" else run_official(args)
        return
    sides = [s for s in args.sides.split(",") if s]
    if "official" in sides and not args.official_dir:
        sys.exit("--official-dir is needed for the official side")
    if args.match_epochs and sides != ["official", "ours"]:
        sys.exit("--match-epochs needs --sides official,ours")
    report: dict[str, Any] = {
        "dataset": args.dataset,
        "epochs": args.epochs,
        "machine": machine_info(torch.device(args.device)),
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": shlex.join(["python", "benchmarks/contrastvae_side_by_side.py", *sys.argv[1:]]),
        "official_commit": _official_commit(args.official_dir) if args.official_dir else None,
        "official_command": "python main.py " + OFFICIAL_BEAUTY_ARGS,
        "ours_set": list(args.set),
        "side_time_limit_s": args.side_time_limit,
        "match_epochs": args.match_epochs,
        "sides": {},
        "errors": {},
    }
    for side in sides:
        with tempfile.TemporaryDirectory() as tmp:
            worker_out = Path(tmp) / f"{side}.json"
            cmd = worker_command(sys.argv[1:], side, worker_out, report)
            print(f"--- {side}", flush=True)
            try:
                code = subprocess.run(cmd, check=False, timeout=args.side_time_limit).returncode
            except subprocess.TimeoutExpired:
                code = f"stopped at --side-time-limit {args.side_time_limit:g} s"
            if worker_out.is_file():
                report["sides"][side] = json.loads(worker_out.read_text())
            if code != 0:
                report["errors"][side] = f"exit {code}" if isinstance(code, int) else code
    report["summary"] = summary(report)
    write_text(out / "contrastvae_side_by_side.json", json.dumps(report, indent=1))
    write_text(out / "contrastvae_side_by_side.md", markdown(report))
    print(markdown(report), flush=True)


if __name__ == "__main__":
    main()
