"""RecBole trainer glue: per-epoch records, time budgets, warm-up patience and resumable runs.

RecBole's trainers keep only the total loss per epoch and the best validation result.
:func:`recording_trainer` wraps whichever trainer class RecBole picks for a model so that each
epoch's training loss, the mean of the model's ``last_loss_terms`` (if it exposes them), the full
validation result and the time spent are kept, and an optional callback sees every validation.

For the trainers whose loop is RecBole's own ``Trainer.fit`` (nearly all), the loop is replaced
by :meth:`RecordingMixin.fit`, the same steps plus a "last" checkpoint after every epoch
(:mod:`recbole_ext.run_state`) from which :meth:`RecordingMixin.resume` continues a killed run,
and a ``stop_reason``. :func:`pretrain` runs a two-stage model's pre-training the same way.

The harness keys the trainer follows (``time_budget_s``, ``stopping_warmup_epochs``,
``fast_evaluation``) come from its :class:`~recbole_ext.data.HarnessSettings` (``settings``), not
from RecBole's config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import os
import signal
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from recbole.evaluator.base_metric import TopkMetric
from recbole.trainer.trainer import PretrainTrainer, S3RecTrainer, Trainer
from recbole.utils import early_stopping, get_trainer, init_seed

from recbole_ext import run_state
from recbole_ext.data import HarnessSettings
from recbole_ext.evaluation import full_ranking, supports_fast_ranking

# How a run's training ended (``RecordingMixin.stop_reason``).
STOP_REASONS = ("early_stopping", "epoch_limit", "time_budget")
# RecBole's fit loops that :meth:`RecordingMixin.fit` replaces (S3Rec's fine-tuning is Trainer's).
_STANDARD_FITS = (Trainer.fit, S3RecTrainer.fit)

EpochCallback = Callable[[int, float, dict[str, float]], None]
TrainEpochHook = Callable[[int, "EpochRecord"], None]


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class BudgetExhausted(Exception):
    """``time_budget_s`` of training time is spent; raised before the next epoch starts, after
    the last epoch's validation, so the trainer's best checkpoint and result stand."""


class _EpochBatches:
    """One epoch's pass over a training loader, as RecBole's loop sees it. Everything but the
    iteration (length, sampler, dataset) is the loader's.

    - ``deadline`` (``time.perf_counter()``) and ``max_batches`` (a replayed cut:
      :class:`RecordedStop`) end the pass at the first batch boundary after them: one epoch of a
      large dataset on a CPU can last longer than a whole budget.
    - ``skip``: a run resumed inside this epoch draws the batches it trained on before its stop
      again without yielding them (the loader's order and its collate's draws come out as they
      did), then ``skipped()`` puts the generators where they were after them.
    - ``after_batch(n)`` runs once the step on the ``n``-th batch is done, before the next batch
      is drawn: where a checkpoint inside the epoch is taken.
    """

    def __init__(
        self,
        loader: Any,
        deadline: float = math.inf,
        max_batches: int | None = None,
        skip: int = 0,
        skipped: Callable[[], None] | None = None,
        after_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._loader = loader
        self._deadline = deadline
        self._max_batches = max_batches
        self._skip = skip
        self._skipped = skipped
        self._after_batch = after_batch
        self.batches = 0
        self.cut = False

    def __iter__(self) -> Any:
        batches = iter(self._loader)
        for skipped in range(self._skip):
            if next(batches, None) is None:
                raise RuntimeError(
                    f"the checkpoint was taken after batch {self._skip} of this epoch, but the "
                    f"training data has {skipped} batches now: resume with the data it ran on"
                )
        self.batches = self._skip
        if self._skipped is not None:
            self._skipped()
        for batch in batches:
            yield batch
            self.batches += 1
            spent = time.perf_counter() >= self._deadline
            if spent or (self._max_batches is not None and self.batches >= self._max_batches):
                self.cut = True
                return
            if self._after_batch is not None:
                self._after_batch(self.batches)

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


@dataclass(frozen=True)
class MidEpoch:
    """Where a run stood inside an unfinished epoch when its last checkpoint was taken: the
    batches it had trained on, the generators' states at the epoch's start (the loader's order
    is drawn again from them) and after those batches (``rng``: the checkpoint's own, stored
    there once), and the epoch's sums so far."""

    epoch: int
    batches: int
    epoch_start_rng: dict[str, Any]
    rng: dict[str, Any]
    loss: float | tuple[float, ...] | None
    loss_term_sums: dict[str, float]
    loss_term_steps: int
    train_seconds: float

    def state(self) -> dict[str, Any]:
        """As a checkpoint holds it under ``mid_epoch`` (plain values and tensors; ``rng`` is the
        checkpoint's own)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del values["rng"]
        if isinstance(self.loss, tuple):
            values["loss"] = list(self.loss)
        return values

    @classmethod
    def from_state(cls, checkpoint: dict[str, Any]) -> MidEpoch:
        """From a checkpoint taken inside an epoch."""
        values = checkpoint["mid_epoch"]
        loss = values["loss"]
        loss = tuple(loss) if isinstance(loss, list) else loss
        return cls(**{**values, "loss": loss, "rng": checkpoint["rng"]})


class _EpochLoss:
    """An epoch's training loss summed as RecBole's loop sums it (``loss.item()`` batch after
    batch; part by part for a tuple of losses), kept here so that a run resumed inside the epoch
    continues the same sum and records the value an uninterrupted run would."""

    def __init__(self, total: float | tuple[float, ...] | None = None) -> None:
        self.total = total

    def counting(self, loss_func: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def counted(interaction: Any) -> Any:
            losses = loss_func(interaction)
            if isinstance(losses, tuple):
                parts = tuple(part.item() for part in losses)
                total = self.total
                self.total = (
                    parts if total is None else tuple(map(sum, zip(total, parts, strict=True)))
                )
            else:
                value = losses.item()
                self.total = value if self.total is None else self.total + value
            return losses

        return counted


def deferred_until_saved(handler: Callable[[int, Any], Any]) -> Callable[[int, Any], Any]:
    """Mark a signal handler (one that stops the program) as one a training run may serve
    after the batch it is on, once its state is saved there, instead of at once: a plan's own
    stop (:mod:`bench.plans`) is marked, so a run in the plan's process loses nothing."""
    handler.deferred_until_saved = True  # type: ignore[attr-defined]
    return handler


