"""Training and full-ranking evaluation speed of the sequential models, and ContrastVAE against its
official implementation, on the same data and device.

Two modes (command lines in ``benchmarks/README.md``):

- default: for each of ``--models`` (ContrastVAE, SLIME4Rec, HybridContrastVAE, SASRec), built
  through the harness (``bench.runner.prepare`` + ``recbole_ext.data``) with its
  ``configs/models`` defaults and the dataset's protocol, measure training throughput
  (sequences/s over ``--steps`` optimizer steps after ``--warmup`` steps, with the harness's real
  training dataloader, ``calculate_loss`` + backward + Adam), the projected seconds per epoch,
  full-ranking evaluation throughput (users/s, ``full_sort_predict`` under
  ``torch.inference_mode()`` over ``--eval-users`` validation users) and peak memory. Writes
  ``<out>/sequential_speed.{json,md}``.
- ``--official-dir DIR``: ContrastVAE (ours) against the official code checked out in DIR (run
  unmodified through its own ``main()``, see :class:`OfficialContrastVAE`), the same number of
  steps and the same validation users, interleaved. Writes ``<out>/contrastvae_vs_official.*``.

Why it is measured the way it is: the machine may be shared, so absolute timings drift; every
figure is taken in ``--rounds`` rounds that interleave the variants (the order rotates each
round) and the report gives the median and the *per-round* ratio to the reference variant (SASRec,
or the official code), which cancels most of the drift. CPU peak memory comes from a fresh
subprocess per variant (``--memory-probe``) with glibc's mmap threshold fixed, so that freed
tensors leave the resident set and the kernel's peak-RSS counter (reset through
``/proc/self/clear_refs``) measures each phase on its own.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make ``bench`` and ``recbole_ext`` importable
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.memory import MIB, PeakRSS, rss_mib  # noqa: E402

DEFAULT_MODELS = ("ContrastVAE", "SLIME4Rec", "HybridContrastVAE", "SASRec")
BASELINE = "SASRec"
OFFICIAL = "official"
# The official README's "train on Beauty" command (ContrastVAE-MA), verbatim after ``main.py``.
OFFICIAL_BEAUTY_ARGS = (
    "--latent_contrastive_learning --data_name=Beauty --latent_clr_weight=0.6 "
    "--reparam_dropout_rate=0.1 --lr=0.001 --hidden_size=128 --max_seq_length=50 "
    "--hidden_dropout_prob=0.3 --num_hidden_layers=1 --weight_decay=0.0 --num_attention_heads=4 "
    "--model_name=VAGRec --attention_probs_dropout_prob=0.0 --anneal_cap=0.2 "
    "--total_annealing_step=10000"
)
# The official code's top-level modules.
OFFICIAL_MODULES = ("main", "trainers", "models", "modules", "datasets", "utils")


# --- machine and memory ---------------------------------------------------------------------
def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip() if found else platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    from bench.environment import git_commit

    info: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": str(device),
        "git_commit": git_commit(),
        "load_average_at_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def cuda_peak(device: torch.device, sink: dict[str, float]) -> Iterator[None]:
    """On CUDA, ``sink['peak_mib']``: the phase's ``max_memory_allocated`` (absolute)."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    sink["start_mib"] = torch.cuda.memory_allocated(device) / MIB
    yield
    torch.cuda.synchronize(device)
    sink["peak_mib"] = torch.cuda.max_memory_allocated(device) / MIB


# --- timing records ---------------------------------------------------------------------------
@dataclass
class TrainTiming:
    steps: int
    sequences: int
    seconds: float
    loader_seconds: float  # of which fetching and collating batches
    real_positions: int = 0  # non-padding positions of the inputs
    positions: int = 0  # all input positions (batch x max length)
    cuda: dict[str, float] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.sequences / self.seconds


@dataclass
class EvalTiming:
    users: int
    seconds: float  # the model's scoring of all items (full_sort_predict) only
    pipeline_seconds: float  # + loading batches, excluding history items, top-k (or metrics)
    cuda: dict[str, float] = field(default_factory=dict)


class _Timed:
    """An iterator that adds the time spent in ``next`` to ``seconds``."""

    def __init__(self, it: Iterator[Any]) -> None:
        self.it, self.seconds = it, 0.0

    def __iter__(self) -> _Timed:
        return self

    def __next__(self) -> Any:
        start = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.seconds += time.perf_counter() - start


