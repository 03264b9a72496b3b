"""The engine's optimizers (torch.optim's own, without the torch._dynamo import) and its fused EWC penalty,
against torch's and autograd's own paths, bit for bit."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from methods.engine.optim import Adam, clip_grad_norm_unfolded, make_optimizer
from methods.replay_rules import EWCPenalty
from models.mlp import ScaleValue

ROOT = Path(__file__).resolve().parents[1]


def _train(opt_name: str, engine: bool, steps: int = 6) -> tuple[list[torch.Tensor], dict]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))
    if engine:
        opt, sch = make_optimizer(opt_name, 0.05, model, "cos")
    else:  # the same settings on torch.optim's classes
        kw = {"sgd": dict(momentum=0.9, nesterov=True, weight_decay=1e-4, fused=True),
              "adam": dict(weight_decay=1e-6, fused=True), "radam": dict(weight_decay=1e-5, foreach=True)}
        cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "radam": torch.optim.RAdam}[opt_name]
        opt = cls(model.parameters(), lr=0.05, **kw[opt_name])
        sch = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=1, T_mult=2, eta_min=0.05 * 0.01)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    for s in range(steps):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sch.step()
        if s == 2:  # a checkpoint's round trip halfway
            opt.load_state_dict(opt.state_dict())
    return [p.detach().clone() for p in model.parameters()], opt.state_dict()


def test_engine_optimizers_step_as_torch_optim_does_bit_for_bit():
    for name in ("sgd", "adam", "radam"):
        mine, mine_state = _train(name, engine=True)
        theirs, their_state = _train(name, engine=False)
        assert all(torch.equal(a, b) for a, b in zip(mine, theirs)), name
        assert mine_state["param_groups"] == their_state["param_groups"], name


def test_the_engine_adam_calls_the_fused_kernel_itself_only_where_torch_would():
    """A plain fused Adam steps by torch's two calls (the bit-for-bit test above runs it); amsgrad, a tensor learning
    rate, the foreach kernel, or a parameter without state yet take torch's step."""
    def plan(**kw) -> bool:
        torch.manual_seed(0)
        m = nn.Linear(3, 2)
        opt = Adam(m.parameters(), **{"lr": 1e-3, "fused": True, **kw})
        m(torch.randn(4, 3)).sum().backward()
        fresh = opt._fused_plan() is not None  # no state yet: torch's step initialises it
        opt.step()
        return not fresh and opt._fused_plan() is not None
    assert plan()
    assert not plan(amsgrad=True) and not plan(lr=torch.tensor(1e-3)) and not plan(fused=None, foreach=True)


def test_a_run_of_the_engine_never_imports_torch_dynamo():
    """torch.optim's dynamo guards import torch._dynamo (about 1 s) on their first call; the engine's don't."""
    code = ("import sys, torch; from torch import nn; from methods.engine.optim import make_optimizer, Adam\n"
            "m = nn.Linear(3, 2); opt, sch = make_optimizer('sgd', 0.1, m, 'cos'); a = Adam(m.parameters(), lr=1e-3)\n"
            "for o in (opt, a):\n"
            "    o.zero_grad(); m(torch.randn(4, 3)).sum().backward(); o.step(); o.load_state_dict(o.state_dict())\n"
            "sch.step(); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_clip_skips_no_gradient_that_torch_would_change():
    """Below the limit torch multiplies every gradient by exactly 1.0; the engine leaves them as they are, and
    above it scales them as torch does, bit for bit."""
    for limit in (1e-3, 1e3):
        torch.manual_seed(1)
        a, b = nn.Linear(6, 4), nn.Linear(6, 4)
        b.load_state_dict(a.state_dict())
        x = torch.randn(5, 6)
        for m in (a, b):
            m(x).square().sum().backward()
        na = clip_grad_norm_unfolded(a, limit)
        nb = torch.nn.utils.clip_grad_norm_(b.parameters(), limit)
        assert torch.equal(na, nb)
        assert all(torch.equal(p.grad, q.grad) for p, q in zip(a.parameters(), b.parameters()))


def test_ewc_penalty_equals_autograds_graph_of_the_same_expression_bit_for_bit():
    torch.manual_seed(2)
    shapes = [(7, 5), (7,), (3, 7)]
    counts = [3, 1, 1]  # the first stands for 3 slices (mlp400's Adam fold)
    ps = [torch.randn(s, requires_grad=True) for s in shapes]
    anchors = [p.detach() + 0.1 * torch.randn_like(p) for p in ps]
    fishers = [torch.rand_like(p) * 1e-2 for p in ps]
    extra = torch.randn(())  # the rest of the loss, so the upstream gradient is not 1

    pen = EWCPenalty.apply(100.0, fishers, anchors, counts, *ps)
    (pen * extra).backward()
    mine = [p.grad.clone() for p in ps]
    for p in ps:
        p.grad = None
    terms = [(f * (p - a).square()).sum() for f, p, a in zip(fishers, ps, anchors)]
    want = 100.0 * sum(ScaleValue.apply(t, c) if c != 1 else t for t, c in zip(terms, counts))  # as ewc++ did
    (want * extra).backward()
    assert torch.equal(pen.detach(), want.detach())
    assert all(torch.equal(g, p.grad) for g, p in zip(mine, ps))
