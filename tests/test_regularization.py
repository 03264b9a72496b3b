"""EWC/RWalk: the quadratic penalty, the Fisher pass and RWalk's step update against hand-computed
values; head exclusion; online (one replaced slot) vs offline (one slot per task); end-to-end runs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import main as rm_main
from methods.regularization import QuadraticPenalty, fisher_diagonal, reg_params
from tests.synthetic import synthetic_method, trainer_for

N_CLS, PER_CLS = 10, 10
HEAD = {"fc.weight", "fc.bias"}
BODY = ["input.lin.weight", "input.bn.weight", "input.bn.bias", "hidden1.lin.weight", "hidden1.bn.weight",
        "hidden1.bn.bias"]


def make(mode: str, *flags: str):
    """An EWC/RWalk method on 100 random 28x28 images (label = index % 10), memory 30."""
    argv = ["--mode", mode, "--memory_size", "30", "--transforms", *flags]
    return synthetic_method(argv, N_CLS, PER_CLS)


def test_penalty_hand_computed_slots_add_and_replace():
    w = nn.Parameter(torch.tensor([1.5, 0.0]))
    pen = QuadraticPenalty()
    assert pen({"w": w}) is None
    pen.add({"w": torch.tensor([2.0, 3.0])}, {"w": torch.tensor([1.0, -1.0])}, replace=False)
    val = pen({"w": w})  # 2 * 0.5^2 + 3 * 1^2
    assert val.item() == pytest.approx(3.5)
    assert torch.autograd.grad(val, w)[0].tolist() == pytest.approx([2.0, 6.0])  # 2 F (w - w*)
    pen.add({"w": torch.tensor([1.0, 1.0])}, {"w": torch.tensor([0.0, 0.0])}, replace=False)  # offline: 2 slots
    val = pen({"w": w})
    assert len(pen) == 2 and val.item() == pytest.approx(3.5 + 2.25)
    assert torch.autograd.grad(val, w)[0].tolist() == pytest.approx([2.0 + 3.0, 6.0])
    pen.add({"w": torch.tensor([1.0, 1.0])}, {"w": torch.tensor([0.0, 0.0])}, replace=True)  # online: 1 slot
    val = pen({"w": w})
    assert len(pen) == 1 and val.item() == pytest.approx(2.25)
    assert torch.autograd.grad(val, w)[0].tolist() == pytest.approx([3.0, 0.0])


def test_fisher_hand_computed_on_a_two_parameter_model():
    """logits = (w0 x, w1 x) with w = (1, -1): the predicted class is 0 for x > 0, else 1, and
    dCE/dw_j = (softmax_j - [j == pred]) x, averaged over the mini-batch."""
    model = nn.Linear(1, 2, bias=False)
    model.weight.data = torch.tensor([[1.0], [-1.0]])
    batches = [[1.0, 2.0], [-1.0, 0.5]]  # plus one sample the loader dropped: data size 5

    def grad_of(x: float) -> list[float]:
        p0 = 1 / (1 + math.exp(-2 * x))
        pred = 0 if x > 0 else 1
        return [(p0 - (pred == 0)) * x, (1 - p0 - (pred == 1)) * x]

    offset = [0.1, -0.2]  # the gradient of the current penalty, added to every mini-batch gradient
    expect = [0.0, 0.0]
    for b in batches:
        g = [sum(grad_of(x)[j] for x in b) / len(b) for j in range(2)]
        for j in range(2):
            expect[j] += (g[j] + offset[j]) ** 2 * 2 / 5
    xs = torch.tensor(batches).view(2, 2, 1)  # one chunk of K=2 mini-batches of B=2 samples
    fisher = fisher_diagonal(model, ["weight"], [xs], 5, {"weight": torch.tensor([[0.1], [-0.2]])})
    assert fisher["weight"].flatten().tolist() == pytest.approx(expect, rel=1e-5)
    split = fisher_diagonal(model, ["weight"], [xs[:, :1], xs[:, 1:]], 5)  # 1-sample batches, 2 chunks
    assert split["weight"].flatten().tolist() == pytest.approx(
        [sum(grad_of(x)[j] ** 2 for b in batches for x in b) / 5 for j in range(2)], rel=1e-5)


@pytest.mark.parametrize("fold", ["auto", "all"])
def test_head_is_excluded_and_the_method_fisher_matches_a_per_batch_loop(fold):
    m = make("ewc", "--stream_env", "online", "--grey_fold", fold)
    tr = trainer_for(m)
    tr.begin_task(0, torch.arange(60), torch.arange(100))
    assert list(reg_params(m.model)) == BODY  # the fresh head's weight and bias are not regularised
    tr.fit("stream", 1)
    m.update_memory(0)
    ((imp, anchor),) = m.penalty.slots
    assert set(imp) == set(anchor) == set(BODY) and not HEAD & set(imp)
    c = 3 if fold == "all" else 1  # auto: no fold for EWC (each slice is its own weight); all: one for 3
    assert m.model.input.lin.weight.shape[1] == 3 * 28 * 28 // c
    # recompute the memory-phase Fisher by hand: one batch of 16 from the 30 memory samples (14 dropped
    # but counted in the data size), training augmentation, eval mode, CE at the predicted label
    # plus the current penalty
    torch.manual_seed(7)
    got = m.fisher("memory")
    torch.manual_seed(7)
    batches = list(m.memory.indices[torch.randperm(30)][:16].view(1, 16))
    x = m.train_aug(m.data.train.images[torch.cat(batches)])
    params = reg_params(m.model)
    m.model.eval()
    expect = {n: torch.zeros_like(p) for n, p in params.items()}
    for b in range(len(batches)):
        logits = m.model(x[16 * b:16 * (b + 1)])
        loss = F.cross_entropy(logits, logits.argmax(1)) + m.reg_coef * m.penalty(params)
        for n, gr in zip(params, torch.autograd.grad(loss, list(params.values()))):
            expect[n] += gr ** 2 * 16 / 30
    expect["input.lin.weight"] /= c * c  # the folded weight's gradient is 3 times each slice's
    for n in BODY:
        assert torch.allclose(got[n], expect[n], rtol=1e-4, atol=1e-12), n


@pytest.mark.parametrize("mode", ["ewc", "rwalk"])
def test_online_replaces_one_slot_offline_adds_one_per_task(mode):
    m = make(mode, "--stream_env", "online", "--n_epoch", "1")
    tr = trainer_for(m)
    for t in range(2):
        tr.begin_task(t, torch.arange(50 * t, 50 * t + 50), torch.arange(100))
        tr.fit("stream", 1)
        assert len(m.penalty) == 1 and m.penalty_loss() is not None  # active in the memory epochs
        m.update_memory(t)
        tr.fit("memory", 1)
        assert len(m.penalty) == 1
        anchor = m.penalty.slots[0][1]
        assert all(torch.equal(anchor[n], p) for n, p in reg_params(m.model).items())
    assert m.n_calls == 4
    m = make(mode, "--stream_env", "offline", "--n_epoch", "1")
    tr = trainer_for(m)
    for t in range(3):
        tr.begin_task(t, torch.arange(30 * t, 30 * t + 30), torch.arange(100))
        tr.fit("offline", 1)
        m.update_memory(t)
        assert len(m.penalty) == t + 1


def test_rwalk_step_update_hand_computed():
    """The paper rule: per step max(0, -g dtheta / (0.5 F dtheta^2 + 1e-3)) with g the task loss's
    gradient (the penalty's taken out), F the EMA of its square, read before this step's update."""
    m = make("rwalk")
    m.score_rule = "paper"
    p = torch.tensor([1.0, 2.0])
    p.grad = torch.tensor([-0.5, -1.0])
    m.update_fisher_and_score({"w": p}, {"w": torch.tensor([0.9, 2.2])})  # dtheta = (0.1, -0.2), F = 0
    assert m.call_score["w"].tolist() == pytest.approx([0.05 / 1e-3, 0.0])  # -0.2 / 1e-3 < 0: set to zero
    assert m.fisher_ema["w"].tolist() == pytest.approx([0.25, 1.0])  # first update: F = g^2
    old, p = p.clone(), p + torch.tensor([0.2, 0.1])
    p.grad = torch.tensor([-1.0, 1.0])
    m.update_fisher_and_score({"w": p}, {"w": old})  # score uses the F before this step's update
    assert m.call_score["w"].tolist() == pytest.approx([50 + 0.2 / (0.5 * 0.25 * 0.04 + 1e-3), 0.0])
    assert m.fisher_ema["w"].tolist() == pytest.approx([0.5 * 0.25 + 0.5, 1.0])  # EMA, alpha 0.5
    # with a penalty 100 x sum A (w - m)^2: p.grad holds its gradient 200 A (old - m) = (0.4, 0.4) too
    m.penalty.add({"w": torch.tensor([0.01, 0.02])}, {"w": torch.tensor([1.0, 2.0])}, replace=False)
    old, p = p.clone(), p + torch.tensor([0.1, -0.1])  # old = (1.2, 2.1)
    p.grad = torch.tensor([-1.0, 0.5]) + torch.tensor([0.4, 0.4])  # the task's gradient (-1, 0.5) + the penalty's
    m.update_fisher_and_score({"w": p}, {"w": old})
    assert m.call_score["w"].tolist() == pytest.approx([
        83.3333333 + 0.1 / (0.5 * 0.625 * 0.01 + 1e-3), 0.05 / (0.5 * 1.0 * 0.01 + 1e-3)], rel=1e-6)
    assert m.fisher_ema["w"].tolist() == pytest.approx([0.5 * 0.625 + 0.5 * 1.0, 0.5 * 1.0 + 0.5 * 0.25])
    m.model = nn.Module()
    m.model.w, m.model.h1, m.model.h2 = nn.Parameter(p), nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    s1 = m.call_score["w"].clone()
    imp = m.importance(0, "stream")  # first call: score = the call's score; importance = F + score
    assert torch.allclose(imp["w"], m.fisher_ema["w"] + s1) and m.call_score == {}
    m.call_score = {"w": torch.tensor([10.0, 20.0])}
    imp = m.importance(0, "memory")  # later calls: mean of the previous score and the call's
    assert torch.allclose(imp["w"], m.fisher_ema["w"] + 0.5 * s1 + torch.tensor([5.0, 10.0]))
    # the public code's rule: no score (its snapshots alias the new values), the same EMA Fisher
    pub = make("rwalk")
    assert pub.score_rule == "public"
    q = torch.tensor([1.0, 2.0])
    q.grad = torch.tensor([0.5, -1.0])
    pub.update_fisher_and_score({"w": q}, None)
    assert pub.call_score == {} and pub.fisher_ema["w"].tolist() == pytest.approx([0.25, 1.0])


def test_rwalk_skips_the_first_step_then_tracks_squared_step_gradients():
    m = make("rwalk")
    m.before_task(0, torch.arange(100), torch.arange(100))
    x = m.train_aug(m.data.train.images[:16])
    y = m.data.train_labels[:16]
    m.train_step(x, y)
    assert m.fisher_ema == {}  # the public code's first step has no earlier gradient: no update
    m.train_step(x, y)
    params = reg_params(m.model)
    assert set(m.fisher_ema) == set(BODY)
    assert all(torch.equal(m.fisher_ema[n], params[n].grad.square()) for n in BODY)


@pytest.mark.parametrize("mode,stream_env,exp,trans", [("ewc", "online", "blurry10", []),
                                                       ("rwalk", "online", "blurry10", ["cutmix"]),
                                                       ("ewc", "offline", "disjoint", [])])
def test_end_to_end_on_mnist(mnist_dir: Path, tmp_path: Path, mode, stream_env, exp, trans):
    argv = ["--mode", mode, "--stream_env", stream_env, "--exp_name", exp, "--dataset", "mnist", "--n_epoch", "1",
            "--memory_size", "100", "--data_dir", str(mnist_dir), "--out_dir", str(tmp_path),
            "--device", "cpu", "--transforms", *trans]
    assert rm_main.main(argv) == 0
    (path,) = (tmp_path / "results" / "mnist").glob("*.json")
    res = json.loads(path.read_text())
    assert res["config"]["mem_manage_resolved"] == "reservoir"
    assert len(res["task_acc"]) == 5 and all(sum(c) == 100 for c in res["memory_class_counts"])
    vals = res["task_acc"] + res["task_acc_final"] + [res["A_last"], res["A_avg"], res["F_last"]]
    assert all(math.isfinite(v) for v in vals) and all(0 <= a <= 100 for a in res["task_acc"])
    assert all(math.isfinite(e["train_loss"]) for task in res["epochs"] for e in task)
    if exp == "disjoint":  # one epoch at lr/10 with a fresh head: the newest classes are learned
        assert sum(res["cls_acc"][-1][c] for c in res["task_classes"][-1]) / 2 > 50, res["cls_acc"][-1]
    else:  # 10 classes, chance 10%
        assert res["A_last"] > 20, res["task_acc"]


def test_grey_fold_all_runs_ewc_and_rwalk_folded_on_mnist(mnist_dir: Path, tmp_path: Path):
    """--grey_fold all: EWC/RWalk train one input weight for the 3 channels and still learn MNIST."""
    for mode in ("ewc", "rwalk"):
        out = tmp_path / mode
        argv = ["--mode", mode, "--dataset", "mnist", "--n_epoch", "1", "--memory_size", "100", "--data_dir",
                str(mnist_dir), "--out_dir", str(out), "--device", "cpu", "--transforms", "--grey_fold", "all"]
        assert rm_main.main(argv) == 0
        (path,) = (out / "results" / "mnist").glob("*.json")
        res = json.loads(path.read_text())
        assert res["config"]["grey_fold"] == "all" and res["A_last"] > 20, res["task_acc"]


def test_regularised_parameters_are_chosen_by_name_not_position():
    """Everything but the head ``fc``, wherever the head sits, and however many tensors it has."""
    class HeadFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)  # registered first: the last two tensors are the body's
            self.body = nn.Linear(3, 4)
            self.bn = nn.BatchNorm1d(4)
            self.frozen = nn.Linear(4, 4)
            self.frozen.requires_grad_(False)
    assert list(reg_params(HeadFirst())) == ["body.weight", "body.bias", "bn.weight", "bn.bias"]
    m = make("ewc", "--init_model")  # re-initialised models keep the initial head: fc.lin + fc.bn
    assert [n for n, _ in m.model.named_parameters() if n.startswith("fc.")] == ["fc.lin.weight", "fc.bn.weight",
                                                                                   "fc.bn.bias"]
    assert list(reg_params(m.model)) == BODY


def test_grey_fold_with_the_penalty_is_exact_without_weight_decay():
    """mlp400 on grey images: the folded model (one input weight = the sum of the 3 slices) with the
    penalty, its Fisher and RWalk's path-integral score in per-slice units follows the 3-channel model
    fed the image three times: 3 calls of 15 SGD steps (momentum, Nesterov), a Fisher slot and an
    RWalk importance after each call (float64, so rounding cannot grow)."""
    dev = _fold_penalty_run(weight_decay=0.0)
    assert max(dev.values()) < 1e-9, dev


def test_grey_fold_with_the_penalty_is_not_exact_with_weight_decay():
    """The public SGD's weight decay (1e-4) pulls each slice toward 0 by its own value, so the slices'
    drifts from the anchors differ: the Fisher's penalty offset and RWalk's score differ per slice and
    the fold only approximates the 3-channel model (why EWC/RWalk fold only with --grey_fold all)."""
    dev = _fold_penalty_run(weight_decay=1e-4)
    assert dev["fisher"] > 1e-7 and dev["rwalk"] > 1e-7, dev  # the slices' importances part
    assert max(dev.values()) < 1e-2, dev  # ... by little over 45 steps


def _fold_penalty_run(weight_decay: float) -> dict[str, float]:
    """Largest relative deviations of the folded run from the 3-channel run (float64)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _fold_penalty_steps(weight_decay)
    finally:
        torch.set_default_dtype(old)


def _fold_penalty_steps(weight_decay: float) -> dict[str, float]:
    from methods.regularization import fold_counts
    from models import build_model
    torch.manual_seed(0)
    full = build_model("mlp400", 10)
    torch.manual_seed(0)
    fold = build_model("mlp400", 10, grey_fold="sgd")
    assert fold_counts(fold) == {"input.lin.weight": 3} and fold_counts(full) == {}
    runs = []
    for m in (full, fold):
        rw = make("rwalk")
        rw.model, rw.score_rule = m, "paper"
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=weight_decay)
        runs.append((m, opt, QuadraticPenalty(), rw))
    gen = torch.Generator().manual_seed(1)
    reg = 50.0
    dev = {"fisher": 0.0, "rwalk": 0.0, "penalty": -1.0, "logits": 0.0, "weight": 0.0}

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()

    for call in range(3):
        for _ in range(15):
            x = torch.randn(16, 1, 28, 28, generator=gen)
            y = torch.randint(0, 10, (16,), generator=gen)
            values = []
            for m, opt, pen, rw in runs:
                m.train()
                params = reg_params(m)
                before = {n: p.detach().clone() for n, p in params.items()}
                opt.zero_grad()
                loss = F.cross_entropy(m(x.expand(-1, 3, -1, -1) if m is full else x), y)
                if len(pen):
                    values.append(pen(params))
                    loss = loss + reg * values[-1]
                loss.backward()
                opt.step()
                rw.update_fisher_and_score(params, before)
            if values and values[0].item() > 1e-12:  # the penalty value, as the 3 slices would have it
                dev["penalty"] = max(dev["penalty"], abs(values[0].item() - values[1].item()) / values[0].item())
        xs = torch.randn(2, 8, 1, 28, 28, generator=gen)
        imps = []
        for m, opt, pen, rw in runs:
            params = reg_params(m)
            names = list(params)
            offset = None
            if len(pen):
                offset = dict(zip(names, torch.autograd.grad(reg * pen(params), list(params.values()))))
            m.eval()
            fisher = fisher_diagonal(m, names, [xs.expand(-1, -1, 3, -1, -1) if m is full else xs], 20, offset)
            pen.add(fisher, {n: p.detach() for n, p in params.items()}, replace=False, folds=fold_counts(m))
            imps.append((fisher, rw.importance(call, "stream")))
        for n in BODY:  # every slice of the 3-channel model's importances against the folded per-slice one
            for k, key in enumerate(("fisher", "rwalk")):
                ref = imps[1][k][n]
                slices = imps[0][k][n].view(400, 3, 784).unbind(1) if n == "input.lin.weight" else [imps[0][k][n]]
                dev[key] = max(dev[key], *(rel(s, ref) for s in slices))
        assert imps[1][0]["input.lin.weight"].abs().sum() > 0 and imps[1][1]["input.lin.weight"].abs().sum() > 0
    assert dev["penalty"] >= 0, "the penalty values were never compared"
    x = torch.randn(32, 1, 28, 28, generator=gen)
    full.eval(), fold.eval()
    dev["logits"] = rel(fold(x), full(x.expand(-1, 3, -1, -1)))
    dev["weight"] = rel(fold.input.lin.weight, full.input.lin.weight.detach().view(400, 3, 784).sum(1))
    return dev