# --- our models, through the harness --------------------------------------------------------
class Ours:
    """One of the project's models on the harness's data, config and dataloaders."""

    def __init__(self, model: str, args: argparse.Namespace, eval_users: int) -> None:
        from recbole.config import Config
        from recbole.utils import init_seed

        from bench.contract import RunOptions
        from bench.preflight import prepare
        from recbole_ext.data import load_dataset, prepare_data
        from recbole_ext.layers.dropout import use_rand_dropout

        self.name = model
        self.device = torch.device(args.device)
        request = RunOptions(
            dataset=args.dataset,
            model=model,
            seed=args.seed,
            settings={"eval_user_limit": eval_users, **args.settings},
            device=args.device,
            data_dir=args.data_dir,
            cache_dir=args.cache_dir,
        )
        prepared = prepare(request)
        config_dict = dict(prepared.config_dict)
        self.cache_dir = request.cache_dir
        self.eval_users = eval_users
        self._checkpoints = tempfile.TemporaryDirectory(prefix="bench-perf-")
        config_dict.update(data_path=str(prepared.data_path), checkpoint_dir=self._checkpoints.name)
        config = Config(
            model=prepared.spec.cls, dataset=prepared.data_name, config_dict=config_dict
        )
        init_seed(config["seed"], config["reproducibility"])
        dataset, _ = load_dataset(config, request.cache_dir)
        self.train_data, self.valid_data, _ = prepare_data(config, dataset)
        init_seed(config["seed"], config["reproducibility"])
        self.model = prepared.spec.cls(config, self.train_data._dataset).to(self.device)
        if prepared.settings.fast_dropout:  # as bench.runner.execute
            use_rand_dropout(self.model)
        # RecBole's trainer with ``learner: adam`` builds exactly this optimizer.
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=config["learning_rate"],
            weight_decay=config["weight_decay"] or 0.0,
        )
        self.config = config
        self.dataset = dataset
        self.regime = config["train_regime"]
        self.batch_size = int(config["train_batch_size"])
        self.samples_per_epoch = len(self.train_data._dataset)
        self.seq_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
        self.len_field = config["ITEM_LIST_LENGTH_FIELD"]
        self.topk = max(config["topk"])
        self._batches = iter(self.train_data)
        self.trainer: Any = None

    def use_harness_trainer(self) -> None:
        """Build the harness's RecBole trainer, for its full evaluation (metrics included)."""
        from recbole_ext.training import recording_trainer

        self.trainer = recording_trainer(self.config, self.model)

    def eval_user_tokens(self) -> list[str]:
        feat = self.valid_data._dataset.inter_feat
        uid = self.dataset.uid_field
        return [str(t) for t in self.dataset.id2token(uid, feat[uid].numpy())]

    def _next_batch(self) -> Any:
        try:
            return next(self._batches)
        except StopIteration:  # a new epoch: RecBole's loader reshuffles
            self._batches = iter(self.train_data)
            return next(self._batches)

    def _step(self, interaction: Any) -> None:
        loss = self.model.calculate_loss(interaction.to(self.device))
        if isinstance(loss, tuple):  # RecBole's convention for multi-part losses
            loss = sum(loss)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        loss.item()  # the trainer reads every loss (a device sync on CUDA)

    def train_block(self, steps: int, warmup: int, whole_epoch: bool = False) -> TrainTiming:
        """``warmup`` untimed steps, then ``steps`` timed ones (or one whole fresh epoch)."""
        self.model.train()
        for _ in range(warmup):
            self._step(self._next_batch())
        gc.collect()
        record = TrainTiming(0, 0, 0.0, 0.0)
        if whole_epoch:
            batches = _Timed(iter(self.train_data))
        else:
            batches = _Timed(self._next_batch() for _ in range(steps))
        with cuda_peak(self.device, record.cuda):
            sync(self.device)
            start = time.perf_counter()
            for interaction in batches:
                self._step(interaction)
                record.steps += 1
                record.sequences += len(interaction)
                record.real_positions += int(interaction[self.len_field].sum())
                record.positions += interaction[self.seq_field].numel()
            sync(self.device)
            record.seconds = time.perf_counter() - start
        record.loader_seconds = batches.seconds
        if whole_epoch:
            self._batches = iter(self.train_data)
        return record

    def eval_block(self, loader: Any = None) -> EvalTiming:
        """``full_sort_predict`` over the validation users, as the trainer scores them."""
        loader = loader if loader is not None else self.valid_data
        self.model.eval()
        record = EvalTiming(0, 0.0, 0.0)
        gc.collect()
        with cuda_peak(self.device, record.cuda), torch.inference_mode():
            sync(self.device)
            start = time.perf_counter()
            for interaction, history_index, _, _ in loader:
                interaction = interaction.to(self.device)
                sync(self.device)
                predict_start = time.perf_counter()
                scores = self.model.full_sort_predict(interaction)
                sync(self.device)
                record.seconds += time.perf_counter() - predict_start
                scores = scores.view(len(interaction), -1)
                scores[:, 0] = -torch.inf
                if history_index is not None:
                    scores[history_index] = -torch.inf
                torch.topk(scores, self.topk, dim=-1)
                record.users += len(interaction)
            sync(self.device)
            record.pipeline_seconds = time.perf_counter() - start
        return record

    def full_evaluation(self, loader: Any = None) -> EvalTiming:
        """The harness's own validation (RecBole ``Trainer.evaluate``: scoring, history
        exclusion, top-k collection and every metric); ``seconds`` holds its scoring part."""
        loader = loader if loader is not None else self.valid_data
        scoring = self.eval_block(loader)
        gc.collect()
        sync(self.device)
        start = time.perf_counter()
        self.trainer.evaluate(loader, load_best_model=False, show_progress=False)
        sync(self.device)
        return EvalTiming(scoring.users, scoring.seconds, time.perf_counter() - start)

    def all_users_loader(self) -> Any:
        """The validation loader over every user (the blocks above use ``eval_user_limit``)."""
        from recbole_ext.data import load_dataset, prepare_data

        self.config["eval_user_limit"] = 0
        try:
            dataset, _ = load_dataset(self.config, self.cache_dir)
            return prepare_data(self.config, dataset).valid
        finally:
            self.config["eval_user_limit"] = self.eval_users


# --- the official ContrastVAE ---------------------------------------------------------------
class _Built(Exception):  # noqa: N818  (a signal carrying the trainer, not an error)
    def __init__(self, trainer: Any) -> None:
        super().__init__("official trainer built")
        self.trainer = trainer


class _Limited:
    """``n`` batches of a persistent iterator, with ``len`` (the official loop divides by it)."""

    def __init__(self, batches: Callable[[], Any], n: int) -> None:
        self.batches, self.n = batches, n

    def __iter__(self) -> Iterator[Any]:
        return (self.batches() for _ in range(self.n))

    def __len__(self) -> int:
        return self.n