def _deferrable(signum: int, handler: Any) -> bool:
    """Handlers whose stop may wait for a batch boundary: the default SIGTERM (ends the process),
    Python's Ctrl-C (raises KeyboardInterrupt) and handlers marked :func:`deferred_until_saved`.
    Others (ignored signals, Ray's workers, a study's own) keep their behaviour."""
    if signum == signal.SIGTERM and handler is signal.SIG_DFL:
        return True
    if signum == signal.SIGINT and handler is signal.default_int_handler:
        return True
    return bool(getattr(handler, "deferred_until_saved", False))


class _StopAfterABatch:
    """While a resumable run trains in the main thread, a stop signal (SIGTERM, Ctrl-C) whose
    handler would end the program (:func:`_deferrable`) instead asks the run to stop at the
    next batch boundary: it saves its state there, then serves the signal as it would have
    been served (the process ends by the same SIGTERM; Ctrl-C or a plan's stop raise
    KeyboardInterrupt there), so whoever sent it sees what it expects and the run loses
    nothing. A second signal before that boundary is served at once. Off the main thread, or
    for handlers that are not deferrable, nothing changes.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: int | None = None  # the signal to serve at the next batch boundary
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopAfterABatch:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                handler = signal.getsignal(signum)
                if _deferrable(signum, handler):
                    self._previous[signum] = handler
                    signal.signal(signum, self._request)
        return self

    def _request(self, signum: int, frame: Any) -> None:
        if self.requested is not None:  # asked twice: stop now
            self.requested = signum
            self.serve()
            return
        self.requested = signum
        name = signal.Signals(signum).name
        message = f"{name}: stopping after this batch, state saved (send it again to stop now)\n"
        os.write(2, message.encode())  # not print: the signal may have come during a print

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def serve(self) -> None:
        """Serve the requested signal as its own handler would have (the state is saved)."""
        signum, self.requested = self.requested, None
        assert signum is not None
        handler = self._previous.get(signum, signal.SIG_DFL)
        self.__exit__()
        if handler is signal.SIG_DFL:
            os.kill(os.getpid(), signum)  # the default action: the process ends by it
        else:
            handler(signum, None)


@dataclass(frozen=True)
class RecordedStop:
    """Where a recorded run's time budget ended a training stage: before epoch ``epochs``
    (counting from 0), its last epoch cut after ``last_batches`` batches (None: that epoch ran
    whole). A replay (``RecordingMixin.replay_stop``) stops there instead of on the clock, so a
    budget-cut run can be run again to the same point."""

    epochs: int
    last_batches: int | None = None


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float | None = None
    train_seconds: float = 0.0
    loss_terms: dict[str, float] = field(default_factory=dict)
    valid_score: float | None = None
    valid_result: dict[str, float] | None = None
    valid_seconds: float = 0.0
    # Set when the time budget ended the epoch part-way: the batches it trained on.
    cut_after_batches: int | None = None


def _as_float(value: Any) -> float:
    if isinstance(value, tuple):
        return float(sum(float(v) for v in value))
    return float(value)


class _LossTermAccumulator:
    """Averages a model's ``last_loss_terms`` over the training steps of one epoch."""

    def __init__(self, model: Any) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.steps = 0
        if hasattr(model, "last_loss_terms"):
            original = model.calculate_loss

            def calculate_loss(interaction: Any) -> Any:
                loss = original(interaction)
                for key, value in getattr(model, "last_loss_terms", {}).items():
                    self.sums[key] += float(value)
                self.steps += 1
                return loss

            model.calculate_loss = calculate_loss

    def partial(self) -> tuple[dict[str, float], int]:
        """The sums and step count so far (a checkpoint inside an epoch keeps them)."""
        return dict(self.sums), self.steps

    def restore(self, sums: dict[str, float], steps: int) -> None:
        self.sums.clear()
        self.sums.update(sums)
        self.steps = steps

    def pop_means(self) -> dict[str, float]:
        means = {k: v / self.steps for k, v in self.sums.items()} if self.steps else {}
        self.sums.clear()
        self.steps = 0
        return means


