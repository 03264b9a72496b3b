"""The compiled training step (methods.engine.graph_step): equal to the eager step within a stated tolerance, rebuilt
whenever the head, the model or the trained parameters change, eager at other batch shapes; --compile and --amp
checked and run end to end."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from main import main
from methods.engine.graph_step import GraphStep, compile_engine
from methods.engine.trainer import Settings, Trainer
from tests.synthetic import synthetic_method

# after 12 SGD steps with cutmix (mlp400, batch 16), compiled (inductor's C++ kernels, which reorder the float
# reductions) against eager: the measured worst differences were about 1e-6 in the losses and 2e-7 in the weights
LOSS_RTOL = 1e-4
WEIGHT_ATOL = 1e-5


def two_methods(engine: str | None, mode: str = "rm"):
    """The same method twice, same weights and head, on the same synthetic data: eager, and with ``engine``."""
    out = []
    for _ in range(2):
        torch.manual_seed(0)
        m = synthetic_method(["--mode", mode, "--dataset", "mnist", "--transforms", "cutmix", "--compile", "off"],
                             n_cls=4, per_cls=40)
        torch.manual_seed(1)
        m.before_task(0, torch.arange(160), torch.arange(160))
        out.append(m)
    eager, graph = out
    graph.model.load_state_dict(eager.model.state_dict())
    graph.build_optimizer()
    if engine is not None:
        graph.graph = GraphStep(engine, graph.graph_sizes(), torch.device("cpu"))
    return eager, graph


def steps(m, xs, ys) -> list[float]:
    """Training steps on the batches, with the numpy/torch random state (cutmix's draws) reset first."""
    np.random.seed(0)
    torch.manual_seed(0)
    m.model.train()
    return [float(m.train_step(x, y)[0].detach()) for x, y in zip(xs, ys)]


def batches(n: int, size: int = 16) -> tuple[list, list]:
    g = torch.Generator().manual_seed(5)
    xs = [torch.randn(size, 1, 28, 28, generator=g) for _ in range(n)]
    ys = [torch.randint(0, 4, (size,), generator=g) for _ in range(n)]
    return xs, ys


def test_compiled_step_equals_the_eager_step_within_tolerance(one_thread):
    """inductor on the CPU (fused C++ kernels) against the eager step, 12 steps with cutmix half the time."""
    eager, graph = two_methods("inductor")
    xs, ys = batches(12)
    le, lg = steps(eager, xs, ys), steps(graph, xs, ys)
    assert graph.graph.steps == 12 and graph.graph.builds == 1
    assert np.allclose(lg, le, rtol=LOSS_RTOL, atol=0), (le, lg)
    worst = max(float((a - b).detach().abs().max()) for a, b in zip(eager.model.parameters(),
                                                                    graph.model.parameters()))
    print(f"compiled vs eager after 12 steps: losses {max(abs(a - b) for a, b in zip(le, lg)):.2e}, "
          f"weights {worst:.2e}")
    assert worst <= WEIGHT_ATOL
    changed = max(float((a - b).detach().abs().max()) for a, b in zip(eager.model.parameters(),
                                                               two_methods(None)[0].model.parameters()))
    assert changed > 100 * WEIGHT_ATOL  # the steps did move the weights


def test_a_new_head_model_or_frozen_layer_is_rebuilt_never_stale(one_thread):
    """Every change that a stale graph would get wrong: a wider head, a same-size head with new weights, a whole
    new model, a frozen layer; and a partial batch, which runs eagerly. Each step's logits are the eager
    model's on the same input (taken before the step updates the weights)."""
    _, m = two_methods("aot_eager")
    m.cutmix = False  # the logits are those of x itself
    g = m.graph
    xs, ys = batches(6)

    def step_matches(x, y) -> torch.Tensor:
        want = copy.deepcopy(m.model)(x).detach()
        m.optimizer.zero_grad(set_to_none=True)
        logits = m.train_step(x, y)[1].detach()
        assert logits.shape == want.shape and torch.allclose(logits, want, atol=1e-5), (logits - want).abs().max()
        return logits

    m.model.train()
    step_matches(xs[0], ys[0])
    assert (g.builds, g.steps) == (1, 1)
    step_matches(xs[1], ys[1])
    assert (g.builds, g.steps) == (1, 2)  # same shapes, same head: the same graph
    m.replace_head(6)
    m.build_optimizer()
    assert step_matches(xs[2], ys[2]).shape[1] == 6 and g.builds == 2
    m.model.fc = nn.Linear(m.model.fc.in_features, 6)  # same size, new weights (gdumb re-initialises)
    m.build_optimizer()
    step_matches(xs[3], ys[3])
    assert g.builds == 3
    m.model = m.new_model(6)  # a whole new model (--init_model)
    m.build_optimizer()
    m.model.train()
    step_matches(xs[4], ys[4])
    assert g.builds == 4
    first = next(m.model.parameters())
    first.requires_grad_(False)
    before = first.clone()
    step_matches(xs[5], ys[5])
    assert g.builds == 5 and torch.equal(first, before)  # frozen: rebuilt, and not trained
    step_matches(xs[0][:10], ys[0][:10])  # the last partial batch: eager
    assert (g.builds, g.steps) == (5, 6)
    step_matches(xs[1][:8], ys[1][:8])  # RM's half batch (its memory epochs): a graph of its own, same function
    assert (g.builds, g.steps) == (5, 7) and g.sizes == (16, 8)


class Breaks(nn.Module):
    """A model dynamo cannot capture whole (a graph break in its forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._dynamo.graph_break()
        return self.fc(x)


def test_auto_turns_a_failing_graph_off_loudly_and_goes_on_eagerly(caplog):
    """--compile auto: a step that cannot be compiled is computed eagerly (the same loss), logged, and the graphs stay
    off for the run; an explicit engine raises instead."""
    model, x, y = Breaks(), torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    g = GraphStep("aot_eager", (8,), torch.device("cpu"), strict=False)
    with caplog.at_level("WARNING", logger="rm"):
        loss, logits = g(model, x, y, y, 1.0)
    assert torch.allclose(loss, F.cross_entropy(model(x), y)) and logits.shape == (8, 3)
    assert g.failed is not None and g.failed.startswith("Unsupported"), g.failed
    assert "this run's steps are eager from here" in caplog.text
    assert not g.takes(x) and g.steps == 0
    assert g.report() == f"0 steps through 1 build(s) (aot_eager); the rest eager; turned off: {g.failed}"
    with pytest.raises(Exception):
        GraphStep("aot_eager", (8,), torch.device("cpu"))(model, x, y, y, 1.0)


def test_the_engines_the_flag_names():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_engine("auto", cpu) is None and compile_engine("auto", cuda) == "graphs"
    assert compile_engine("off", cuda) is None and compile_engine("inductor", cpu) == "inductor"
    with pytest.raises(ValueError, match="needs CUDA"):
        GraphStep("graphs", (16,), cpu)
    m = synthetic_method(["--mode", "ewc", "--dataset", "mnist", "--compile", "inductor"], n_cls=4, per_cls=10)
    assert m.graph is None  # its own step (the penalty): eager
    m = synthetic_method(["--mode", "finetune", "--dataset", "mnist", "--compile", "inductor"], n_cls=4, per_cls=10)
    assert m.graph is not None and m.graph.engine == "inductor"
    m = synthetic_method(["--mode", "rm", "--dataset", "mnist"], n_cls=4, per_cls=10)
    assert m.graph is None  # auto on the CPU: eager, the numbers unchanged


@pytest.mark.parametrize("flags, msg", [(["--compile", "graphs"], "--compile graphs replays CUDA graphs"),
                                        (["--decode_device", "cuda"], "--decode_device cuda decodes JPEGs on the")])
def test_gpu_only_flags_on_the_cpu_are_refused(tmp_path, capsys, flags, msg):
    code = main([*flags, "--device", "cpu", "--data_dir", str(tmp_path), "--out_dir", str(tmp_path)])
    assert code == 2 and msg in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def run(data_dir, out, *extra) -> dict:
    argv = ["--mode", "rm", "--dataset", "fashion_mnist", "--data_dir", str(data_dir), "--out_dir", str(out),
            "--run_name", "r", "--exp_name", "blurry10", "--memory_size", "200", "--n_epoch", "3", *extra]
    assert main(argv) == 0
    return json.loads((out / "results" / "fashion_mnist" / "r.json").read_text())


def test_amp_bf16_learns_like_fp32_and_compiled_ewc_is_noted(fashion_dir, tmp_path, one_thread):
    """Real Fashion-MNIST (300 per class): bf16 autocast trains to the fp32 run's accuracy within a few points,
    far above chance (10%); --compile with a method of its own step runs and says it stays eager."""
    fp32 = run(fashion_dir, tmp_path / "fp32")
    bf16 = run(fashion_dir, tmp_path / "bf16", "--amp", "bf16")
    print(f"A_last/A_avg fp32 {fp32['A_last']:.2f}/{fp32['A_avg']:.2f}, bf16 {bf16['A_last']:.2f}/{bf16['A_avg']:.2f}")
    assert fp32["A_last"] > 40 and bf16["A_last"] > 40 and abs(bf16["A_avg"] - fp32["A_avg"]) < 5
    out = tmp_path / "ewc"
    assert main(["--mode", "ewc", "--dataset", "fashion_mnist", "--data_dir", str(fashion_dir), "--out_dir",
                 str(out), "--run_name", "r", "--n_epoch", "1", "--memory_size", "100", "--compile", "inductor",
                 "--debug"]) == 0
    log = next((out / "logs").rglob("*.log")).read_text()
    assert "--mode ewc trains with its own step, which runs eagerly" in log


def sgd_step(model, opt, graph, x, y, yb, lam) -> float:
    """One step of the mixed loss: eager (``graph`` None) or through the graph; its loss."""
    opt.zero_grad(set_to_none=True)
    if graph is None:
        logits = model(x)
        loss = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, yb)
    else:
        loss = graph(model, x, y, yb, lam)[0]
    loss.backward()
    opt.step()
    return float(loss.detach())


def fifty_steps(engine: str, dev: torch.device, n: int = 50, timed: bool = True) -> tuple[float, float, float, float]:
    """resnet18, batch 16, 32x32, SGD as the project runs it: ``n`` steps through ``engine``'s graph, each checked
    against an eager step from the same weights and optimizer state on the same batch (a trajectory cannot be
    compared: training amplifies float rounding, 1e-7 grows to 1e-3 in three steps of eager against eager);
    half the steps mixed (cutmix's lambda 0.6), half plain. Returns the worst relative loss difference, the worst
    weight difference, and eager and graph seconds per step (after the comparison, 40 steps each)."""
    import time

    from main import set_seed
    from methods.engine.optim import make_optimizer
    from models import build_model

    def fresh():
        set_seed(0)
        model = build_model("resnet18", 10, 3, 32).to(dev).train()
        return model, make_optimizer("sgd", 0.05, model, "cos")[0]

    g = torch.Generator(device=dev).manual_seed(0)
    xs = [torch.randn(16, 3, 32, 32, device=dev, generator=g) for _ in range(n)]
    ys = [torch.randint(0, 10, (16,), device=dev, generator=g) for _ in range(n)]
    (em, eo), (gm, go) = fresh(), fresh()
    graph = GraphStep(engine, (16,), dev)
    worst_loss = worst_w = 0.0
    for i, (x, y) in enumerate(zip(xs, ys)):
        em.load_state_dict(gm.state_dict())
        eo.load_state_dict(copy.deepcopy(go.state_dict()))  # a copy: load_state_dict would share the buffers
        lam, yb = (0.6, y.roll(1)) if i % 2 else (1.0, y)
        le, lg = sgd_step(em, eo, None, x, y, yb, lam), sgd_step(gm, go, graph, x, y, yb, lam)
        worst_loss = max(worst_loss, abs(le - lg) / abs(le))
        worst_w = max(worst_w, max(float((a - b).detach().abs().max()) for a, b in zip(em.parameters(),
                                                                                     gm.parameters())))
    assert graph.builds == 1 and graph.steps == n
    times = []
    for model, opt, gr in ((em, eo, None), (gm, go, graph)) if timed else ():
        for i in range(50):
            if i == 10:
                torch.cuda.synchronize(dev) if dev.type == "cuda" else None
                t0 = time.perf_counter()
            sgd_step(model, opt, gr, xs[i % n], ys[i % n], ys[i % n].roll(1), 0.6)
        torch.cuda.synchronize(dev) if dev.type == "cuda" else None
        times.append((time.perf_counter() - t0) / 40)
    return worst_loss, worst_w, *(times or [0.0, 0.0])


def test_fifty_steps_check_on_the_cpu(one_thread):
    """The CUDA check's procedure, on the CPU through dynamo + AOT autograd without code generation (a few steps)."""
    loss, w, _, _ = fifty_steps("aot_eager", torch.device("cpu"), n=3, timed=False)
    assert loss < 1e-5 and w < 1e-6, (loss, w)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("engine", ["graphs", "inductor"])
def test_cuda_50_captured_steps_match_50_eager_steps(engine):
    """50 captured steps, each within tolerance of the eager step; prints both step times (not asserted)."""
    loss, w, te, tg = fifty_steps(engine, torch.device("cuda"))
    print(f"{engine}: {1e3 * tg:.2f} ms/step vs eager {1e3 * te:.2f} ms/step ({te / tg:.2f}x); over 50 steps, each "
          f"from the same state: worst loss difference {loss:.1e} (relative), worst weight difference {w:.1e}")
    assert loss < 1e-3 and w < 1e-4, (loss, w)


def er_run(engine: str | None, compile_flag: str = "off", train: bool = True):
    """er on a synthetic i-Blurry stream (4 classes appearing one after another, 40 samples each), sample-wise,
    batch 16 (temporary batch 8), cutmix: eager, or its steps through ``engine`` (``train`` False: untrained)."""
    torch.manual_seed(0)
    m = synthetic_method(["--mode", "er", "--dataset", "mnist", "--exp_name", "iblurry50_10", "--transforms",
                          "cutmix", "--compile", compile_flag, "--eval_period", "0"], n_cls=4, per_cls=40)
    if engine is not None:
        m.graph = GraphStep(engine, m.graph_sizes(), torch.device("cpu"))
    stream = torch.cat([torch.arange(c, 160, 4) for c in range(4)])  # class by class: the head grows 4 times
    np.random.seed(0)
    torch.manual_seed(1)
    if train:
        Trainer(m, m.data, [(stream, torch.arange(160))], Settings.from_config(m.cfg)).run_task(0)
    return m


def test_er_runs_its_whole_batches_through_the_graph_only_when_asked(one_thread, monkeypatch):
    """er's step is the base step (its lr decay the after_step hook): through the graph (aot_eager: dynamo and AOT
    autograd, eager kernels) the sample-wise run's whole batches take the graph, rebuilt at each head growth, and
    the run ends with the eager run's lr and, within 2% of how far the run moved them, its weights (Adam moves a
    weight whose gradient is near 0 by about lr whatever its sign: 160 steps amplify rounding; the 12-step check
    above bounds one step's); --compile auto leaves er eager where it compiles rm's step."""
    eager, graph = er_run(None), er_run("aot_eager")
    g = graph.graph
    # 160 samples, online_iter 1: 160 steps, 8 per temporary batch of 8; the first batch's 8 are partial (no memory
    # yet: 8 samples), the rest 16
    assert (g.steps, g.builds) == (152, 4), g.report()
    def furthest(a: nn.Module, b: nn.Module) -> float:
        return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters())
                   if p.shape == q.shape)

    worst, moved = furthest(eager.model, graph.model), furthest(eager.model, er_run(None, train=False).model)
    print(f"er through aot_eager vs eager after 160 steps: weights {worst:.2e} apart, moved {moved:.2e}")
    assert worst <= 0.02 * moved and moved > 1e-2, (worst, moved)
    assert graph.optimizer.param_groups[0]["lr"] == eager.optimizer.param_groups[0]["lr"] < graph.cfg.lr
    monkeypatch.setattr("methods.base.compile_engine", lambda choice, device: "aot_eager")  # auto as on CUDA
    made = {(mode, flag): synthetic_method(["--mode", mode, "--dataset", "mnist", "--compile", flag], 2, 4).graph
            for mode in ("er", "rm") for flag in ("auto", "inductor")}
    assert made[("er", "auto")] is None and None not in (made[("er", "inductor")], made[("rm", "auto")])
