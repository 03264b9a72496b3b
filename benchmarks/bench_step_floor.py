"""What a training step of mlp400 costs with no Python around it: the steps of four online methods (er, der++,
ewc++, bic), each eager and compiled whole (torch.compile, inductor: no per-operator dispatch, elementwise work
fused), against the step's matrix products and optimizer kernel alone; and the forward pass over the whole memory
that clib adds after every step. The sample-wise protocol's floor on a machine (issue 26's "arithmetic it cannot
avoid").

  python benchmarks/bench_step_floor.py                 # batch 16, 10 classes, 2 threads, every method
  python benchmarks/bench_step_floor.py --batch 16 --rounds 7 --steps 500 --methods er,bic

Every step runs on mlp400 with the Adam fold (models.mlp) and grey 28x28 images, and ends with one fused Adam step
(lr 3e-4, no weight decay; eager in both variants: only the loss function is compiled, fullgraph, static shapes):
- er (the CLIB code's er): cutmix's mixed cross-entropy on --batch images, the backward pass, Adam.
- der++: one forward pass over --batch // 2 * 3 images (the stream's half batch, then two memory draws of the same
  size); cross-entropy on the first third, 0.2 x the masked MSE between the second third's logits and stored ones,
  0.5 x cross-entropy on the last third; no cutmix.
- ewc++: er's step plus reg_coef (100) x sum F (p - p*)^2 over the body's parameters (all but the head), then after
  Adam the online Fisher update F <- 0.5 F + 0.5 g^2 (compiled too in the compiled variant).
- bic (the CLIB form): er's step plus knowledge distillation (methods.distill.kd_loss, T = 2) against a frozen
  teacher mlp400 run on the same batch, and gradient clipping (norm 10, torch's clip_grad_norm_) before Adam.
The last lines give each method's floor for a run: --run_steps steps at the compiled step's time (the eager one's
with --no_compile). Rounds alternate the variants, so that a shared machine's noise falls on all of them; each figure
is the median of the rounds, in microseconds per step."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from methods.distill import kd_loss  # noqa: E402
from models import build_model  # noqa: E402

METHODS = ("er", "der++", "ewc++", "bic")
Step = Callable[[], None]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--classes", type=int, default=10, help="the head's outputs")
    p.add_argument("--steps", type=int, default=500, help="steps per round and variant")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--memory", type=int, default=500, help="the memory that clib's importance pass scores")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of the method steps to time")
    p.add_argument("--run_steps", type=int, default=10000, help="steps of a run, for the floor of a run")
    p.add_argument("--no_compile", action="store_true", help="skip the compiled steps (no C++ compiler)")
    p.add_argument("--json", default=None, help="also write the medians and minima (us per step, by row) here")
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    if bad := [m for m in args.methods if m not in METHODS]:
        p.error(f"unknown methods {bad}; choose from {','.join(METHODS)}")
    return args


@dataclass
class Batch:
    """The fixed data every step trains on: er's batch with cutmix's two label sets and mixing weight."""
    x: torch.Tensor
    ya: torch.Tensor
    yb: torch.Tensor
    lam: torch.Tensor


def make_batch(args: argparse.Namespace, n: int) -> Batch:
    dev = torch.device(args.device)
    return Batch(torch.rand(n, 1, 28, 28, device=dev), torch.randint(0, args.classes, (n,), device=dev),
                 torch.randint(0, args.classes, (n,), device=dev), torch.tensor(0.7, device=dev))


def model_and_opt(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = build_model("mlp400", args.classes, 3, 28, "adam").to(args.device)
    return model, torch.optim.Adam(model.parameters(), lr=3e-4, weight_decay=0.0, fused=True)


def maybe_compile(fn: Callable, compiled: bool) -> Callable:
    return torch.compile(fn, fullgraph=True, dynamic=False) if compiled else fn


def mixed_ce(logits: torch.Tensor, ya: torch.Tensor, yb: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Cutmix's mixed cross-entropy."""
    return lam * F.cross_entropy(logits, ya) + (1 - lam) * F.cross_entropy(logits, yb)