def _per_user_topk(metric: TopkMetric, dataobject: Any) -> np.ndarray:
    """[n_users, max(topk)] values of a top-k metric; RecBole's metric_info takes the number
    of positives only for the metrics that need it (Recall, NDCG, MAP)."""
    pos_index, pos_len = metric.used_info(dataobject)
    if len(inspect.signature(metric.metric_info).parameters) >= 2:
        return metric.metric_info(pos_index, pos_len)
    return metric.metric_info(pos_index)


class RecordingMixin:
    """Mixed in before a RecBole trainer class; see the module docstring."""

    epoch_callback: EpochCallback | None = None
    train_epoch_hook: TrainEpochHook | None = None
    settings: HarnessSettings = HarnessSettings()  # frozen: a safe shared default
    replay_stop: RecordedStop | None = None  # stop where a recorded run's budget stopped it
    cut_by_budget = False  # an epoch was ended part-way by ``time_budget_s``
    stop_reason: str | None = None  # one of STOP_REASONS once fit returned or the budget ran out
    last_checkpoint: Path | None = None  # where the state after each epoch goes (None: nowhere)
    elapsed_before = 0.0  # training seconds spent in earlier sittings of a resumed run
    resumed_from_batch: int | None = None  # a run resumed inside an epoch: the batches it skips
    _pending_rng: dict[str, Any] | None = None
    _mid_epoch: MidEpoch | None = None  # where a run resumed inside an epoch continues
    _stop: _StopAfterABatch | None = None  # set while a stop signal waits for a batch boundary

    def _init_records(self) -> None:
        self.epochs_record: list[EpochRecord] = []
        self._loss_terms = _LossTermAccumulator(self.model)  # type: ignore[attr-defined]
        self.last_per_user: dict[str, np.ndarray] = {}
        self._keep_per_user_values()

    def _keep_per_user_values(self) -> None:
        """Keep each evaluation's per-user values of every top-k metric (RecBole averages them).

        ``last_per_user`` maps ``"user_id"`` to the evaluated users' internal ids, in evaluation
        order, and ``"<metric>@<k>"`` to one value per user.
        """
        collector, evaluator = self.eval_collector, self.evaluator  # type: ignore[attr-defined]
        uid_field = self.config["USER_ID_FIELD"]  # type: ignore[attr-defined]
        batch_collect, evaluate = collector.eval_batch_collect, evaluator.evaluate
        users: list[np.ndarray] = []

        def eval_batch_collect(scores: Any, interaction: Any, *args: Any) -> None:
            if uid_field in interaction:
                users.append(interaction[uid_field].cpu().numpy())
            batch_collect(scores, interaction, *args)

        def evaluate_keeping_users(dataobject: Any) -> Any:
            result = evaluate(dataobject)
            per_user: dict[str, np.ndarray] = {}
            for name, metric in evaluator.metric_class.items():
                if isinstance(metric, TopkMetric):
                    values = _per_user_topk(metric, dataobject)
                    for k in metric.topk:
                        per_user[f"{name}@{k}"] = values[:, k - 1].astype(np.float64)
            evaluated = np.concatenate(users) if users else np.empty(0, dtype=np.int64)
            users.clear()
            lengths = {len(v) for v in per_user.values()}
            if lengths == {len(evaluated)}:  # one row per user (full ranking)
                self.last_per_user = {"user_id": evaluated, **per_user}
            else:
                self.last_per_user = {}
            return result

        collector.eval_batch_collect = eval_batch_collect
        evaluator.evaluate = evaluate_keeping_users

    def _record(self, epoch: int) -> EpochRecord:
        if not self.epochs_record or self.epochs_record[-1].epoch != epoch:
            self.epochs_record.append(EpochRecord(epoch=epoch))
        return self.epochs_record[-1]

    def _train_epoch(self, train_data: Any, epoch_idx: int, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        budget = self.settings.time_budget_s
        if not hasattr(self, "_training_started"):
            # A resumed run's budget counts the training time of its earlier sittings.
            self._training_started = start - self.elapsed_before
        if budget and start - self._training_started >= budget:
            self.stop_reason = "time_budget"
            raise BudgetExhausted(f"time_budget_s={budget:g} spent after {epoch_idx} epochs")
        replay, max_batches = self.replay_stop, None
        if replay is not None:
            if epoch_idx >= replay.epochs:
                self.stop_reason = "time_budget"
                raise BudgetExhausted(f"the recorded run's budget stopped it at epoch {epoch_idx}")
            if epoch_idx == replay.epochs - 1:
                max_batches = replay.last_batches
        resumed, self._mid_epoch = self._mid_epoch, None
        if resumed is not None and resumed.epoch != epoch_idx:
            resumed = None
        # The epoch's seconds include those it trained before a stop inside it.
        epoch_started = start - (resumed.train_seconds if resumed else 0.0)
        # Checkpoints inside the epoch need RecBole's own loop (its loss sum is redone here).
        inside = self._saves_inside_epochs() and not args and "loss_func" not in kwargs
        epoch_loss = _EpochLoss(resumed.loss if resumed else None)
        batches = None
        if not isinstance(train_data, _EpochBatches) and (
            budget or max_batches is not None or resumed or inside
        ):
            loader = train_data
            epoch_start_rng = run_state.rng_state(loader) if inside else {}
            last_save = time.perf_counter()

            def skipped() -> None:
                assert resumed is not None
                run_state.set_rng_state(resumed.rng, loader)

            def after_batch(done: int) -> None:
                nonlocal last_save
                now = time.perf_counter()
                stopping = self._stop is not None and self._stop.requested is not None
                if stopping or now - last_save >= self.settings.checkpoint_every_s:
                    place = (epoch_idx, done, epoch_start_rng, now - epoch_started)
                    self._save_inside_epoch(loader, *place, epoch_loss)
                    last_save = time.perf_counter()
                self.stop_if_requested()

            batches = train_data = _EpochBatches(
                loader,
                deadline=self._training_started + budget if budget else math.inf,
                max_batches=max_batches,
                skip=resumed.batches if resumed else 0,
                skipped=skipped if resumed else None,
                after_batch=after_batch if inside else None,
            )
        if resumed:
            self._loss_terms.restore(resumed.loss_term_sums, resumed.loss_term_steps)
        if inside or resumed:
            kwargs["loss_func"] = epoch_loss.counting(self.model.calculate_loss)  # type: ignore[attr-defined]
        loss = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)  # type: ignore[misc]
        if inside or resumed:
            loss = epoch_loss.total
        record = self._record(epoch_idx)
        if batches is not None and batches.cut:
            record.cut_after_batches = batches.batches
            self.cut_by_budget = True
            self.stop_reason = "time_budget"
        record.train_seconds = time.perf_counter() - epoch_started
        record.train_loss = _as_float(loss)
        record.loss_terms = self._loss_terms.pop_means()
        if not math.isfinite(record.train_loss):
            raise TrainingDiverged(f"training loss is {record.train_loss} at epoch {epoch_idx}")
        if self.train_epoch_hook is not None:
            self.train_epoch_hook(epoch_idx, record)
        return loss

    def _saves_inside_epochs(self) -> bool:
        """Whether this trainer takes checkpoints inside an epoch: asked for, with somewhere to
        put them, RecBole's own epoch loop (whose state between batches is known here) inside
        the fit loop here (which restores the generators of a resumed run), and no gradient
        scaler (its state lives inside RecBole's epoch loop)."""
        if not self.settings.checkpoint_every_s or self.last_checkpoint is None:
            return False
        if not self._owns_fit():
            return False
        if getattr(self, "enable_scaler", False):
            return False
        own = next(
            cls.__dict__["_train_epoch"]
            for cls in type(self).__mro__
            if cls is not RecordingMixin and "_train_epoch" in cls.__dict__
        )
        return own is Trainer._train_epoch

    @contextlib.contextmanager
    def stops_after_a_batch(self) -> Iterator[None]:
        """Within: a stop signal (SIGTERM, Ctrl-C, a plan's stop) stops training at the next
        batch boundary, with the state saved there (:class:`_StopAfterABatch`), where this
        trainer takes checkpoints inside epochs."""
        if not self._saves_inside_epochs():
            yield
            return
        with _StopAfterABatch() as stop:
            self._stop = stop
            try:
                yield
            finally:
                self._stop = None
                # Asked where no boundary followed (the last validation of a run its stopping
                # rule ended, a time budget's end): served here, before the test pass.
                if stop.requested is not None:
                    stop.serve()

    def stop_if_requested(self) -> None:
        """Serve a stop signal that waited for this point (call where the state is saved)."""
        if self._stop is not None and self._stop.requested is not None:
            self._stop.serve()

    def _save_inside_epoch(
        self,
        loader: Any,
        epoch_idx: int,
        batches: int,
        epoch_start_rng: dict[str, Any],
        seconds: float,
        epoch_loss: _EpochLoss,
    ) -> None:
        """Write the state after ``batches`` batches of epoch ``epoch_idx`` to
        :attr:`last_checkpoint`: the state after the epoch before, with the weights, optimizer,
        scalars and generators of now and the epoch's place (:class:`MidEpoch`)."""
        assert self.last_checkpoint is not None
        state = run_state.capture(self, loader, epoch_idx - 1, self.training_seconds())
        sums, steps = self._loss_terms.partial()
        state["mid_epoch"] = MidEpoch(
            epoch=epoch_idx,
            batches=batches,
            epoch_start_rng=epoch_start_rng,
            rng=state["rng"],
            loss=epoch_loss.total,
            loss_term_sums=sums,
            loss_term_steps=steps,
            train_seconds=seconds,
        ).state()
        run_state.save(self.last_checkpoint, state)

    def _valid_epoch(self, valid_data: Any, show_progress: bool = False) -> Any:
        start = time.perf_counter()
        valid_score, valid_result = super()._valid_epoch(  # type: ignore[misc]
            valid_data, show_progress=show_progress
        )
        epoch = self.epochs_record[-1].epoch if self.epochs_record else 0
        warmup = self.settings.stopping_warmup_epochs
        if epoch + 1 < warmup:  # ``epoch`` counts from 0
            # RecBole's early_stopping runs next and adds one to cur_step unless the score
            # improved (then 0): either way no patience is spent during the warm-up.
            self.cur_step = -1
        record = self._record(epoch)
        record.valid_seconds = time.perf_counter() - start
        record.valid_score = float(valid_score)
        record.valid_result = {k: float(v) for k, v in valid_result.items()}
        if self.epoch_callback is not None:
            self.epoch_callback(epoch, record.valid_score, record.valid_result)
        return valid_score, valid_result

    # --- evaluation -------------------------------------------------------------------------
    def evaluate(
        self,
        eval_data: Any,
        load_best_model: bool = True,
        model_file: str | None = None,
        show_progress: bool = False,
    ) -> Any:
        """Full ranking as one score matrix per batch of users (:mod:`recbole_ext.evaluation`:
        RecBole's values, bit for bit) where it applies and ``fast_evaluation`` is on; RecBole's
        own evaluation otherwise."""
        config = self.config  # type: ignore[attr-defined]
        fast = self.settings.fast_evaluation
        if not eval_data or not fast or not supports_fast_ranking(config, eval_data):
            return super().evaluate(  # type: ignore[misc]
                eval_data, load_best_model, model_file, show_progress
            )
        if load_best_model:
            checkpoint = run_state.load(model_file or self.saved_model_file, self.device)  # type: ignore[attr-defined]
            self.model.load_state_dict(checkpoint["state_dict"])  # type: ignore[attr-defined]
            self.model.load_other_parameter(checkpoint.get("other_parameter"))  # type: ignore[attr-defined]
        result = full_ranking(self.model, eval_data, config, self.device)  # type: ignore[attr-defined]
        self.last_per_user = result.per_user
        return OrderedDict(result.metrics)

    # --- the fit loop and resumable state ------------------------------------------------------
    def training_seconds(self) -> float:
        """Training time so far, earlier sittings included (validations count: they are part
        of what the budget pays for)."""
        started = getattr(self, "_training_started", None)
        return self.elapsed_before if started is None else time.perf_counter() - started

    def save_last(self, epoch: int, train_data: Any) -> None:
        """Write the state after ``epoch`` to :attr:`last_checkpoint` (if set)."""
        if self.last_checkpoint is not None:
            state = run_state.capture(self, train_data, epoch, self.training_seconds())
            run_state.save(self.last_checkpoint, state)

    def resume(self, path: str | Path, train_data: Any) -> int:
        """Continue from a "last" checkpoint: weights, optimizer, early stopping, records and
        training time now; the random generators when :meth:`fit` starts (after everything that
        builds the run has drawn from them). Returns the epoch training continues with."""
        state = run_state.load(path, self.device)  # type: ignore[attr-defined]
        run_state.restore_model_and_optimizer(self, state)
        self.epochs_record = [EpochRecord(**r) for r in state.get("records", [])]
        self.elapsed_before = float(state.get("elapsed_seconds", 0.0))
        self._pending_rng = state["rng"]
        if state.get("mid_epoch") is not None:
            # Inside an epoch: the loader's order is drawn again from the generators of the
            # epoch's start; those of the stop are set once its batches are skipped.
            self._mid_epoch = MidEpoch.from_state(state)
            self._pending_rng = self._mid_epoch.epoch_start_rng
            self.resumed_from_batch = self._mid_epoch.batches
        return int(self.start_epoch)  # type: ignore[attr-defined]

    def _owns_fit(self) -> bool:
        base_fit = next(
            cls.__dict__["fit"]
            for cls in type(self).__mro__
            if cls is not RecordingMixin and "fit" in cls.__dict__
        )
        return base_fit in _STANDARD_FITS

    def fit(
        self,
        train_data: Any,
        valid_data: Any = None,
        verbose: bool = True,
        saved: bool = True,
        show_progress: bool = False,
        callback_fn: Any = None,
    ) -> tuple[Any, Any]:
        """RecBole's ``Trainer.fit`` with the state saved after every epoch, a stop reason, and
        a resumed run's random generators restored before its first epoch."""
        if not self._owns_fit():
            return super().fit(  # type: ignore[misc]
                train_data, valid_data, verbose, saved, show_progress, callback_fn
            )
        if saved and self.start_epoch >= self.epochs:  # type: ignore[attr-defined]
            self._save_checkpoint(-1, verbose=verbose)  # type: ignore[attr-defined]
        self.eval_collector.data_collect(train_data)  # type: ignore[attr-defined]
        if self.config["train_neg_sample_args"].get("dynamic", False):  # type: ignore[attr-defined]
            train_data.get_model(self.model)  # type: ignore[attr-defined]
        if self._pending_rng is not None:
            run_state.set_rng_state(self._pending_rng, train_data)
            self._pending_rng = None
        self.stop_reason = "epoch_limit"
        with self.stops_after_a_batch():
            for epoch_idx in range(self.start_epoch, self.epochs):  # type: ignore[attr-defined]
                train_loss = self._train_epoch(train_data, epoch_idx, show_progress=show_progress)
                self.train_loss_dict[epoch_idx] = _as_float(train_loss)  # type: ignore[attr-defined]
                stop = False
                if self.eval_step <= 0 or not valid_data:  # type: ignore[attr-defined]
                    if saved:
                        self._save_checkpoint(epoch_idx, verbose=False)  # type: ignore[attr-defined]
                elif (epoch_idx + 1) % self.eval_step == 0:  # type: ignore[attr-defined]
                    valid_score, valid_result = self._valid_epoch(valid_data, show_progress)
                    self.best_valid_score, self.cur_step, stop, improved = early_stopping(
                        valid_score,
                        self.best_valid_score,  # type: ignore[attr-defined]
                        self.cur_step,  # type: ignore[attr-defined]
                        max_step=self.stopping_step,  # type: ignore[attr-defined]
                        bigger=self.valid_metric_bigger,  # type: ignore[attr-defined]
                    )
                    if improved:
                        if saved:
                            self._save_checkpoint(epoch_idx, verbose=False)  # type: ignore[attr-defined]
                        self.best_valid_result = valid_result
                    if callback_fn is not None:
                        callback_fn(epoch_idx, valid_score)
                if stop:
                    self.stop_reason = "early_stopping"
                    break
                if self.cut_by_budget:
                    self.stop_reason = "time_budget"
                # A budget-cut epoch counts as done: a resumed run goes on with the next one.
                self.save_last(epoch_idx, train_data)
                self.stop_if_requested()
        return self.best_valid_score, self.best_valid_result  # type: ignore[attr-defined]


