"""DER++'s loss, EWC++'s online Fisher and MIR's retrieval against hand-computed values (SPEC section 12)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from methods.replay_rules import derpp_loss, ewcpp_update, mir_scores, mir_select


def test_derpp_loss_terms_by_hand():
    """Stream: logits [0, ln 3] for label 1 -> CE = ln(4/3). Memory draw 1: logits [1, 2, 5] against stored
    [1, 0] (2 columns then): MSE = (0 + 4) / 2 = 2. Draw 2: logits [ln 3, 0] for label 0 -> CE = ln(4/3).
    Total = ln(4/3) + 0.2 * 2 + 0.5 * ln(4/3)."""
    ce = math.log(4 / 3)
    total, parts = derpp_loss(torch.tensor([[0.0, math.log(3)]]), torch.tensor([1]),
                              torch.tensor([[1.0, 2.0, 5.0]]), torch.tensor([[1.0, 0.0]]),
                              torch.tensor([[math.log(3), 0.0]]), torch.tensor([0]))
    assert parts["ce"].item() == pytest.approx(ce) and parts["mse"].item() == pytest.approx(2.0)
    assert parts["ce_buffer"].item() == pytest.approx(ce)
    assert total.item() == pytest.approx(1.5 * ce + 0.4)
    # rows stored at different head sizes: row 0 matched on 1 column ((1-1)^2), row 1 on 2 ((0-3)^2 + (2-0)^2)
    _, parts = derpp_loss(torch.tensor([[0.0, math.log(3)]]), torch.tensor([1]),
                          torch.tensor([[1.0, 7.0, 5.0], [0.0, 2.0, 9.0]]), torch.tensor([[1.0, 0.0], [3.0, 0.0]]),
                          torch.tensor([[math.log(3), 0.0]]), torch.tensor([0]), width=torch.tensor([1, 2]))
    assert parts["mse"].item() == pytest.approx((0.0 + 9.0 + 4.0) / 3)


def test_ewcpp_online_fisher_by_hand():
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    b = nn.Parameter(torch.tensor([0.5]))
    fisher: dict[str, torch.Tensor] = {}
    w.grad = torch.tensor([2.0, 1.0])
    assert ewcpp_update(fisher, {"w": w, "b": b}) == 1  # b has no gradient
    assert fisher["w"].tolist() == [4.0, 1.0]  # the first update: g^2
    assert w.grad.tolist() == [4.0, 1.0]  # the spent gradient squared where it lies ...
    assert fisher["w"].data_ptr() != w.grad.data_ptr()  # ... and the Fisher in memory of its own
    w.grad = torch.tensor([0.0, 3.0])
    ewcpp_update(fisher, {"w": w, "b": b})
    assert fisher["w"].tolist() == [0.5 * 4.0, 0.5 * 1.0 + 0.5 * 9.0]
    w.grad = None  # the CLIB code reads the gradients after zero_grad(): nothing changes
    assert ewcpp_update(fisher, {"w": w, "b": b}) == 0 and fisher["w"].tolist() == [2.0, 5.0]



def test_mir_scores_and_selection_by_hand():
    """A bias-free linear model: the virtual step is W' = W - lr (softmax(xW^T) - onehot(y))^T x / n,
    written out here; the candidates' CE after it minus now, and the 2 most interfered are taken."""
    model = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]))
    x, y = torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([0, 0])
    cand_x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]])
    cand_y = torch.tensor([0, 1, 2, 0])
    lr = 0.5
    w = model.weight.detach()
    p = torch.softmax(x @ w.T, 1)
    g = (p - F.one_hot(y, 3).float()).T @ x / 2
    w2 = w - lr * g
    expect = (F.cross_entropy(cand_x @ w2.T, cand_y, reduction="none")
              - F.cross_entropy(cand_x @ w.T, cand_y, reduction="none"))
    scores = mir_scores(model, x, y, cand_x, cand_y, lr)
    assert torch.allclose(scores, expect, atol=1e-6)
    assert torch.equal(model.weight.detach(), w)  # the model is untouched
    picked = mir_select(scores, 2)
    assert picked.tolist() == torch.argsort(-expect)[:2].tolist()
    assert 1 in picked.tolist()  # training on class 0 hurts the class-1 candidate most
    assert mir_select(scores, 10).tolist() == torch.argsort(-expect).tolist()


def test_mir_batch_norm_drift_only_in_the_public_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    cx, cy = torch.randn(5, 3) + 3.0, torch.randint(0, 2, (5,))
    before = model[1].running_mean.clone()
    mir_scores(model, x, y, cx, cy, 0.1, bn_drift=False)
    assert torch.equal(model[1].running_mean, before)
    mir_scores(model, x, y, cx, cy, 0.1, bn_drift=True)
    # the CLIB code's drift: momentum 0.1, once with the stream batch, once with the candidates (the
    # virtually stepped model is a deep copy, so its pass moves a copy)
    with torch.no_grad():
        expect = 0.9 * (0.9 * before + 0.1 * model[0](x).mean(0)) + 0.1 * model[0](cx).mean(0)
    assert torch.allclose(model[1].running_mean, expect, atol=1e-6)
