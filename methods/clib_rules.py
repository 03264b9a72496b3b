"""CLIB's rules (SPEC section 12), as pure functions: the sample-wise importance update, the memory
replacement choice, and the adaptive learning rate's one-sided Welch test (no SciPy needed)."""
from __future__ import annotations

import math
from typing import Sequence

import torch

IMPORTANCE_LR = 0.1  # the step of the importance update
LR_FACTOR = 0.95  # low = 0.95 high; a decision moves both by this factor


def loss_change(before: torch.Tensor, after: torch.Tensor, unchanged: torch.Tensor) -> float:
    """dL: the mean change of the per-sample losses over the memory slots unchanged since ``before``."""
    if not bool(unchanged.any()):
        return 0.0
    return float((after[unchanged] - before[unchanged]).mean())


def update_importance(importance: torch.Tensor, drawn: torch.Tensor, dl: float, public: bool = True) -> None:
    """In place: the drawn slots B get H_B -= 0.1 (dL - mean(H_B) / |B|), as the CLIB code computes it
    (``public``); with ``public=False``, the likely intent H_B -= 0.1 (dL - mean(H_B)) / |B|."""
    h = importance[drawn]
    if public:
        importance[drawn] = h - IMPORTANCE_LR * (dl - h.mean() / len(drawn))
    else:
        importance[drawn] = h - IMPORTANCE_LR * (dl - h.mean()) / len(drawn)


def replacement_slot(labels: torch.Tensor, importance: torch.Tensor, newcomer: int) -> int:
    """The slot a full memory gives up for a newcomer of class ``newcomer``: in the largest class (the
    newcomer counted), the slot with the lowest importance. Ties: the lowest class label, then slot."""
    counts = torch.bincount(labels, minlength=newcomer + 1)
    counts[newcomer] += 1
    largest = int(torch.argmax(counts))  # argmax returns the first maximum: the lowest label
    slots = torch.nonzero(labels == largest).flatten()
    if len(slots) == 0:  # only the newcomer's class is the largest and it holds no slot yet: impossible when full
        raise ValueError("the memory holds no sample of its largest class")
    return int(slots[torch.argmin(importance[slots])])


def newcomer_importance(labels: torch.Tensor, importance: torch.Tensor, newcomer: int, slot: int) -> float:
    """The newcomer's importance: the mean of its class's other slots (0 when it has none)."""
    mine = (labels == newcomer)
    mine[slot] = False
    return float(importance[mine].mean()) if bool(mine.any()) else 0.0


# ----------------------------------------------------------------------------- the adaptive learning rate

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` (real) degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t < 0 else 1.0 - tail


def welch_p_less(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided Welch t-test p-value for mean(a) < mean(b) (SciPy's ttest_ind(a, b, equal_var=False,
    alternative="less")); 0.5 when both samples have no spread."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        raise ValueError("the Welch test needs at least 2 values in each list")
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1) / na
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1) / nb
    if va + vb == 0:
        return 0.5 if ma == mb else (0.0 if ma < mb else 1.0)
    t = (ma - mb) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    return student_t_cdf(t, df)


def lr_decision(high_decreases: Sequence[float], low_decreases: Sequence[float]) -> float:
    """The factor both learning rates are multiplied by once both lists hold 10 loss decreases: the
    high rate's decreases smaller than the low rate's (p < 0.05) -> 0.95 (down); larger (p > 0.95) ->
    1/0.95 (up); else 1."""
    p = welch_p_less(high_decreases, low_decreases)
    if p < 0.05:
        return LR_FACTOR
    if p > 0.95:
        return 1.0 / LR_FACTOR
    return 1.0