def adam_step(opt: torch.optim.Optimizer, loss: Callable[[], torch.Tensor], before: Step | None = None,
              after: Step | None = None) -> Step:
    """A training step: zero_grad, the loss's backward pass, ``before``, Adam, ``after``."""
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss().backward()
        if before is not None:
            before()
        opt.step()
        if after is not None:
            after()
    return step


def er_step(args: argparse.Namespace, b: Batch, compiled: bool) -> Step:
    model, opt = model_and_opt(args)

    def loss_fn(x, ya, yb, lam):
        return mixed_ce(model(x), ya, yb, lam)
    fn = maybe_compile(loss_fn, compiled)
    return adam_step(opt, lambda: fn(b.x, b.ya, b.yb, b.lam))


def derpp_step(args: argparse.Namespace, compiled: bool) -> Step:
    """One forward pass over the stream's half batch and two memory draws (n each): CE + 0.2 x masked logit MSE +
    0.5 x CE on the second draw."""
    dev, n = torch.device(args.device), args.batch // 2
    model, opt = model_and_opt(args)
    x = torch.rand(3 * n, 1, 28, 28, device=dev)
    y, y2 = (torch.randint(0, args.classes, (n,), device=dev) for _ in range(2))
    stored = torch.randn(n, args.classes, device=dev)  # the memory's stored logits
    mask = torch.ones(n, args.classes, device=dev)  # the stored logits' valid columns (all: one head size)

    def loss_fn(x, y, y2, stored, mask):
        logits = model(x)
        mse = ((logits[n:2 * n] - stored).square() * mask).sum() / mask.sum().clamp(min=1)
        return F.cross_entropy(logits[:n], y) + 0.2 * mse + 0.5 * F.cross_entropy(logits[2 * n:], y2)
    fn = maybe_compile(loss_fn, compiled)
    return adam_step(opt, lambda: fn(x, y, y2, stored, mask))


def fisher_update(fs: list[torch.Tensor], gs: list[torch.Tensor]) -> None:
    """ewc++'s online Fisher: F <- 0.5 F + 0.5 g^2, in place."""
    for f, g in zip(fs, gs):
        f.mul_(0.5).add_(g.square(), alpha=0.5)


def ewcpp_step(args: argparse.Namespace, b: Batch, compiled: bool, reg_coef: float = 100.0) -> Step:
    """er's step plus the penalty over the body's parameters, then the Fisher update after Adam. The Adam fold's
    input weight stands for 3 slices (model.per_slice()); the method scales its penalty and Fisher by that, the floor
    ignores it (the same arithmetic)."""
    model, opt = model_and_opt(args)
    body = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
    fisher = [torch.rand_like(p) * 1e-4 for p in body]
    anchor = [p.detach() + 1e-3 * torch.randn_like(p) for p in body]

    def loss_fn(x, ya, yb, lam):
        penalty = sum((f * (p - a).square()).sum() for f, p, a in zip(fisher, body, anchor))
        return mixed_ce(model(x), ya, yb, lam) + reg_coef * penalty
    fn, update = maybe_compile(loss_fn, compiled), maybe_compile(fisher_update, compiled)
    return adam_step(opt, lambda: fn(b.x, b.ya, b.yb, b.lam), after=lambda: update(fisher, [p.grad for p in body]))


def bic_step(args: argparse.Namespace, b: Batch, compiled: bool, clip: float = 10.0) -> Step:
    """er's step plus distillation from a frozen teacher on the same batch, then gradient clipping (eager)."""
    model, opt = model_and_opt(args)
    teacher = build_model("mlp400", args.classes, 3, 28, "adam").to(args.device).eval()
    teacher.requires_grad_(False)

    def loss_fn(x, ya, yb, lam):
        with torch.no_grad():
            old = teacher(x)
        logits = model(x)
        return mixed_ce(logits, ya, yb, lam) + kd_loss(old, logits, T=2.0)
    fn = maybe_compile(loss_fn, compiled)
    return adam_step(opt, lambda: fn(b.x, b.ya, b.yb, b.lam),
                     before=lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), clip))


def method_step(name: str, args: argparse.Namespace, b: Batch, compiled: bool) -> Step:
    if name == "der++":
        return derpp_step(args, compiled)
    return {"er": er_step, "ewc++": ewcpp_step, "bic": bic_step}[name](args, b, compiled)


