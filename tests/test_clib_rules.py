"""CLIB's rules (SPEC section 12) against hand-computed values: importance update, replacement, Welch test."""
from __future__ import annotations

import math

import pytest
import torch

from methods.clib_rules import (lr_decision, loss_change, newcomer_importance, replacement_slot, student_t_cdf,
                                update_importance, welch_p_less)


def test_loss_change_over_unchanged_slots():
    before, after = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 2.5, 2.0])
    assert loss_change(before, after, torch.tensor([True, False, True])) == pytest.approx(-0.75)
    assert loss_change(before, after, torch.tensor([False, False, False])) == 0.0


def test_importance_update_public_and_intended():
    """H = [1, 2, 3, 4], drawn slots 1 and 3 (H_B = [2, 4], mean 3), dL = 0.5:
    public  H_B -= 0.1 (0.5 - 3 / 2) = -0.1  -> [2.1, 4.1];
    intended H_B -= 0.1 (0.5 - 3) / 2 = -0.125 -> [2.125, 4.125]."""
    h = torch.tensor([1.0, 2.0, 3.0, 4.0])
    update_importance(h, torch.tensor([1, 3]), 0.5)
    assert h.tolist() == pytest.approx([1.0, 2.1, 3.0, 4.1])
    h = torch.tensor([1.0, 2.0, 3.0, 4.0])
    update_importance(h, torch.tensor([1, 3]), 0.5, public=False)
    assert h.tolist() == pytest.approx([1.0, 2.125, 3.0, 4.125])


def test_replacement_takes_the_least_important_slot_of_the_largest_class():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    h = torch.tensor([5.0, 1.0, 3.0, 0.5, 2.0, 9.0])
    # newcomer of class 0: counts [3, 3, 1] (newcomer counted), tie -> class 0; its slots 0, 1 -> H 1.0 at slot 1
    assert replacement_slot(labels, h, 0) == 1
    assert newcomer_importance(labels, h, 0, 1) == 5.0  # the mean of class 0's other slot
    # newcomer of class 2: counts [2, 3, 2] -> class 1; its slots 2, 3, 4 -> H 0.5 at slot 3
    assert replacement_slot(labels, h, 2) == 3
    assert newcomer_importance(labels, h, 2, 3) == 9.0
    assert newcomer_importance(labels, h, 3, 3) == 0.0  # a class with no slot yet


def test_student_t_cdf_against_closed_forms_and_a_table():
    assert student_t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy
    assert student_t_cdf(0.0, 7) == pytest.approx(0.5)
    for t in (-3.0, -0.5, 0.7, 2.5):
        assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(t * t + 2)), abs=1e-12)
        assert student_t_cdf(t, 4) == pytest.approx(0.5 + t * (t * t + 6) / (2 * (t * t + 4) ** 1.5), abs=1e-12)
    assert student_t_cdf(1.812461, 10) == pytest.approx(0.95, abs=1e-6)  # the t table's 95% point, 10 df


def test_welch_test_and_the_lr_decision():
    """[1, 2, 3] against [4, 5, 6]: t = -3 / sqrt(2/3), Welch df = 4, p = CDF_4(t) = 0.010656."""
    t = -3 / math.sqrt(2 / 3)
    assert welch_p_less([1, 2, 3], [4, 5, 6]) == pytest.approx(0.5 + t * (t * t + 6) / (2 * (t * t + 4) ** 1.5))
    assert welch_p_less([1, 2, 3], [4, 5, 6]) == pytest.approx(0.010656, abs=1e-6)
    small, large = [0.1 + 0.01 * i for i in range(10)], [0.5 + 0.01 * i for i in range(10)]
    assert lr_decision(small, large) == 0.95  # the high rate helps less: both go down
    assert lr_decision(large, small) == pytest.approx(1 / 0.95)  # it helps more: both go up
    assert lr_decision(small, [v + 0.001 for v in small]) == 1.0  # no clear difference
    with pytest.raises(ValueError):
        welch_p_less([1.0], [2.0, 3.0])
