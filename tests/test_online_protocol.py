"""Pieces of i-Blurry's sample-wise protocol, against hand-computed values (SPEC section 12)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from methods.engine.online_protocol import StepCounter, anytime_marks, exposure_ranks, grow_head
from utils.report.metrics import a_auc, f_last_per_class


def test_labels_are_ranks_in_the_order_of_appearance():
    stream = torch.tensor([7, 7, 2, 9, 2, 0, 9, 7])  # first seen: 7, then 2, 9, 0
    ranks = exposure_ranks(stream, 10)
    assert ranks[[7, 2, 9, 0]].tolist() == [0, 1, 2, 3]
    assert ranks[[1, 3, 4, 5, 6, 8]].tolist() == [-1] * 6  # never seen


def test_anytime_marks_by_hand():
    """Every multiple of the period in (seen, seen + n]: none at 0 itself, the last sample's own mark included."""
    assert anytime_marks(0, 10, 4) == [4, 8] and anytime_marks(0, 8, 4) == [4, 8]
    assert anytime_marks(80, 46, 100) == [100] and anytime_marks(100, 99, 100) == []
    assert anytime_marks(5, 3, 0) == []


def test_head_growth_keeps_old_rows_and_reinitialises_every_bias():
    torch.manual_seed(0)
    fc = nn.Linear(5, 2)
    with torch.no_grad():
        fc.bias.fill_(7.0)
    new = grow_head(fc, 3)
    assert new.out_features == 3 and torch.equal(new.weight[:2], fc.weight)
    assert not torch.equal(new.weight[2], torch.zeros(5))  # the new row is initialised
    assert (new.bias.abs() < 1 / 5 ** 0.5 + 1e-6).all()  # nn.Linear's default range: the old 7.0 is gone
    assert new.weight.requires_grad and new.bias.requires_grad


def test_temporary_batch_steps_with_fractional_online_iter():
    """online_iter 0.25 over 128 samples in temporary batches of 8: 2 steps per batch, 32 in all;
    online_iter 0.3 keeps the remainder: 2.4 -> 2 steps (0.4 kept), 2.8 -> 2 (0.8), 3.2 -> 3 (0.2)."""
    c = StepCounter(0.25)
    assert sum(c.add(8) for _ in range(16)) == 32 and c.counter == 0.0
    c = StepCounter(0.3)
    assert [c.add(8) for _ in range(3)] == [2, 2, 3] and c.counter == pytest.approx(0.2)
    c2 = StepCounter(1.0)
    c2.load_state_dict(c.state_dict())
    assert c2.counter == pytest.approx(0.2) and c2.online_iter == 0.3
    with pytest.raises(ValueError):
        StepCounter(0)


def test_a_auc_and_per_class_f_last_by_hand():
    assert a_auc([10.0, 30.0, 50.0, 70.0]) == 40.0
    # class 0: best earlier 80, last 50 -> 30; class 1: best earlier 60, last 70 -> -10;
    # class 2: best earlier 0 -> left out; class 3: first evaluated in the last task -> left out
    cls_acc = [[80.0, None, 0.0, None], [60.0, 60.0, 0.0, None], [50.0, 70.0, 40.0, 90.0]]
    assert f_last_per_class(cls_acc) == pytest.approx(10.0)
    assert f_last_per_class(cls_acc[:1]) == 0.0
