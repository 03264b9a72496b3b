"""The clib method (SPEC section 12) on tiny random inputs against hand-computed values: memory replacement,
the importance update after a step, the adaptive lr's schedule and decisions, head growth with Adam's moments,
and its state as data."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from methods.engine.online_protocol import StepCounter
from tests.synthetic import synthetic_method
from utils.data.augment import normalize

LR = 3e-4


def clib(memory: int = 4, batch: int = 4, n_cls: int = 3, per_cls: int = 4, *extra: str):
    """A clib method on n_cls * per_cls random 28x28 grey images (label = index % n_cls), head grown to n_cls."""
    argv = ["--mode", "clib", "--exp_name", "iblurry50_10", "--dataset", "mnist", "--device", "cpu",
            "--memory_size", str(memory), "--batchsize", str(batch), "--transforms", *extra]
    torch.manual_seed(0)
    m = synthetic_method(argv, n_cls, per_cls)
    n = n_cls * per_cls
    m.before_task(0, torch.arange(n), torch.arange(n), [])  # sample-wise: classes come by expose
    return m


def remember(m, *idx: int) -> None:
    for i in idx:
        m.remember(torch.tensor([i]), 0)


def step(m) -> torch.Tensor:
    """One training call of one step, as the trainer runs it; the drawn slots."""
    assert m.steps_due(StepCounter(1.0), 1) == 1
    m.model.train()
    batch = m.replay_batch(torch.empty(0, dtype=torch.long))
    drawn = m.drawn.clone()
    assert torch.equal(batch, m.memory.indices[drawn]) and len(drawn) == min(len(m.memory), m.cfg.batchsize)
    m.train_step(m.train_aug(m.data.train.images[batch]), m.data.train_labels[batch], batch)
    return drawn


def test_protocol_settings():
    m = clib(memory=5)
    assert m.cfg.temp_batchsize == 1 and m.remember_first and m.memory_size() == 5  # not memory - temp
    assert m.cfg.opt_name == "adam" and m.cfg.lr == LR
    assert [len(g["params"]) for g in m.optimizer.param_groups] == [len(list(m.model.parameters())) - 2, 2]


def test_fill_then_replace_least_important_of_largest_class():
    """Labels: index % 3. Fill [0, 3, 6, 1] (classes 0, 0, 0, 1): an appended sample gets its class's mean H
    (0 for a class's first). Full, newcomer 4 (class 1): counts 0:3, 1:1+1 -> class 0 loses its least
    important slot (slot 0, H 1) and the newcomer gets class 1's mean (slot 3: 0). Newcomer 2 (class 2, its
    first): counts 0:2, 1:2, 2:1 -> class 0 (the lower label), slots 1, 2 with H 3, 2 -> slot 2; its H is
    the whole memory's mean before the swap, (0 + 3 + 2 + 0) / 4 = 1.25, as the CLIB code does."""
    m = clib(memory=4)
    remember(m, 0, 3)
    assert m.memory.indices.tolist() == [0, 3] and m.importance.tolist() == [0.0, 0.0]
    m.importance = torch.tensor([1.0, 3.0], dtype=torch.float64)
    m.fresh.zero_()
    remember(m, 6, 1)
    assert m.memory.indices.tolist() == [0, 3, 6, 1] and m.importance.tolist() == [1.0, 3.0, 2.0, 0.0]
    assert m.fresh.tolist() == [False, False, True, True] and len(m.losses) == 4
    m.fresh.zero_()
    remember(m, 4)
    assert m.memory.indices.tolist() == [4, 3, 6, 1] and m.importance.tolist() == [0.0, 3.0, 2.0, 0.0]
    assert m.fresh.tolist() == [True, False, False, False] and m.phase_fresh[0]
    remember(m, 2)
    assert m.memory.indices.tolist() == [4, 3, 2, 1] and m.importance.tolist() == [0.0, 3.0, 1.25, 0.0]
    assert m.memory.class_counts(3) == [1, 2, 1]
    # a temporary batch of two enters one sample after the other. 7 (class 1): counts 0:1, 1:2+1, 2:1 -> class 1,
    # slots 0 and 3 tie at H 0 -> slot 0, H 0 (slot 3's). 9 (class 0): counts 0:1+1, 1:2 -> class 0 (the lower
    # label), its only slot 1 -> H = the memory's mean (0 + 3 + 1.25 + 0) / 4
    m.remember(torch.tensor([7, 9]), 0)
    assert m.memory.indices.tolist() == [7, 9, 2, 1] and m.importance.tolist() == [0.0, 1.0625, 1.25, 0.0]


