"""A training run's resumable state: what the next epoch's outcome depends on besides the data.

After every epoch the trainer writes it as a "last" checkpoint beside RecBole's "best" one, so a
run that was killed, preempted or cut by its time budget continues from its last finished epoch
and ends exactly as an uninterrupted run would on the same device:

- the model's parameters and buffers, its other parameters (RecBole's ``other_parameter``) and
  its plain scalar attributes (RecBole's MultiVAE counts its annealing steps in ``self.update``);
- the state of every optimizer the trainer holds (and a learning-rate scheduler's, if it has one);
- every random number generator a run draws from: torch's (CPU and CUDA), NumPy's global one
  (RecBole's negative samplers), Python's (RecBole's transforms) and the training loader's own
  generator (RecBole's shuffling, or the length-bucketed batches');
- the early-stopping state (``cur_step``, the best score and result), the epoch records and the
  training time spent so far.

With ``checkpoint_every_s`` the trainer also writes it between two batches of an epoch
(``mid_epoch``: :class:`recbole_ext.training.MidEpoch`), so a stop loses at most that much
training; such a checkpoint is the state after the epoch before, with the weights, optimizer
and generators of the moment it was taken.

Everything is stored as tensors and plain values, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = 2
_NOT_SCALARS = {"training"}


def _scalar_attributes(model: torch.nn.Module) -> dict[str, int | float | bool]:
    found: dict[str, int | float | bool] = {}
    for prefix, module in model.named_modules():
        for name, value in vars(module).items():
            if type(value) in (int, float, bool) and not name.startswith("_"):
                if name not in _NOT_SCALARS:
                    found[f"{prefix}.{name}" if prefix else name] = value
    return found


def _set_scalar_attributes(model: torch.nn.Module, values: dict[str, Any]) -> None:
    modules = dict(model.named_modules())
    for key, value in values.items():
        prefix, _, name = key.rpartition(".")
        module = modules.get(prefix)
        if module is not None and hasattr(module, name):
            setattr(module, name, value)


def rng_state(train_data: Any = None) -> dict[str, Any]:
    """Every generator's state, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    generator = getattr(train_data, "generator", None)
    if isinstance(generator, torch.Generator):
        state["loader"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], train_data: Any = None) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached"],
        )
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator = getattr(train_data, "generator", None)
    if "loader" in state and isinstance(generator, torch.Generator):
        generator.set_state(state["loader"])


def tensor_values(parameters: dict | None) -> dict:
    """A model's ``other_parameter()`` without what a checkpoint cannot hold as plain values.

    Non-tensor "other parameters" (EASE's and ItemKNN's SciPy matrices) are derived from the
    data when the model is built; the rebuilt model has them again."""
    kept = (torch.Tensor, int, float)
    return {k: v for k, v in (parameters or {}).items() if isinstance(v, kept)}


def _optimizers(trainer: Any) -> dict[str, torch.optim.Optimizer]:
    """Every distinct optimizer the trainer holds, by attribute name. RecBole's RecVAE trainer
    keeps one for the encoder and one for the decoder and points ``optimizer`` at whichever ran
    last: an optimizer reachable under several names is kept under its own (not ``optimizer``)."""
    names: dict[int, list[str]] = {}
    objects: dict[int, torch.optim.Optimizer] = {}
    for name, value in vars(trainer).items():
        if isinstance(value, torch.optim.Optimizer):
            names.setdefault(id(value), []).append(name)
            objects[id(value)] = value
    chosen = {}
    for key, aliases in names.items():
        own = [n for n in aliases if n != "optimizer"] or aliases
        chosen[sorted(own)[0]] = objects[key]
    return chosen


def capture(trainer: Any, train_data: Any, epoch: int, elapsed: float) -> dict[str, Any]:
    """The state after ``epoch`` (0-based) finished, validation and early stopping included."""
    from dataclasses import asdict

    state: dict[str, Any] = {
        "format": FORMAT,
        "model_name": str(trainer.config["model"]),
        "epoch": int(epoch),
        "state_dict": trainer.model.state_dict(),
        "other_parameter": tensor_values(trainer.model.other_parameter()),
        "scalars": _scalar_attributes(trainer.model),
        "optimizers": {name: opt.state_dict() for name, opt in _optimizers(trainer).items()},
        "cur_step": int(trainer.cur_step),
        "best_valid_score": float(trainer.best_valid_score),
        "best_valid_result": (
            None
            if trainer.best_valid_result is None
            else {str(k): float(v) for k, v in trainer.best_valid_result.items()}
        ),
        "train_loss": {int(k): float(v) for k, v in trainer.train_loss_dict.items()},
        "records": [asdict(r) for r in getattr(trainer, "epochs_record", [])],
        "elapsed_seconds": float(elapsed),
        "rng": rng_state(train_data),
    }
    scheduler = getattr(trainer, "scheduler", None)
    if scheduler is not None and hasattr(scheduler, "state_dict"):
        state["scheduler"] = scheduler.state_dict()
    return state