def test_rwalk_paper_score_refused_past_its_stable_range_and_stopped_before_it_diverges(mnist_dir: Path,
                                                                                          tmp_path: Path, capsys):
    """The paper's score reaches importances of 4-16 on MNIST (the Fisher: below 0.005), so at the public
    --reg_coef 100 Nesterov SGD diverges on the penalty: refused up front (exit 2, nothing written). Offline at
    reg_coef 1 the importances of two tasks' slots pass 27.14 / 2 / lr: the run stops after task 1's training,
    before the loss turns NaN, keeping task 0's checkpoint (exit 3). Online at 1 it trains, well above chance."""
    base = ["--mode", "rwalk", "--rwalk_score", "paper", "--dataset", "mnist", "--data_dir", str(mnist_dir),
            "--device", "cpu", "--transforms", "--rnd_seed", "1"]
    assert rm_main.main([*base, "--out_dir", str(tmp_path / "a")]) == 2
    assert "--rwalk_score paper with sgd needs --reg_coef x --lr <= 0.05" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    out = tmp_path / "b"
    assert rm_main.main([*base, "--reg_coef", "1", "--stream_env", "offline", "--out_dir", str(out),
                         "--run_name", "r"]) == 3
    log = (out / "logs" / "mnist" / "r.log").read_text()
    assert "the penalty after task 1's offline training is too stiff for SGD" in log and "loss nan" not in log
    assert "Start the run again with --reg_coef below" in log and (out / "checkpoints" / "mnist" / "r.pt").exists()
    out = tmp_path / "c"
    assert rm_main.main([*base, "--reg_coef", "1", "--out_dir", str(out), "--run_name", "r"]) == 0
    res = json.loads((out / "results" / "mnist" / "r.json").read_text())
    assert res["A_last"] > 30, res["task_acc"]
