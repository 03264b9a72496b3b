"""What an ER step of mlp400 costs with no Python around it: the eager step against the same step compiled whole
(torch.compile, inductor: no per-operator dispatch, elementwise work fused) and against its matrix products and
optimizer kernel alone; and the forward pass over the whole memory that clib adds after every step. The
sample-wise protocol's floor on a machine (issue 26's "arithmetic it cannot avoid").

  python benchmarks/bench_step_floor.py                 # batch 16, 10 classes, 2 threads
  python benchmarks/bench_step_floor.py --batch 16 --rounds 7 --steps 500

The step is ER's (the CLIB code's er): cutmix's mixed cross-entropy on a batch of grey 28x28 images, mlp400 with
the Adam fold (models.mlp), the backward pass, then one fused Adam step (lr 3e-4, no weight decay). Rounds
alternate the variants, so that a shared machine's noise falls on all of them; each figure is the median of the
rounds, in microseconds per step."""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models import build_model  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--classes", type=int, default=10, help="the head's outputs")
    p.add_argument("--steps", type=int, default=500, help="steps per round and variant")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--memory", type=int, default=500, help="the memory that clib's importance pass scores")
    p.add_argument("--no_compile", action="store_true", help="skip the compiled step (no C++ compiler)")
    return p.parse_args(argv)


def variants(args: argparse.Namespace) -> dict[str, Callable[[], None]]:
    """The timed steps, each a closure over its own model, optimizer and batch."""
    dev = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 1, 28, 28, device=dev)
    ya = torch.randint(0, args.classes, (args.batch,), device=dev)
    yb = torch.randint(0, args.classes, (args.batch,), device=dev)
    lam = torch.tensor(0.7, device=dev)
    out: dict[str, Callable[[], None]] = {}

    def er_step(compiled: bool) -> Callable[[], None]:
        model = build_model("mlp400", args.classes, 3, 28, "adam").to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=3e-4, weight_decay=0.0, fused=True)

        def loss_fn(x, ya, yb, lam):
            logits = model(x)
            return lam * F.cross_entropy(logits, ya) + (1 - lam) * F.cross_entropy(logits, yb), logits
        fn = torch.compile(loss_fn, fullgraph=True, dynamic=False) if compiled else loss_fn

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss, _ = fn(x, ya, yb, lam)
            loss.backward()
            opt.step()
        return step

    out["eager step"] = er_step(False)
    if not args.no_compile:
        out["compiled step (inductor)"] = er_step(True)
    model = build_model("mlp400", args.classes, 3, 28, "adam").to(dev)
    ws = [p.detach() for n, p in model.named_parameters() if p.dim() == 2]  # input, hidden, head weights
    h = [x.flatten(1)] + [torch.rand(args.batch, w.shape[0], device=dev) for w in ws]

    def matmuls() -> None:
        for i, w in enumerate(ws):  # forward, weight gradient, input gradient (not of the input layer)
            torch.mm(h[i], w.t())
            torch.mm(h[i + 1].t(), h[i])
            if i:
                torch.mm(h[i + 1], w)
    out["matrix products (7)"] = matmuls
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, fused=True)
    for p in model.parameters():
        p.grad = torch.rand_like(p) * 1e-3
    opt.step()
    g = opt.param_groups[0]
    params = [p for p in g["params"]]
    st = [opt.state[p] for p in params]

    def adam_kernel() -> None:
        torch._fused_adam_(params, [p.grad for p in params], [s["exp_avg"] for s in st],
                           [s["exp_avg_sq"] for s in st], [], [s["step"] for s in st], amsgrad=False, lr=3e-4,
                           beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, maximize=False)
    out["fused Adam kernel"] = adam_kernel
    xm = torch.rand(args.memory, 1, 28, 28, device=dev)
    ym = torch.randint(0, args.classes, (args.memory,), device=dev)
    scorer = build_model("mlp400", args.classes, 3, 28, "adam").to(dev).eval()

    @torch.no_grad()
    def memory_pass() -> None:  # CLIB's importance pass: per-sample CE of the whole memory, eval mode
        F.cross_entropy(scorer(xm), ym, reduction="none")
    out[f"clib's memory pass ({args.memory} images)"] = memory_pass
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    steps = variants(args)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for name, fn in steps.items():  # warm-up: the compiled step compiles here
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


if __name__ == "__main__":
    main()