def save(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write atomically: a killed process leaves the previous checkpoint, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load(path: str | os.PathLike, device: Any = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)


@dataclass(frozen=True)
class CheckpointSummary:
    """Where an unfinished run stands, from its last checkpoint: the epochs finished, the best
    validation score and its epoch, the validations since (early stopping's count: -1 during
    a warm-up), the training seconds of every sitting so far and, for a checkpoint taken inside
    an epoch, the batches of the next epoch already trained on."""

    epochs: int
    best_epoch: int | None
    best_valid_score: float
    cur_step: int
    elapsed_seconds: float
    batches_into_epoch: int | None = None


def summary(path: str | os.PathLike) -> CheckpointSummary:
    """The :class:`CheckpointSummary` of a last checkpoint, read without loading its tensors
    (memory-mapped: a Vamp checkpoint on Beauty holds about 300 MiB of them)."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    best = float(state["best_valid_score"])
    inside = state.get("mid_epoch")
    scores = [r.get("valid_score") for r in state.get("records", [])]
    best_epoch = next(
        (r["epoch"] for r, v in zip(state.get("records", []), scores, strict=True) if v == best),
        None,
    )
    return CheckpointSummary(
        epochs=int(state["epoch"]) + 1,
        best_epoch=best_epoch,
        best_valid_score=best,
        cur_step=int(state["cur_step"]),
        elapsed_seconds=float(state.get("elapsed_seconds", 0.0)),
        batches_into_epoch=None if inside is None else int(inside["batches"]),
    )


# --- a two-stage model's pre-training (S3Rec) -----------------------------------------------------
# While the stage runs, its state after every epoch is ``pretrain-last.pth``; once it ends, the
# weights fine-tuning loads (with the stage's records and seconds) are ``<Model>-pretrained.pth``.
PRETRAIN_LAST = "pretrain-last.pth"


def pretrained_weights(folder: str | os.PathLike, model: str) -> Path:
    """The weights file a finished pre-training stage leaves in a run's checkpoint folder."""
    return Path(folder) / f"{model}-pretrained.pth"


def stage_seconds(weights: dict[str, Any]) -> float:
    """A pre-trained weights file's training seconds over every sitting (files from before
    they were kept: the sum of the stage's epoch seconds)."""
    records = weights.get("records", [])
    fallback = sum(r.get("train_seconds") or 0.0 for r in records)
    return float(weights.get("elapsed_seconds", fallback))


@dataclass(frozen=True)
class PretrainSummary:
    """Where a run's pre-training stands: its epochs finished, whether the stage ended (its
    weights saved for fine-tuning) and its training seconds over every sitting."""

    epochs: int
    ended: bool
    elapsed_seconds: float


def pretrain_summary(folder: str | os.PathLike, model: str) -> PretrainSummary | None:
    """The :class:`PretrainSummary` of a run's checkpoint folder, or None where it holds no
    pre-training (a one-stage model, or a run not started)."""
    weights = pretrained_weights(folder, model)
    if weights.is_file():
        state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
        return PretrainSummary(len(state.get("records", [])), True, stage_seconds(state))
    last = Path(folder) / PRETRAIN_LAST
    if last.is_file():
        where = summary(last)
        return PretrainSummary(where.epochs, False, where.elapsed_seconds)
    return None


def restore_model_and_optimizer(trainer: Any, state: dict[str, Any]) -> None:
    """Put the saved weights, scalars, optimizer and early-stopping state into ``trainer``."""
    if state.get("format") != FORMAT:
        raise ValueError(
            f"checkpoint format {state.get('format')} is not {FORMAT} (written by another "
            "version of the harness): run again without --resume"
        )
    if state.get("model_name", "").lower() != str(trainer.config["model"]).lower():
        raise ValueError(
            f"checkpoint holds {state.get('model_name')}, not {trainer.config['model']}"
        )
    trainer.model.load_state_dict(state["state_dict"])
    trainer.model.load_other_parameter(state.get("other_parameter"))
    _set_scalar_attributes(trainer.model, state.get("scalars", {}))
    optimizers = _optimizers(trainer)
    for name, optimizer_state in state["optimizers"].items():
        optimizers[name].load_state_dict(optimizer_state)
    scheduler = getattr(trainer, "scheduler", None)
    if "scheduler" in state and scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    trainer.start_epoch = state["epoch"] + 1
    trainer.cur_step = state["cur_step"]
    trainer.best_valid_score = state["best_valid_score"]
    trainer.best_valid_result = state["best_valid_result"]
    trainer.train_loss_dict = dict(state.get("train_loss", {}))
