"""``fast_dropout`` against PyTorch's CPU dropout: the dropout itself, and whole training steps.

- **op**: forward and backward of dropout (p 0.5) on activations of the models' sizes, PyTorch's
  ``F.dropout`` (a ``bernoulli_`` mask) against :func:`recbole_ext.layers.dropout.rand_dropout`
  (a ``torch.rand`` mask compared and scaled in place): median milliseconds of ``--repeats``,
  the two interleaved.
- **steps**: for each (dataset, model) of ``--runs``, built as ``bench.runner.execute`` builds a
  run, two copies of the same initialised model, one with its dropout modules swapped
  (``use_rand_dropout``), each with its own Adam; ``--steps`` optimizer steps on the same
  training batches, after ``--warmup`` untimed ones, in ``--rounds`` rounds whose order
  alternates. Reported: median seconds a step of each, and the median over rounds of the
  per-round ratio (a shared machine's drift cancels within a round).

Writes ``<out>/dropout_speed.json`` (raw figures, the machine, the command) and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make ``bench`` and ``benchmarks`` importable
    sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    command_line,
    fmt,
    machine_info,
    markdown_table,
    median,
    write_report,
)

SCHEMA = 1
STEM = "dropout_speed"
# (name, shape): a SLIME4Rec batch on ml-1m (3 passes of 256 sequences, 50 positions, 64 wide),
# a SASRec / ContrastVAE batch on Beauty (256 whole sequences), its feed-forward's inner width,
# Mult-VAE's input on ml-1m and on Beauty (500 users).
OP_SHAPES = (
    ("SLIME4Rec ml-1m [768, 50, 64]", (768, 50, 64)),
    ("sequence batch [256, 50, 64]", (256, 50, 64)),
    ("feed-forward [256, 50, 256]", (256, 50, 256)),
    ("Mult-VAE input ml-1m [500, 3706]", (500, 3706)),
    ("Mult-VAE input Beauty [500, 12101]", (500, 12101)),
)
DEFAULT_RUNS = (
    "ml-1m:SLIME4Rec,amazon-beauty:SASRec,amazon-beauty:HybridContrastVAE,ml-1m-strong:MultVAE"
)


def time_op(shape: tuple[int, ...], repeats: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from recbole_ext.layers.dropout import rand_dropout

    x = torch.randn(*shape, requires_grad=True)
    grad = torch.randn(*shape)
    variants = {
        "pytorch": lambda: F.dropout(x, 0.5, training=True),
        "rand": lambda: rand_dropout(x, 0.5),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # one untimed call each
        fn().backward(grad)
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn().backward(grad)
            seconds[name].append(time.perf_counter() - start)
    return {name: 1e3 * (median(values) or 0.0) for name, values in seconds.items()}


def build(dataset: str, model: str, data_dir: str | None, cache: Path, batches: int) -> tuple:
    """(model, config, training batches) as ``bench.runner.execute`` builds a run."""
    from recbole.config import Config
    from recbole.utils import init_seed

    from recbole_ext import compat

    compat.apply()
    from bench.contract import RunOptions
    from bench.preflight import prepare
    from recbole_ext.data import load_dataset, prepare_data

    options = RunOptions(
        dataset=dataset, model=model, settings={}, device="cpu", data_dir=data_dir, cache_dir=cache
    )
    prepared = prepare(options)
    config_dict = dict(prepared.config_dict)
    config_dict.update(data_path=str(prepared.data_path), checkpoint_dir=tempfile.mkdtemp())
    config = Config(model=prepared.spec.cls, dataset=prepared.data_name, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    loaded, _ = load_dataset(config, cache)
    data = prepare_data(config, loaded, prepared.settings)
    net = prepared.spec.cls(config, data.model_dataset)
    iterator = iter(data.train)
    return net, config, [next(iterator) for _ in range(batches)]


def time_steps(run: str, args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    import torch

    from recbole_ext.layers.dropout import use_rand_dropout

    dataset, model = run.split(":")
    stock, config, batches = build(dataset, model, args.data_dir, cache, args.warmup + args.steps)
    fast = copy.deepcopy(stock)
    swapped = use_rand_dropout(fast)
    nets = {"pytorch": stock, "rand": fast}
    optimizers = {
        name: torch.optim.Adam(net.parameters(), lr=config["learning_rate"])
        for name, net in nets.items()
    }

    def step(name: str, batch: Any) -> None:
        optimizers[name].zero_grad()
        nets[name].calculate_loss(batch).backward()
        optimizers[name].step()

    for name, net in nets.items():
        net.train()
        for batch in batches[: args.warmup]:
            step(name, batch)
    rounds = []
    for index in range(args.rounds):
        order = ("pytorch", "rand") if index % 2 == 0 else ("rand", "pytorch")
        seconds = {}
        for name in order:
            start = time.perf_counter()
            for batch in batches[args.warmup :]:
                step(name, batch)
            seconds[name] = (time.perf_counter() - start) / args.steps
        rounds.append(seconds)
    return {
        "run": run,
        "dropout_modules_swapped": swapped,
        "rounds": rounds,
        "pytorch_s": median(r["pytorch"] for r in rounds),
        "rand_s": median(r["rand"] for r in rounds),
        "speedup": median(r["pytorch"] / r["rand"] for r in rounds),
    }


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        "# fast_dropout: PyTorch's CPU dropout against a torch.rand mask",
        "",
        f"`{report['command']}` on {machine['date']}: {machine['cpu']}, "
        f"{machine['usable_cores']} usable cores, {machine['threads']} PyTorch thread(s), "
        f"torch {machine['torch']}, git {machine['git_commit']}, load average "
        f"{machine.get('load_average')} at the start.",
        "",
        "## Dropout (p 0.5), forward and backward",
        "",
    ]
    rows = [
        [op["shape"], fmt(op["pytorch"]), fmt(op["rand"]), fmt(op["pytorch"] / op["rand"]) + "x"]
        for op in report["ops"]
    ]
    headers = ["activation", "F.dropout ms", "rand_dropout ms", "speed-up"]
    lines += markdown_table(headers, rows, [False, True, True, True])
    lines += [
        "",
        "## Training steps (calculate_loss, backward, Adam) on the same batches",
        "",
    ]
    rows = [
        [
            r["run"],
            fmt(r["dropout_modules_swapped"]),
            fmt(r["pytorch_s"], 3),
            fmt(r["rand_s"], 3),
            fmt(r["speedup"]) + "x",
        ]
        for r in report["steps"]
    ]
    headers = ["dataset:model", "dropout modules", "s a step (PyTorch)", "s a step (rand)"]
    lines += markdown_table([*headers, "speed-up"], rows, [False, True, True, True, True])
    lines += [
        "",
        "Speed-up: the median over rounds of each round's ratio. Dropout inside",
        "`scaled_dot_product_attention` and through `F.dropout` calls is not swapped.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder holding <dataset>/")
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="dataset:model, comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20, help="op timings per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", default="results/perf")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "command": command_line("benchmarks/dropout_speed.py", argv),
        "machine": machine_info(args.threads),
        "ops": [],
        "steps": [],
    }
    for name, shape in OP_SHAPES:
        report["ops"].append({"shape": name, **time_op(shape, args.repeats)})
        print(report["ops"][-1], flush=True)
    with tempfile.TemporaryDirectory(prefix="dropout-speed-") as cache:
        for run in args.runs.split(","):
            report["steps"].append(time_steps(run, args, Path(cache)))
            print({k: v for k, v in report["steps"][-1].items() if k != "rounds"}, flush=True)
    json_path, md_path = write_report(args.out, STEM, report, markdown(report))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