class OfficialContrastVAE:
    """The official code (YuWang-1024/ContrastVAE) exactly as its README runs it.

    Its ``main()`` runs unmodified with the README's Beauty arguments plus ``--data_dir`` (the
    data file) and, on CPU, its own ``--no_cuda`` flag; the trainer class it instantiates is
    swapped for a subclass that stops ``main()`` right after everything is built (before the
    first epoch), so that this script can drive the official training loop
    (``trainer.iteration``) for a fixed number of batches and the official validation
    (``trainer.valid``) on chosen users. No line of the official code is changed or copied.
    """

    def __init__(self, official_dir: Path, data_dir: Path, device: torch.device) -> None:
        official_dir = official_dir.resolve()
        args = shlex.split(OFFICIAL_BEAUTY_ARGS) + ["--data_dir", f"{data_dir.resolve()}/"]
        if device.type == "cpu":
            args.append("--no_cuda")
        self.command = "python main.py " + " ".join(args)
        self.name = OFFICIAL
        self.device = device
        self.work_dir = Path(tempfile.mkdtemp(prefix="contrastvae-official-"))
        # Its modules have generic names (main, utils, models, datasets ...): import them from
        # its directory with any same-named modules set aside, and drop them afterwards.
        shadowed = {n: sys.modules.pop(n) for n in OFFICIAL_MODULES if n in sys.modules}
        saved_argv, saved_cwd = sys.argv, os.getcwd()
        saved_cuda = os.environ.get("CUDA_VISIBLE_DEVICES")
        sys.path.insert(0, str(official_dir))
        try:
            os.chdir(self.work_dir)  # it writes output/<args>.txt logs relative to the cwd
            import main as official_main  # type: ignore[import-not-found]
            import trainers as official_trainers  # type: ignore[import-not-found]

            class Stop(official_trainers.ContrastVAETrainer):  # type: ignore[misc, name-defined]
                def __init__(self, *a: Any, **k: Any) -> None:
                    super().__init__(*a, **k)
                    raise _Built(self)

            official_main.ContrastVAETrainer = Stop
            sys.argv = ["main.py", *args]
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    official_main.main()
                raise RuntimeError("the official main() finished without building its trainer")
            except _Built as built:
                self.trainer = built.trainer
        finally:
            sys.path.remove(str(official_dir))
            sys.argv = saved_argv
            os.chdir(saved_cwd)
            # main() sets CUDA_VISIBLE_DEVICES from --gpu_id; give the process its own back.
            if saved_cuda is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved_cuda
            for name in OFFICIAL_MODULES:
                sys.modules.pop(name, None)
            sys.modules.update(shadowed)
        self.args = self.trainer.args
        # Its log and checkpoint paths are relative to the cwd it was built in.
        self.args.log_file = str(self.work_dir / self.args.log_file)
        self.args.checkpoint_path = str(self.work_dir / self.args.checkpoint_path)
        self.model = self.trainer.model
        self.train_loader = self.trainer.train_dataloader
        self.eval_loader = self.trainer.eval_dataloader
        self.batch_size = int(self.args.batch_size)
        self.samples_per_epoch = len(self.train_loader.dataset)
        self.max_len = int(self.args.max_seq_length)
        self._batches = iter(self.train_loader)

    def _next_batch(self) -> Any:
        try:
            return next(self._batches)
        except StopIteration:
            self._batches = iter(self.train_loader)
            return next(self._batches)

    def train_block(self, steps: int, warmup: int, whole_epoch: bool = False) -> TrainTiming:
        """The official loop (forward, its loss, backward, Adam, ``loss.item()``) on ``steps``
        batches of its own shuffled loader, after ``warmup`` untimed ones."""
        with contextlib.redirect_stdout(sys.stderr):  # it prints a line per loop
            if warmup:
                self.trainer.iteration(0, _Limited(self._next_batch, warmup))
        gc.collect()
        fresh = iter(self.train_loader) if whole_epoch else iter(self._next_batch, None)
        timed = _Timed(fresh)
        sizes: list[tuple[int, int]] = []

        def counted() -> Any:
            batch = next(timed)
            input_ids = batch[1]
            sizes.append((input_ids.shape[0], int((input_ids > 0).sum())))
            return batch

        n = len(self.train_loader) if whole_epoch else steps
        record = TrainTiming(0, 0, 0.0, 0.0)
        with contextlib.redirect_stdout(sys.stderr), cuda_peak(self.device, record.cuda):
            sync(self.device)
            start = time.perf_counter()
            self.trainer.iteration(0, _Limited(counted, n))
            sync(self.device)
            record.seconds = time.perf_counter() - start
        record.loader_seconds = timed.seconds
        record.steps = len(sizes)
        record.sequences = sum(b for b, _ in sizes)
        record.real_positions = sum(r for _, r in sizes)
        record.positions = record.sequences * self.max_len
        return record

    def user_loader(self, users: list[int] | None) -> Any:
        from torch.utils.data import DataLoader, SequentialSampler, Subset

        dataset = self.eval_loader.dataset
        subset = dataset if users is None else Subset(dataset, users)
        return DataLoader(subset, sampler=SequentialSampler(subset), batch_size=self.batch_size)

    def eval_block(self, loader: Any) -> EvalTiming:
        """Its scoring, as its validation does it (``torch.no_grad``, both branches run)."""
        self.model.eval()
        record = EvalTiming(0, 0.0, 0.0)
        gc.collect()
        with cuda_peak(self.device, record.cuda), torch.no_grad():
            start = time.perf_counter()
            for batch in loader:
                input_ids = batch[1].to(self.device)
                sync(self.device)
                predict_start = time.perf_counter()
                output = self.model.forward(input_ids, 0, self.trainer.step)[0][:, -1, :]
                self.trainer.predict_full(output)
                sync(self.device)
                record.seconds += time.perf_counter() - predict_start
                record.users += input_ids.shape[0]
            record.pipeline_seconds = time.perf_counter() - start
        return record

    def full_evaluation(self, loader: Any) -> EvalTiming:
        """Its own validation (``trainer.valid``: scoring, history masking, top-40, metrics)."""
        scoring = self.eval_block(loader)
        saved = self.trainer.eval_dataloader
        self.trainer.eval_dataloader = loader
        gc.collect()
        try:
            with contextlib.redirect_stdout(sys.stderr):
                sync(self.device)
                start = time.perf_counter()
                self.trainer.valid(0, full_sort=True)
                sync(self.device)
        finally:
            self.trainer.eval_dataloader = saved
        return EvalTiming(scoring.users, scoring.seconds, time.perf_counter() - start)

    def check_users(self, tokens: list[str], valid_targets: dict[str, str]) -> int:
        """How many of our validation users have the same validation target in its data."""
        sequences = self.eval_loader.dataset.user_seq
        return sum(1 for t in tokens if str(sequences[int(t) - 1][-2]) == valid_targets.get(t, ""))


