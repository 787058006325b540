"""The harness's trainer glue (recbole_ext.training) against RecBole's own early stopping."""

from __future__ import annotations

import math

import pytest
from recbole.utils import early_stopping

from recbole_ext.data import HarnessSettings
from recbole_ext.training import RecordingMixin


class _ScriptedValidations:
    """Stands in for a RecBole trainer: each validation returns the next scripted score."""

    def __init__(self, scores: list[float], warmup: int) -> None:
        self.scores = list(scores)
        self.settings = HarnessSettings(stopping_warmup_epochs=warmup)
        self.cur_step = 0
        self.best_valid_score = -math.inf

    def _valid_epoch(self, valid_data, show_progress=False):
        score = self.scores.pop(0)
        return score, {"ndcg@10": score}


def _stopped_after(scores: list[float], stopping_step: int, warmup: int) -> int | None:
    """The 1-based epoch after which RecBole's fit loop would stop, as ``Trainer.fit`` does it:
    validate, then ``early_stopping`` on the trainer's ``cur_step``."""
    trainer = type("Trainer", (RecordingMixin, _ScriptedValidations), {})(scores, warmup)
    trainer.epochs_record = []
    for epoch in range(len(scores)):
        trainer._record(epoch)
        score, _ = trainer._valid_epoch(None)
        trainer.best_valid_score, trainer.cur_step, stop, _ = early_stopping(
            score, trainer.best_valid_score, trainer.cur_step, max_step=stopping_step
        )
        if stop:
            return epoch + 1
    return None


FALLING = [0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01, 0.0]


@pytest.mark.parametrize(
    ("warmup", "stopped"),
    [
        (0, 3),  # patience 1 is spent at epochs 2 and 3
        (5, 6),  # EVCF: epochs 1-4 count nothing; epochs 5 and 6 spend the patience
        (9, None),  # longer than training: never stops
    ],
)
def test_no_patience_is_spent_before_the_warmup_ends(warmup, stopped):
    assert _stopped_after(FALLING, stopping_step=1, warmup=warmup) == stopped


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"epochs": 1}, 1),  # --epochs 1 bounds pre-training too
        ({"epochs": 500}, 100),  # never beyond the model's own pre-training length
        ({"epochs": 1, "pretrain_epochs": 3}, 3),  # an explicit pretrain_epochs stands
        ({}, 100),  # nothing asked: the model's default
    ],
)
def test_epochs_bound_every_stage_of_a_two_stage_model(settings, expected):
    from bench.preflight import bound_pretraining

    config = {"epochs": 300, "pretrain_epochs": 100, **settings}
    bound_pretraining(config, settings)
    assert config["pretrain_epochs"] == expected


def test_epochs_leave_one_stage_models_alone():
    from bench.preflight import bound_pretraining

    config = {"epochs": 2}
    bound_pretraining(config, {"epochs": 2})
    assert config == {"epochs": 2}


def test_the_trainer_follows_its_typed_settings_else_the_configs_keys(tiny_sequences):
    from recbole.config import Config
    from recbole.model.general_recommender import Pop

    from recbole_ext.data import load_dataset, prepare_data
    from recbole_ext.training import recording_trainer

    config = Config(
        model="Pop",
        dataset="tiny",
        config_dict={
            "data_path": str(tiny_sequences),
            "checkpoint_dir": str(tiny_sequences / "ck"),
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "stopping_warmup_epochs": 4,
            "fast_evaluation": False,
        },
    )
    dataset, _ = load_dataset(config)
    model = Pop(config, prepare_data(config, dataset).model_dataset)
    typed = HarnessSettings(stopping_warmup_epochs=2, time_budget_s=5.0)
    assert recording_trainer(config, model, settings=typed).settings == typed
    from_config = recording_trainer(config, model).settings
    assert (from_config.stopping_warmup_epochs, from_config.fast_evaluation) == (4, False)