def recording_trainer(
    config: Any,
    model: Any,
    epoch_callback: EpochCallback | None = None,
    train_epoch_hook: TrainEpochHook | None = None,
    settings: HarnessSettings | None = None,
) -> Any:
    """Instantiate RecBole's trainer for ``model`` with per-epoch recording.

    ``epoch_callback(epoch, valid_score, valid_result)`` runs after each validation (pruning,
    learning curves); ``train_epoch_hook(epoch, record)`` after each training epoch (progress).
    ``settings``: the harness's; without them, the harness keys ``config`` holds.
    """
    base = get_trainer(config["MODEL_TYPE"], config["model"])
    cls = type(f"Recording{base.__name__}", (RecordingMixin, base), {})
    trainer = cls(config, model)
    trainer.settings = settings if settings is not None else HarnessSettings.from_config(config)
    trainer.epoch_callback = epoch_callback
    trainer.train_epoch_hook = train_epoch_hook
    trainer._init_records()
    return trainer


def needs_pretraining(config: Any) -> bool:
    """Whether the model trains in two stages (RecBole's PretrainTrainer: S3Rec) and this
    config asks for the pre-training stage first."""
    trainer_class = get_trainer(config["MODEL_TYPE"], config["model"])
    return issubclass(trainer_class, PretrainTrainer) and config["train_stage"] == "pretrain"


