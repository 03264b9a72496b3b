"""The learning rate of every epoch of a 256-epoch call on the memory, against the public code's loop
and against the closed form of cosine warm restarts (T_0 = 1, T_mult = 2), value by value."""
from __future__ import annotations

import math

import pytest
import torch

from methods.engine.optim import make_optimizer
from tests.synthetic import synthetic_method, trainer_for

LR, EPOCHS = 0.05, 256


def public_loop(calls: list[int]) -> list[list[float]]:
    """The public code's train(): one optimizer and scheduler per task (before_task), then per call
    ``for epoch in range(n_epoch)``: epoch 0 at lr/10, epoch 1 at lr, else scheduler.step()."""
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, nesterov=True, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=1, T_mult=2, eta_min=LR * 0.01)
    out = []
    for n_epoch in calls:
        lrs = []
        for epoch in range(n_epoch):
            if epoch <= 0:
                for g in opt.param_groups:
                    g["lr"] = LR * 0.1
            elif epoch == 1:
                for g in opt.param_groups:
                    g["lr"] = LR
            else:
                sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        out.append(lrs)
    return out


def closed_form(epoch: int) -> float:
    """Epoch e >= 2 of a call is scheduler step s = e - 1: restarts after steps 1, 3, 7, 15, ...
    (periods 1, 2, 4, ...), lr = eta_min + (lr - eta_min) (1 + cos(pi T_cur / T_i)) / 2."""
    if epoch == 0:
        return LR * 0.1
    if epoch == 1:
        return LR
    s, period = epoch - 1, 1
    while s >= period:
        s -= period
        period *= 2
    eta = LR * 0.01
    return eta + (LR - eta) * (1 + math.cos(math.pi * s / period)) / 2


def test_closed_form_by_hand():
    # steps 1..3: restart at 1 (T_cur 0 of period 2), then T_cur 1 of 2: the cosine's midpoint
    assert [closed_form(e) for e in range(5)] == pytest.approx([0.005, 0.05, 0.05, 0.02525, 0.05])
    assert closed_form(255) == pytest.approx(0.0005 + 0.0495 * (1 + math.cos(math.pi * 127 / 128)) / 2)


def test_a_256_epoch_memory_call_follows_the_public_schedule():
    """The online task: the stream pass (1 epoch) and 256 epochs on the memory share one optimizer
    and scheduler, as in the public code; ours logs the lr each epoch ran at."""
    m = synthetic_method(["--mode", "rm", "--memory_size", "8", "--transforms", "--n_epoch", str(EPOCHS),
                          "--eval_epochs", "last_task"], n_cls=2, per_cls=8)
    tr = trainer_for(m)
    tr.tasks = [(torch.arange(16), torch.arange(16))] * 2  # task 0 of 2: only the last epoch is evaluated
    tr.evaluate = lambda idx: {"avg_acc": 0.0, "avg_loss": 0.0, "cls_acc": []}
    tr.begin_task(0, torch.arange(16), torch.arange(16))
    stream = tr.fit("stream", 1)
    m.update_memory(0)
    memory = tr.fit("memory", EPOCHS)
    ours = [[e["lr"] for e in stream.epochs], [e["lr"] for e in memory.epochs]]
    public = public_loop([1, EPOCHS])
    assert ours == public  # value by value, exactly
    assert public[1] == pytest.approx([closed_form(e) for e in range(EPOCHS)], rel=1e-12)
    # warm restarts at epochs 2 (at the same lr as epoch 1), 4, 8, ..., 128: the last epoch (255)
    # is step 127 of a 128-epoch cosine, one step before its minimum
    restarts = [e for e in range(2, EPOCHS) if public[1][e] == pytest.approx(LR) and public[1][e - 1] < LR]
    assert restarts == [4, 8, 16, 32, 64, 128]


def test_make_optimizer_is_the_public_optimizer():
    model = torch.nn.Linear(2, 2)
    opt, sched = make_optimizer("sgd", LR, model, "cos")
    g = opt.param_groups[0]
    assert (g["momentum"], g["nesterov"], g["weight_decay"], g["lr"]) == (0.9, True, 1e-4, LR)
    assert (sched.T_0, sched.T_mult, sched.eta_min) == (1, 2, LR * 0.01)