def test_importance_update_after_one_step_by_hand():
    """Memory [0, 1, 2, 3] with H = [0.4, -0.2, 1.0, 0.6], last losses [2, 1, 3, 0.5], slot 3 refilled since.
    After the step, the losses L' of the memory (eval mode, un-augmented) give dL = mean(L'[:3] - [2, 1, 3]),
    and the two drawn slots B get H_B - 0.1 (dL - mean(H_B) / 2); the others keep theirs."""
    m = clib(memory=4, batch=2)
    m.expose(list(range(3)))
    remember(m, 0, 1, 2, 3)
    h = torch.tensor([0.4, -0.2, 1.0, 0.6], dtype=torch.float64)
    m.importance = h.clone()
    m.losses = torch.tensor([2.0, 1.0, 3.0, 0.5])
    m.fresh = torch.tensor([False, False, False, True])
    torch.manual_seed(3)
    drawn = step(m)
    assert m.model.training  # the pass ran in eval mode and gave train mode back
    mem = m.memory.indices
    with torch.no_grad():
        m.model.eval()
        after = F.cross_entropy(m.model(normalize(m.data.train.images[mem], (0.1307,), (0.3081,))),
                                m.data.train_labels[mem], reduction="none")
        m.model.train()
    dl = float((after[:3] - torch.tensor([2.0, 1.0, 3.0])).mean())
    want = h.clone()
    want[drawn] = h[drawn] - 0.1 * (dl - float(h[drawn].mean()) / 2)
    assert torch.allclose(m.importance, want, atol=1e-6) and m.importance.dtype == torch.float64
    assert torch.allclose(m.losses, after) and not m.fresh.any()
    assert [g["lr"] for g in m.optimizer.param_groups] == [LR, LR]  # no per-step decay in clib


def test_intended_importance_step_divides_the_whole_change():
    m = clib(4, 2, 3, 4, "--as_intended")
    m.expose(list(range(3)))
    remember(m, 0, 1, 2, 3)
    h = torch.tensor([0.4, -0.2, 1.0, 0.6], dtype=torch.float64)
    m.importance, m.losses, m.fresh = h.clone(), torch.tensor([2.0, 1.0, 3.0, 0.5]), torch.zeros(4, dtype=torch.bool)
    drawn = step(m)
    dl = float((m.losses - torch.tensor([2.0, 1.0, 3.0, 0.5])).mean())
    want = h.clone()
    want[drawn] = h[drawn] - 0.1 * (dl - float(h[drawn].mean())) / 2
    assert torch.allclose(m.importance, want, atol=1e-6)


def drive(m, calls: int, rate) -> list[float]:
    """``calls`` training calls without training: call c (1, 2, ...) lowers every slot's loss by ``rate(c,
    high)``; the lr each call ran at."""
    lrs = []
    for _ in range(calls):
        lrs.append(m.optimizer.param_groups[0]["lr"])
        assert m.optimizer.param_groups[1]["lr"] == lrs[-1]
        c = m.train_count + 1
        m.losses = m.losses - rate(c, m.lr_is_high)
        m.adapt_lr()
    return lrs


def test_lr_alternates_every_10_calls_and_keeps_decreases_after_20():
    """Calls 1-10 at the high lr, 11-20 low (0.95 high), 21-30 high, ... The decrease of a phase (its
    slots' mean loss drop, slots refilled in it left out) is kept from the phase ending at call 30 on."""
    m = clib(memory=2)
    remember(m, 0, 1)
    m.losses = torch.tensor([100.0, 100.0])
    lrs = drive(m, 25, lambda c, high: torch.tensor([1.0, 1.0]) if high else torch.tensor([0.5, 0.5]))
    m.phase_fresh[1] = True  # slot 1 refilled during calls 26-30: its (huge) drop is left out
    lrs += drive(m, 5, lambda c, high: torch.tensor([1.0, 50.0]))
    assert m.decreases == {"high": [pytest.approx(10.0)], "low": []}
    lrs += drive(m, 16, lambda c, high: torch.tensor([1.0, 1.0]) if high else torch.tensor([0.5, 0.5]))
    assert m.decreases == {"high": [pytest.approx(10.0)], "low": [pytest.approx(5.0)]}
    low = 0.95 * LR
    assert lrs == [LR] * 10 + [low] * 10 + [LR] * 10 + [low] * 10 + [LR] * 6  # the lr of calls 1..46
    assert m.train_count == 46 and not m.phase_fresh.any()