@dataclass(frozen=True)
class PretrainedStage:
    """What pre-training hands to fine-tuning: the weights file, the stage's epoch records and
    the stage's training seconds spent in earlier sittings (0 when it all ran in this one)."""

    path: Path
    records: list[EpochRecord]
    earlier_seconds: float = 0.0


def pretrain(
    config: Any,
    model_class: type,
    train_data: Any,
    model_dataset: Any,
    budget_s: float = 0,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    settings: HarnessSettings | None = None,
    replay_stop: RecordedStop | None = None,
) -> PretrainedStage:
    """Run the pre-training stage for ``config["pretrain_epochs"]`` epochs, or until ``budget_s``
    seconds are spent (0: no cap), and save the final weights (tensors only) and the stage's
    epoch records into ``checkpoint_dir`` (default: the config's), for fine-tuning to load.
    ``settings``: the harness's (without them, those ``config`` holds); the stage's budget is
    ``budget_s`` whatever their ``time_budget_s``. ``replay_stop``: end the stage where a
    recorded run's budget ended it.

    The state after every epoch is kept in ``pretrain-last.pth`` until the stage ends; with
    ``resume`` a finished stage is not run again and an unfinished one continues from it. The
    weights file keeps the stage's training seconds, so a run resumed after it ended still
    counts them.
    """
    folder = Path(checkpoint_dir or config["checkpoint_dir"])
    path = run_state.pretrained_weights(folder, config["model"])
    last = folder / run_state.PRETRAIN_LAST
    if resume and path.is_file():
        saved = run_state.load(path)
        records = [EpochRecord(**r) for r in saved.get("records", [])]
        return PretrainedStage(path, records, earlier_seconds=run_state.stage_seconds(saved))
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = model_class(config, model_dataset).to(config["device"])
    if settings is None:
        settings = HarnessSettings.from_config(config)
    # The stage's own share of the run's budget.
    stage_settings = dataclasses.replace(settings, time_budget_s=float(budget_s))
    trainer = recording_trainer(config, model, settings=stage_settings)
    trainer.replay_stop = replay_stop
    trainer.last_checkpoint = last
    if resume and last.is_file():
        trainer.resume(last, train_data)
    if trainer._pending_rng is not None:
        run_state.set_rng_state(trainer._pending_rng, train_data)
        trainer._pending_rng = None
    with trainer.stops_after_a_batch():
        for epoch_idx in range(trainer.start_epoch, int(config["pretrain_epochs"])):
            try:
                loss = trainer._train_epoch(train_data, epoch_idx)
            except BudgetExhausted:
                break  # pre-training stops at its budget; fine-tuning starts from its weights
            trainer.train_loss_dict[epoch_idx] = _as_float(loss)
            trainer.save_last(epoch_idx, train_data)
            trainer.stop_if_requested()
    records = trainer.epochs_record
    weights = {
        "state_dict": model.state_dict(),
        "records": [asdict(r) for r in records],
        "elapsed_seconds": trainer.training_seconds(),
    }
    run_state.save(path, weights)
    last.unlink(missing_ok=True)
    return PretrainedStage(path, records, earlier_seconds=trainer.elapsed_before)
