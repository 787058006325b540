"""SLIME4Rec: training, semantic positives, padding and future positions, seeds, evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recbole_ext.models.slime4rec import SLIME4Rec
from tests.helpers import ROOT, make_model, sequential_setup, train_steps

YAML = str(ROOT / "configs/models/SLIME4Rec.yaml")
TINY = {"hidden_size": 16, "inner_size": 32, "MAX_ITEM_LIST_LENGTH": 10, "device": "cpu"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return sequential_setup(
        tmp_path_factory.mktemp("slime"), SLIME4Rec, {"train_batch_size": 64, **TINY}, n_items=15
    )


def make(setup, **overrides):
    return make_model(setup, SLIME4Rec, **overrides)


@pytest.mark.parametrize(
    "mixer,contrast,positive",
    [("G", "us_x", "dataset"), ("L", "us", "batch"), ("M", "su", "dataset"), ("G", "un", "batch")],
)
def test_trains_with_finite_terms(setup, mixer, contrast, positive):
    model = make(setup, filter_mixer=mixer, contrast=contrast, semantic_positive=positive)
    losses, terms = train_steps(model, setup[3], 20)
    assert all(np.isfinite(v) for t in terms for v in t.values())
    assert terms[-1]["total"] == pytest.approx(terms[-1]["ce"] + terms[-1]["contrastive"])
    assert terms[-1]["contrastive"] > 0
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_semantic_positives_share_the_target(setup):
    model = make(setup)
    batch = setup[3]
    seq, lens, target = batch["item_id_list"], batch["item_length"], batch["item_id"]
    torch.manual_seed(0)
    sem_seq, sem_len = model.semantic_positives(seq, lens, target)
    ds = setup[1]._dataset.inter_feat
    train_seqs, train_targets = ds["item_id_list"], ds["item_id"]
    # Positives come padded to their own longest sequence: compare at the stored width.
    assert sem_seq.shape[1] == int(sem_len.max())
    sem_seq = torch.nn.functional.pad(sem_seq, (0, train_seqs.shape[1] - sem_seq.shape[1]))
    seq = torch.nn.functional.pad(seq, (0, train_seqs.shape[1] - seq.shape[1]))
    others = 0
    for b in range(len(seq)):
        rows = (train_seqs == sem_seq[b]).all(dim=1) & (ds["item_length"] == sem_len[b])
        assert (train_targets[rows] == target[b]).any()
        n_same = int((train_targets == target[b]).sum())
        differs = not torch.equal(sem_seq[b], seq[b])
        others += differs
        if n_same == 1:  # the only sample with this target: the sequence itself
            assert not differs
    # Redraws (4 tries) make self-picks rare where another sample exists.
    assert others > len(seq) // 2
    # Batch mode: a partner of the same batch with the same target.
    model = make(setup, semantic_positive="batch")
    sem_seq, _ = model.semantic_positives(seq, lens, target)
    for b in range(len(seq)):
        partners = [j for j in range(len(seq)) if target[j] == target[b] and j != b]
        if partners:
            assert any(torch.equal(sem_seq[b], seq[j]) for j in partners)
        else:
            assert torch.equal(sem_seq[b], seq[b])


def test_output_ignores_padding_and_positions_after_the_last(setup):
    model = make(setup).eval()
    torch.manual_seed(0)
    lens = torch.tensor([3, 5, 10, 1])
    seq = torch.randint(1, model.n_items, (4, 10)) * (torch.arange(10) < lens.unsqueeze(1))
    changed = seq.clone()
    changed[seq == 0] = torch.randint(1, model.n_items, (int((seq == 0).sum()),))
    with torch.no_grad():
        torch.testing.assert_close(model(seq, lens), model(changed, lens))
        # The real items do matter.
        other = seq.clone()
        other[:, 0] = (other[:, 0] % (model.n_items - 1)) + 1
        assert not torch.allclose(model(seq, lens), model(other, lens))


def test_same_seed_same_losses(setup):
    a, _ = train_steps(make(setup), setup[3], 3)
    b, _ = train_steps(make(setup), setup[3], 3)
    assert a == b


def test_full_sort_predict_shape_and_consistency(setup):
    model = make(setup).eval()
    interaction = next(iter(setup[2]))[0]
    with torch.no_grad():
        full = model.full_sort_predict(interaction)
        single = model.predict(interaction)
    assert full.shape == (len(interaction), model.n_items)
    items = interaction[model.ITEM_ID]
    torch.testing.assert_close(full[torch.arange(len(items)), items], single)


def test_windows_follow_config(setup):
    model = make(setup, filter_mixer="M", dynamic_ratio=0.5, n_layers=2)
    # L = 10 -> 6 bins; G: step (6 * 0.5) // 1 = 3 -> [3, 6), [0, 3); L: w = 1/2 -> [3, 6), [0, 3).
    assert model.encoder.windows == [{"G": (3, 6), "L": (3, 6)}, {"G": (0, 3), "L": (0, 3)}]