def kernels(args: argparse.Namespace, b: Batch) -> dict[str, Step]:
    """The step's 7 matrix products, the fused Adam kernel and clib's memory pass, each alone."""
    dev = torch.device(args.device)
    model = build_model("mlp400", args.classes, 3, 28, "adam").to(dev)
    ws = [p.detach() for n, p in model.named_parameters() if p.dim() == 2]  # input, hidden, head weights
    h = [b.x.flatten(1)] + [torch.rand(args.batch, w.shape[0], device=dev) for w in ws]

    def matmuls() -> None:
        for i, w in enumerate(ws):  # forward, weight gradient, input gradient (not of the input layer)
            torch.mm(h[i], w.t())
            torch.mm(h[i + 1].t(), h[i])
            if i:
                torch.mm(h[i + 1], w)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, fused=True)
    for p in model.parameters():
        p.grad = torch.rand_like(p) * 1e-3
    opt.step()
    params = list(opt.param_groups[0]["params"])
    st = [opt.state[p] for p in params]

    def adam_kernel() -> None:
        torch._fused_adam_(params, [p.grad for p in params], [s["exp_avg"] for s in st],
                           [s["exp_avg_sq"] for s in st], [], [s["step"] for s in st], amsgrad=False, lr=3e-4,
                           beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, maximize=False)
    xm = torch.rand(args.memory, 1, 28, 28, device=dev)
    ym = torch.randint(0, args.classes, (args.memory,), device=dev)
    scorer = build_model("mlp400", args.classes, 3, 28, "adam").to(dev).eval()

    @torch.no_grad()
    def memory_pass() -> None:  # CLIB's importance pass: per-sample CE of the whole memory, eval mode
        F.cross_entropy(scorer(xm), ym, reduction="none")
    return {"matrix products (7)": matmuls, "fused Adam kernel": adam_kernel,
            f"clib's memory pass ({args.memory} images)": memory_pass}


def variants(args: argparse.Namespace) -> dict[str, Step]:
    """The timed steps, each a closure over its own model, optimizer and batch: every chosen method eager and
    compiled, then the kernels alone."""
    torch.manual_seed(0)
    b = make_batch(args, args.batch)
    out: dict[str, Step] = {}
    for m in args.methods:
        out[f"{m} eager step"] = method_step(m, args, b, False)
        if not args.no_compile:
            out[f"{m} compiled step (inductor)"] = method_step(m, args, b, True)
    return out | kernels(args, b)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    steps = variants(args)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for name, fn in steps.items():  # warm-up: the compiled steps compile here
        t0 = time.perf_counter()
        for _ in range(3):
            fn()
        sync()
        print(f"{name}: warm-up {time.perf_counter() - t0:.2f} s", flush=True)
    times: dict[str, list[float]] = {n: [] for n in steps}
    for _ in range(args.rounds):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            sync()
            times[name].append((time.perf_counter() - t0) / args.steps * 1e6)
    flops = 2 * args.batch * sum(w.numel() for w in [torch.empty(400, 784), torch.empty(400, 400),
                                                     torch.empty(args.classes, 400)])
    print(f"\nmlp400 (Adam fold), batch {args.batch}, {args.classes} classes, {args.threads} threads, "
          f"{args.device}; median of {args.rounds} rounds of {args.steps} steps")
    print("| what | us per step | min-max over rounds |\n|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.0f} | {min(ts):.0f}-{max(ts):.0f} |")
    mm = statistics.median(times["matrix products (7)"])
    print(f"matrix products: {3 * flops / 1e6 - 2 * args.batch * 784 * 400 / 1e6:.1f} MFLOP per step, "
          f"{(3 * flops - 2 * args.batch * 784 * 400) / mm / 1e3:.0f} GFLOP/s")
    kind = "eager" if args.no_compile else "compiled"
    for m in args.methods:
        us = statistics.median(times[f"{m} {kind} step" + ("" if args.no_compile else " (inductor)")])
        print(f"floor of a run: {m} {args.run_steps} steps x {kind} step = {args.run_steps * us / 1e6:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "batch": args.batch, "rounds": args.rounds,
                                               "us_per_step": {n: statistics.median(ts) for n, ts in times.items()},
                                               "min_us_per_step": {n: min(ts) for n, ts in times.items()}}))


if __name__ == "__main__":
    main()