@pytest.mark.parametrize("high_rate,direction", [(1.0, "up"), (0.2, "down")])
def test_welch_decision_moves_both_lrs(high_rate, direction):
    """Decreases of 10 high and 10 low phases (the lists are full at call 220): the high lr's larger ->
    p > 0.95 -> low = high, high = high / 0.95; smaller -> p < 0.05 -> high = low, low = low * 0.95. The
    lists restart, and the phase flips once more: call 220 ended a low phase, so the next runs at the low lr."""
    m = clib(memory=2)
    remember(m, 0, 1)
    m.losses = torch.tensor([1000.0, 1000.0])

    def rate(c: int, high: bool) -> torch.Tensor:
        return torch.full((2,), (high_rate if high else 0.5) + 0.01 * (c % 7))
    drive(m, 219, rate)
    assert (len(m.decreases["high"]), len(m.decreases["low"])) == (10, 9) and m.high_lr == LR
    drive(m, 1, rate)
    if direction == "up":
        assert (m.high_lr, m.low_lr) == (LR / 0.95, LR)
    else:
        assert (m.high_lr, m.low_lr) == (0.95 * LR, 0.95 * LR * 0.95)
    assert m.decreases == {"high": [], "low": []} and not m.lr_is_high
    assert [g["lr"] for g in m.optimizer.param_groups] == [m.low_lr] * 2


def test_head_growth_keeps_adams_moments():
    """After a step with one class, exposing a second keeps the weight row and its Adam moments and step;
    the new row's moments are zero, the bias ones padded too. The head's group restarts at --lr (the CLIB
    code adds it at Adam's initial lr); --as_intended keeps the current lr."""
    for extra, head_lr in [((), LR), (("--as_intended",), 1e-4)]:
        m = clib(4, 4, 3, 4, *extra)
        m.expose(list(range(1)))
        remember(m, 0, 3)
        step(m)
        m.set_lr(1e-4)
        old = m.model.fc
        st = {k: {n: v.clone() for n, v in m.optimizer.state[p].items()} for k, p in old.named_parameters()}
        m.expose(list(range(2)))
        new = m.model.fc
        assert new is not old and new.out_features == 2 and torch.equal(new.weight[:1], old.weight)
        assert old.weight not in m.optimizer.state and old.bias not in m.optimizer.state
        for k, p in new.named_parameters():
            s = m.optimizer.state[p]
            assert torch.equal(s["step"], st[k]["step"]) and float(s["step"]) == 1.0
            for moment in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(s[moment][:1], st[k][moment]) and not s[moment][1:].any()
        assert [g["lr"] for g in m.optimizer.param_groups] == [1e-4, head_lr]
        assert m.exposed == {0, 1} and m.n_out == 2
        step(m)  # Adam runs on the moved state
        assert float(m.optimizer.state[new.weight]["step"]) == 2.0


def test_steps_due_skips_a_memory_of_one_with_batchnorm1d():
    """mlp400 has a BatchNorm1d, which cannot train on a batch of one: the first sample's step is dropped."""
    m = clib(memory=4)
    counter = StepCounter(1.0)
    remember(m, 0)
    assert m.steps_due(counter, 1) == 0 and counter.counter == 0.0
    remember(m, 1)
    assert m.steps_due(counter, 1) == 1


def test_state_round_trip_continues_bit_identically():
    m = clib(memory=4, batch=2)
    m.expose(list(range(3)))
    for i in range(6):
        remember(m, i)
        if len(m.memory) > 1:
            step(m)
    m.adapt_lr()
    state = copy.deepcopy(m.state_dict())  # as the checkpoint file holds it
    assert state["extra"]["importance"].device.type == "cpu" and state["extra"]["train_count"] == 6
    b = clib(memory=4, batch=2)
    b.load_state_dict(state)
    for k, v in m.extra_state().items():
        w = b.extra_state()[k]
        assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w, k
    assert torch.equal(b.memory.indices, m.memory.indices) and b.exposed == m.exposed
    for x in (m, b):
        torch.manual_seed(7)
        remember(x, 7)
        step(x)
    assert torch.equal(m.importance, b.importance) and torch.equal(m.losses, b.losses)
    assert all(torch.equal(p, q) for p, q in zip(m.model.parameters(), b.model.parameters()))
