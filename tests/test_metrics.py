"""Metrics on a hand-made accuracy record."""
import math

from utils.report import metrics

# 3 tasks x 2 classes; cls_acc[i][c] after task i (percent); None = class not evaluated (disjoint)
CLS = [
    [90, 80, None, None, None, None],
    [60, 70, 95, 85, None, None],
    [50, 40, 70, 80, 90, 100],
]
TASKS = [[0, 1], [2, 3], [4, 5]]


def test_task_matrix():
    m = metrics.task_accuracy_matrix(CLS, TASKS)
    assert m[0, 0] == 85 and math.isnan(m[0, 1]) and m[1, 0] == 65 and m[1, 1] == 90 and m[2, 2] == 95


def test_f_last_hand_computed():
    # task 0: best earlier 85 -> final 45: 40; task 1: best earlier 90 -> final 75: 15; mean 27.5
    assert metrics.f_last(CLS, TASKS) == 27.5


def test_a_last_a_avg_i_last():
    acc = [80.0, 70.0, 60.0]
    assert metrics.a_last(acc) == 60.0
    assert metrics.a_avg(acc) == 70.0
    assert metrics.i_last(92.5, 60.0) == 32.5
    s = metrics.summarize(acc, [78.0, 66.0, 55.0], CLS, TASKS, joint_acc=90.0)
    assert s["A_last"] == 60.0 and s["A_last_final"] == 55.0 and s["I_last"] == 30.0 and s["F_last"] == 27.5
    # without a joint accuracy there is no intransigence (not -A_last)
    assert metrics.i_last(None, 60.0) is None and metrics.summarize(acc, acc, CLS, TASKS)["I_last"] is None


def test_single_task_has_no_forgetting():
    assert metrics.f_last([[50, 60]], [[0, 1]]) == 0.0


def test_a_auc_is_the_mean_of_equally_spaced_anytime_accuracies():
    from utils.report.metrics import a_auc
    # sum_i acc_i * dn / (3 * dn) with dn = 500: (50 + 70 + 90) / 3
    assert a_auc([50.0, 70.0, 90.0]) == 70.0
    assert math.isnan(a_auc([]))  # nothing was evaluated