# --- helpers ----------------------------------------------------------------------------------
def median(values: list[float]) -> float:
    return float(statistics.median(values))


def rotate(items: list[Any], r: int) -> list[Any]:
    """Round r's order: the variants rotate, so none always runs first (or after another)."""
    k = r % len(items)
    return items[k:] + items[:k]


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def memory_probe(target: str, args: argparse.Namespace) -> dict[str, float]:
    """In a fresh process: resident memory after building, then the peak above it while
    evaluating and while training (warm-up + ``memory_steps`` steps, optimizer state included)."""
    subject: Any
    if target == OFFICIAL:
        subject = OfficialContrastVAE(args.official_dir, args.official_data_dir, args.device_obj)
        loader = subject.user_loader(list(range(args.eval_users)))
    else:
        subject = Ours(target, args, args.eval_users)
        loader = None
    built = rss_mib()
    with PeakRSS() as eval_peak:
        if loader is None:
            subject.eval_block()
        else:
            subject.eval_block(loader)
    with PeakRSS() as train_peak:
        subject.train_block(args.memory_steps, args.warmup)
    return {
        "rss_after_build_mib": built,
        "eval_peak_above_start_mib": eval_peak.delta,
        "eval_peak_rss_mib": eval_peak.peak,
        "train_peak_above_start_mib": train_peak.delta,
        "train_peak_rss_mib": train_peak.peak,
        "exact": float(eval_peak.exact),
    }


def run_memory_probes(targets: list[str], args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    # A fixed threshold stops glibc from raising it after large frees and keeping later large
    # tensors on the heap, where freeing them would not lower the resident set.
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    results: dict[str, Any] = {}
    for target in targets:
        log(f"memory probe: {target}")
        command = [sys.executable, str(Path(__file__).resolve()), *args.argv, "--memory-probe"]
        command.append(target)
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            results[target] = {"error": done.stderr.strip().splitlines()[-5:]}
            continue
        results[target] = json.loads(lines[-1])
    return results


def profile_steps(subject: Any, steps: int, top: int = 15) -> dict[str, Any]:
    """Self CPU time per operator over ``steps`` training steps (after the block's warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        subject.train_block(steps, 0)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    groups = {
        "matmul (mm/addmm/bmm/linear)": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"),
        "dropout masks (bernoulli)": ("aten::bernoulli_",),
        "attention": ("aten::_scaled_dot_product", "aten::softmax", "aten::_softmax"),
        "gelu (+backward)": ("aten::gelu",),
        "layer norm (+backward)": ("aten::native_layer_norm",),
    }
    shares = {
        name: sum(e.self_cpu_time_total for e in events if e.key.startswith(prefixes)) / total
        for name, prefixes in groups.items()
    }
    return {
        "steps": steps,
        "self_cpu_seconds_total": total / 1e6,
        "top": [
            {
                "op": e.key,
                "self_cpu_s": e.self_cpu_time_total / 1e6,
                "share": e.self_cpu_time_total / total,
                "calls": e.count,
            }
            for e in rows
        ],
        "group_shares": shares,
    }


def padding_share(timings: list[TrainTiming]) -> float:
    positions = sum(t.positions for t in timings)
    return 1.0 - sum(t.real_positions for t in timings) / positions if positions else 0.0


# --- mode 1: the models against SASRec ----------------------------------------------------------
def benchmark_models(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device_obj
    subjects: dict[str, Ours] = {}
    for name in args.models:
        log(f"building {name}")
        subjects[name] = Ours(name, args, args.eval_users)
    train: dict[str, list[TrainTiming]] = {n: [] for n in subjects}
    evals: dict[str, list[EvalTiming]] = {n: [] for n in subjects}
    for r in range(args.rounds):
        for name in rotate(list(subjects), r):
            t = subjects[name].train_block(args.steps, args.warmup)
            train[name].append(t)
            log(f"round {r + 1} {name}: train {t.throughput:.1f} seq/s ({t.seconds:.1f} s)")
        for name in rotate(list(subjects), r):
            e = subjects[name].eval_block()
            evals[name].append(e)
            log(f"round {r + 1} {name}: eval {e.users / e.seconds:.0f} users/s")

    def per_round_ratio(name: str, value: Callable[[Any], float], rows: dict) -> float | None:
        if BASELINE not in rows or name == BASELINE:
            return 1.0 if name == BASELINE else None
        pairs = zip(rows[name], rows[BASELINE], strict=True)
        return median([value(a) / value(b) for a, b in pairs])

    def eval_rate(e: EvalTiming) -> float:
        return e.users / e.seconds

    def pipeline_rate(e: EvalTiming) -> float:
        return e.users / e.pipeline_seconds

    models: dict[str, Any] = {}
    for name, subject in subjects.items():
        throughput = median([t.throughput for t in train[name]])
        models[name] = {
            "train_regime": subject.regime,
            "sequence_unit": "user (full sequence)" if subject.regime == "users" else "sample",
            "batch_size": subject.batch_size,
            "samples_per_epoch": subject.samples_per_epoch,
            "steps_per_epoch": -(-subject.samples_per_epoch // subject.batch_size),
            "train_sequences_per_s": throughput,
            "train_seconds_per_step": median([t.seconds / t.steps for t in train[name]]),
            "train_loader_share": median([t.loader_seconds / t.seconds for t in train[name]]),
            "projected_epoch_seconds": subject.samples_per_epoch / throughput,
            "train_throughput_vs_sasrec": per_round_ratio(name, lambda t: t.throughput, train),
            "epoch_time_vs_sasrec": _epoch_ratio(name, subjects, train),
            "padding_share": padding_share(train[name]),
            "eval_users_per_s": median([eval_rate(e) for e in evals[name]]),
            "eval_users_per_s_vs_sasrec": per_round_ratio(name, eval_rate, evals),
            "eval_pipeline_users_per_s": median([pipeline_rate(e) for e in evals[name]]),
            "eval_pipeline_vs_sasrec": per_round_ratio(name, pipeline_rate, evals),
            "rounds": {
                "train": [asdict(t) for t in train[name]],
                "eval": [asdict(e) for e in evals[name]],
            },
        }
        if device.type == "cuda":
            models[name]["cuda_peak_train_mib"] = max(t.cuda["peak_mib"] for t in train[name])
            models[name]["cuda_peak_eval_mib"] = max(e.cuda["peak_mib"] for e in evals[name])
    del subjects
    gc.collect()
    memory = run_memory_probes(list(args.models), args) if _cpu_memory(args) else {}
    for name, values in memory.items():
        models[name]["cpu_memory"] = values
    return {"models": models}


def _epoch_ratio(name: str, subjects: dict[str, Ours], train: dict) -> float | None:
    """Projected epoch time relative to SASRec's, per round, then the median."""
    if BASELINE not in subjects:
        return None
    ours, base = subjects[name], subjects[BASELINE]
    return median(
        [
            (ours.samples_per_epoch / a.throughput) / (base.samples_per_epoch / b.throughput)
            for a, b in zip(train[name], train[BASELINE], strict=True)
        ]
    )


def _cpu_memory(args: argparse.Namespace) -> bool:
    return args.device_obj.type == "cpu" and not args.no_memory


# --- mode 2: ContrastVAE against the official code ----------------------------------------------
def benchmark_official(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device_obj
    log("building ours (ContrastVAE)")
    ours = Ours("ContrastVAE", args, args.eval_users)
    ours.use_harness_trainer()
    log("building the official ContrastVAE")
    official = OfficialContrastVAE(args.official_dir, args.official_data_dir, device)
    # The same validation users on both sides: RecBole's tokens are the data file's user ids.
    tokens = ours.eval_user_tokens()
    valid_feat = ours.valid_data._dataset.inter_feat
    iid = ours.dataset.iid_field
    target_tokens = ours.dataset.id2token(iid, valid_feat[iid].numpy())
    targets = dict(zip(tokens, (str(t) for t in target_tokens), strict=True))
    same_target = official.check_users(tokens, targets)
    official_users = official.user_loader([int(t) - 1 for t in tokens])

    subjects: dict[str, Any] = {"ours": ours, OFFICIAL: official}
    loaders = {"ours": None, OFFICIAL: official_users}
    train: dict[str, list[TrainTiming]] = {n: [] for n in subjects}
    scoring: dict[str, list[EvalTiming]] = {n: [] for n in subjects}
    for r in range(args.rounds):
        for name in rotate(list(subjects), r):
            t = subjects[name].train_block(args.steps, args.warmup)
            train[name].append(t)
            log(f"round {r + 1} {name}: {t.seconds / t.steps:.2f} s/step")
        for name in rotate(list(subjects), r):
            e = subjects[name].full_evaluation(loaders[name])
            scoring[name].append(e)
            log(
                f"round {r + 1} {name}: eval {1e3 * e.pipeline_seconds / e.users:.2f} ms/user "
                f"(scoring {1e3 * e.seconds / e.users:.2f})"
            )

    def side(name: str) -> dict[str, Any]:
        subject = subjects[name]
        step = median([t.seconds / t.steps for t in train[name]])
        seq_rate = median([t.throughput for t in train[name]])
        return {
            "batch_size": subject.batch_size,
            "samples_per_epoch": subject.samples_per_epoch,
            "steps_per_epoch": -(-subject.samples_per_epoch // subject.batch_size),
            "train_seconds_per_step": step,
            "train_sequences_per_s": seq_rate,
            "projected_epoch_seconds": subject.samples_per_epoch / seq_rate,
            "train_loader_share": median([t.loader_seconds / t.seconds for t in train[name]]),
            "padding_share": padding_share(train[name]),
            "eval_ms_per_user": median([1e3 * e.pipeline_seconds / e.users for e in scoring[name]]),
            "eval_scoring_ms_per_user": median([1e3 * e.seconds / e.users for e in scoring[name]]),
            "rounds": {
                "train": [asdict(t) for t in train[name]],
                "eval": [asdict(e) for e in scoring[name]],
            },
        }

    def ratio(value: Callable[[Any], float], rows: dict) -> float:
        pairs = zip(rows["ours"], rows[OFFICIAL], strict=True)
        return median([value(a) / value(b) for a, b in pairs])

    result: dict[str, Any] = {
        "ours": side("ours"),
        OFFICIAL: side(OFFICIAL),
        "eval_users": len(tokens),
        "eval_users_same_valid_target": same_target,
        "official_command": official.command,
        "ratios_ours_over_official": {
            "train_seconds_per_step": ratio(lambda t: t.seconds / t.steps, train),
            "projected_epoch_seconds": ratio(lambda t: 1 / t.throughput, train)
            * ours.samples_per_epoch
            / official.samples_per_epoch,
            "eval_seconds_per_user": ratio(lambda e: e.pipeline_seconds / e.users, scoring),
            "eval_scoring_seconds_per_user": ratio(lambda e: e.seconds / e.users, scoring),
        },
    }
    if args.full_epoch:
        result["full_epoch"] = _full_epochs(ours, official)
    if args.profile_steps:
        log(f"profiling {args.profile_steps} steps of each")
        result["profile"] = {
            "ours": profile_steps(ours, args.profile_steps),
            OFFICIAL: profile_steps(official, args.profile_steps),
        }
    if _cpu_memory(args):  # the probes run in fresh processes, one at a time
        probes = run_memory_probes(["ContrastVAE", OFFICIAL], args)
        result["cpu_memory"] = {"ours": probes["ContrastVAE"], OFFICIAL: probes[OFFICIAL]}
    return result


def _full_epochs(ours: Ours, official: OfficialContrastVAE) -> dict[str, Any]:
    """One whole training epoch and one whole validation pass (every user) of each, ours first
    for training and the official first for evaluation."""
    log("full epoch: ours")
    ours_epoch = ours.train_block(0, 0, whole_epoch=True)
    log(f"  {ours_epoch.seconds:.1f} s; full epoch: official")
    official_epoch = official.train_block(0, 0, whole_epoch=True)
    log(f"  {official_epoch.seconds:.1f} s; full validation: official")
    official_eval = official.full_evaluation(official.user_loader(None))
    log(f"  {official_eval.pipeline_seconds:.1f} s; full validation: ours")
    ours_eval = ours.full_evaluation(ours.all_users_loader())
    log(f"  {ours_eval.pipeline_seconds:.1f} s")
    return {
        "ours": {"train": asdict(ours_epoch), "eval": asdict(ours_eval)},
        OFFICIAL: {"train": asdict(official_epoch), "eval": asdict(official_eval)},
        "train_ratio_ours_over_official": ours_epoch.seconds / official_epoch.seconds,
        "eval_ratio_ours_over_official": ours_eval.pipeline_seconds
        / official_eval.pipeline_seconds,
    }


# --- reports --------------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def conditions_md(report: dict[str, Any]) -> list[str]:
    m = report["machine"]
    a = report["settings"]
    return [
        f"- Machine: {m['cpu']}, nproc {m['nproc']}, torch {m['torch']} "
        f"({m['torch_threads']} intra-op threads), Python {m['python']}, device `{m['device']}`"
        + (f" ({m['gpu']})" if m.get("gpu") else ""),
        f"- Date: {m['date']}; git {m['git_commit']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_end'])}",
        f"- Data: `{a['dataset']}` ({a['data_dir']}); {a['rounds']} interleaved rounds (order "
        f"rotating), each {a['warmup']} warm-up + {a['steps']} timed optimizer steps and "
        f"{a['eval_users']} validation users; medians over rounds, ratios per round then median.",
        f"- Command: `{report['command']}`",
        *(
            [
                f"- `--threads {a['threads_requested']}`: PyTorch's default pool (one thread a "
                "core) oversubscribes a machine whose cores other processes keep busy, and then "
                "waits on descheduled threads; every variant runs in the same process with the "
                "same setting, so the ratios stay fair."
            ]
            if a.get("threads_requested")
            else []
        ),
    ]


def models_md(report: dict[str, Any]) -> str:
    rows = report["models"]
    lines = [
        "# Sequential models: training and evaluation speed",
        "",
        *conditions_md(report),
        "",
        "| model | regime (1 sequence =) | batch | samples / epoch | train seq/s | x SASRec "
        "| s / step | projected s / epoch | epoch time x SASRec | padding | eval users/s "
        "| x SASRec | eval pipeline users/s | peak train MiB | peak eval MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        memory = r.get("cpu_memory", {})
        train_mem = memory.get("train_peak_above_start_mib", r.get("cuda_peak_train_mib"))
        eval_mem = memory.get("eval_peak_above_start_mib", r.get("cuda_peak_eval_mib"))
        lines.append(
            f"| {name} | {r['sequence_unit']} | {r['batch_size']} | {r['samples_per_epoch']:,} "
            f"| {_fmt(r['train_sequences_per_s'], 1)} | {_fmt(r['train_throughput_vs_sasrec'])} "
            f"| {_fmt(r['train_seconds_per_step'])} | {_fmt(r['projected_epoch_seconds'], 0)} "
            f"| {_fmt(r['epoch_time_vs_sasrec'])} | {r['padding_share']:.0%} "
            f"| {_fmt(r['eval_users_per_s'], 0)} | {_fmt(r['eval_users_per_s_vs_sasrec'])} "
            f"| {_fmt(r['eval_pipeline_users_per_s'], 0)} | {_fmt(train_mem, 0)} "
            f"| {_fmt(eval_mem, 0)} |"
        )
    lines += [
        "",
        "- *train seq/s*: sequences through `calculate_loss` + backward + Adam per second, data "
        "loading included (the harness's training dataloader); a sequence is one user's full "
        "sequence under `train_regime: users` and one training sample otherwise. *projected s / "
        "epoch* = samples per epoch / throughput. *padding*: share of the input positions that "
        "are padding.",
        "- *eval users/s*: `full_sort_predict` alone under `torch.inference_mode()` (scores for "
        "every item), on the harness's validation loader; *pipeline* adds batch loading, "
        "history exclusion and top-k.",
        "- *peak MiB* (CPU): the peak resident memory above the resident memory at the start of "
        "the phase, in a fresh process per model (dataset and model already built; training "
        "includes gradients and Adam's state). On CUDA: `torch.cuda.max_memory_allocated`.",
        "- Ratios to SASRec are computed inside each round (same minute, same machine load) and "
        "then the median is taken; absolute figures move with the load of the shared machine.",
    ]
    return "\n".join(lines) + "\n"


def official_md(report: dict[str, Any]) -> str:
    r = report["comparison"]
    ours, off, ratios = r["ours"], r[OFFICIAL], r["ratios_ours_over_official"]
    goal = ratios["projected_epoch_seconds"] <= 0.5
    lines = [
        "# ContrastVAE: ours against the official implementation",
        "",
        *conditions_md(report),
        f"- Official code: {report['official']['repository']} at commit "
        f"`{report['official']['commit']}`, run unmodified from `{report['official']['dir']}`.",
        f"- Official command: `{r['official_command']}`",
        f"- Ours: `ContrastVAE` with `configs/models/ContrastVAE.yaml` (MA, hidden 128, max "
        f"length 50, batch 256) on the `{report['settings']['dataset']}` protocol.",
        f"- Evaluation on the same {r['eval_users']} validation users on both sides "
        f"({r['eval_users_same_valid_target']} of them have the same validation target in "
        "both data pipelines).",
        "",
        "| figure | ours | official | ours / official |",
        "|---|---|---|---|",
        f"| seconds per training step (batch 256) | {_fmt(ours['train_seconds_per_step'], 3)} "
        f"| {_fmt(off['train_seconds_per_step'], 3)} "
        f"| {_fmt(ratios['train_seconds_per_step'], 3)} |",
        f"| training sequences per epoch | {ours['samples_per_epoch']:,} "
        f"| {off['samples_per_epoch']:,} | |",
        f"| projected seconds per training epoch | {_fmt(ours['projected_epoch_seconds'], 0)} "
        f"| {_fmt(off['projected_epoch_seconds'], 0)} "
        f"| {_fmt(ratios['projected_epoch_seconds'], 3)} |",
        f"| evaluation ms per user (own full validation: scoring, history masking, top-k, "
        f"metrics) | {_fmt(ours['eval_ms_per_user'], 3)} | {_fmt(off['eval_ms_per_user'], 3)} "
        f"| {_fmt(ratios['eval_seconds_per_user'], 3)} |",
        f"| model scoring alone (a separate pass), ms per user "
        f"| {_fmt(ours['eval_scoring_ms_per_user'], 3)} "
        f"| {_fmt(off['eval_scoring_ms_per_user'], 3)} "
        f"| {_fmt(ratios['eval_scoring_seconds_per_user'], 3)} |",
        f"| data loading share of a training step | {ours['train_loader_share']:.1%} "
        f"| {off['train_loader_share']:.1%} | |",
        f"| padding share of the training inputs | {ours['padding_share']:.0%} "
        f"| {off['padding_share']:.0%} | |",
    ]
    if "cpu_memory" in r:
        mo, mf = r["cpu_memory"]["ours"], r["cpu_memory"][OFFICIAL]
        for key, label in (
            ("train_peak_above_start_mib", "peak memory while training, MiB above start"),
            ("eval_peak_above_start_mib", "peak memory while evaluating, MiB above start"),
            ("train_peak_rss_mib", "peak resident memory while training, MiB"),
        ):
            a, b = mo.get(key), mf.get(key)
            ratio = _fmt(a / b, 3) if a and b else "n/a"
            lines.append(f"| {label} | {_fmt(a, 0)} | {_fmt(b, 0)} | {ratio} |")
    if "full_epoch" in r:
        fe = r["full_epoch"]
        lines += [
            f"| one full training epoch, s (measured once each) "
            f"| {_fmt(fe['ours']['train']['seconds'], 1)} "
            f"| {_fmt(fe[OFFICIAL]['train']['seconds'], 1)} "
            f"| {_fmt(fe['train_ratio_ours_over_official'], 3)} |",
            f"| one full validation pass (all users), s "
            f"| {_fmt(fe['ours']['eval']['pipeline_seconds'], 1)} "
            f"| {_fmt(fe[OFFICIAL]['eval']['pipeline_seconds'], 1)} "
            f"| {_fmt(fe['eval_ratio_ours_over_official'], 3)} |",
        ]
    measured = r.get("full_epoch", {}).get("train_ratio_ours_over_official")
    if measured is not None:
        goal = goal and measured <= 0.5
    lines += [
        "",
        f"**Goal (an epoch in at most half the official time on the same device): "
        f"{'met' if goal else 'NOT met'}** (ours / official = "
        f"{ratios['projected_epoch_seconds']:.3f} for the projected epoch, per-round ratio"
        + (f"; {measured:.3f} for the one measured epoch each" if measured is not None else "")
        + ").",
        "",
        "- Steps and evaluation are interleaved in every round (order rotating) in one process "
        "with the same threads; the full epochs and full validation passes run once each, one "
        "after the other, so the machine's load may differ between the two sides.",
        "- Evaluation batches: ours validates in the harness's `eval_batch_size` (4096 users "
        "by default, so the measured users form one batch), the official code in batches of "
        "its `--batch_size` (256): that, not the model, is why our evaluation peak memory is "
        "higher.",
        "- Memory (CPU): peak resident memory above the resident memory when the phase starts, "
        "in a fresh process per side (data and model built; training includes gradients and "
        "Adam's state).",
        "",
        "Changes needed to run the official code here: " + "; ".join(report["official"]["changes"]),
    ]
    if report.get("notes"):  # findings written into the JSON after reading the profiles
        lines += ["", "## Findings", "", *(f"- {note}" for note in report["notes"])]
    if "profile" in r:
        for name, p in r["profile"].items():
            lines += [
                "",
                f"## Profile: {name} ({p['steps']} training steps, self CPU time)",
                "",
                "| operator | self s | share | calls |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| `{t['op']}` | {t['self_cpu_s']:.3f} | {t['share']:.1%} | {t['calls']} |"
                for t in p["top"][:10]
            ]
            lines.append("")
            lines.append(
                "Groups: " + ", ".join(f"{k} {v:.0%}" for k, v in p["group_shares"].items()) + "."
            )
    return "\n".join(lines) + "\n"


def official_commit(official_dir: Path) -> str | None:
    marker = official_dir / "COMMIT"  # an archive has no .git: the checkout step writes this
    if marker.is_file():
        return marker.read_text().strip()
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=official_dir,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


# --- command line -----------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--data-dir", default=None, help="folder holding <dataset>/<dataset>.inter")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each block")
    parser.add_argument("--eval-users", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        dest="set_",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every model (YAML value), as bench run --set",
    )
    parser.add_argument("--cache-dir", default=None, help="processed-dataset cache (default: tmp)")
    parser.add_argument("--out", default="results/perf")
    parser.add_argument("--no-memory", action="store_true", help="skip the CPU memory probes")
    parser.add_argument("--memory-steps", type=int, default=1)
    parser.add_argument(
        "--official-dir",
        type=Path,
        default=None,
        help="a checkout of YuWang-1024/ContrastVAE: compare ContrastVAE with it instead",
    )
    parser.add_argument(
        "--official-data-dir",
        type=Path,
        default=None,
        help="folder with Beauty.txt for the official code (default: <data-dir>/<dataset>)",
    )
    parser.add_argument("--full-epoch", action="store_true", help="also one whole epoch each")
    parser.add_argument("--profile-steps", type=int, default=0, help="profile N steps of each")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--render-md",
        type=Path,
        default=None,
        metavar="JSON",
        help="only rewrite the markdown beside an existing report JSON",
    )
    args = parser.parse_args(argv)
    args.argv = [a for a in argv]  # for the memory-probe subprocesses
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    import yaml

    args.settings = {}
    for item in args.set_:
        key, _, value = item.partition("=")
        args.settings[key.strip()] = yaml.safe_load(value)
    args.device_obj = torch.device(args.device)
    if args.cache_dir is None:
        args.cache_dir = str(Path(tempfile.gettempdir()) / "recbole-bench-perf-cache")
    if args.official_dir is not None and args.official_data_dir is None:
        from bench.datasets import locate

        args.official_data_dir = locate(args.dataset, args.data_dir).folder(args.dataset)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    from recbole_ext import compat

    compat.apply()

    if args.render_md is not None:  # no measuring: a report's markdown from its JSON
        report = json.loads(args.render_md.read_text())
        render = official_md if "comparison" in report else models_md
        args.render_md.with_suffix(".md").write_text(render(report))
        return 0
    if args.memory_probe:
        with contextlib.redirect_stdout(sys.stderr):
            values = memory_probe(args.memory_probe, args)
        print(json.dumps(values))
        return 0

    report: dict[str, Any] = {
        "machine": machine_info(args.device_obj),
        "command": "uv run python benchmarks/sequential_speed.py " + shlex.join(argv),
        "settings": {
            "dataset": args.dataset,
            "data_dir": args.data_dir,
            "steps": args.steps,
            "warmup": args.warmup,
            "eval_users": args.eval_users,
            "rounds": args.rounds,
            "threads": torch.get_num_threads(),
            "threads_requested": args.threads,
            "overrides": args.settings,
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.official_dir is None:
        report.update(benchmark_models(args))
        stem, render = "sequential_speed", models_md
    else:
        report["official"] = {
            "repository": "github.com/YuWang-1024/ContrastVAE",
            "commit": official_commit(args.official_dir),
            "dir": str(args.official_dir),
            "changes": [
                "none to its code: its main() runs unmodified and falls back to the CPU by "
                "itself (torch.cuda.is_available() is false; its --no_cuda flag is passed "
                "anyway when --device cpu)",
                "--data_dir points at the shared Beauty.txt (byte-identical to its "
                "data/Beauty.txt)",
                "its trainer class is swapped, from outside, for a subclass that stops main() "
                "once everything is built, so that a fixed number of batches of its own "
                "training loop and its own validation on chosen users can be timed",
            ],
        }
        report["comparison"] = benchmark_official(args)
        stem, render = "contrastvae_vs_official", official_md
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    report["wall_seconds"] = time.perf_counter() - started
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(render(report))
    log(f"wrote {out / stem}.json and .md ({report['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
