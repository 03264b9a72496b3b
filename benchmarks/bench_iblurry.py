"""The sample-wise protocol side by side with the CLIB code: wall time, steps, time per step, time in evaluation
and A_auc / A_last / F_last of both, method by method (ours, then the CLIB code's, so that a shared machine's slow
spells fall on both), on the same split files, one run at a time.

  python benchmarks/bench_iblurry.py --clib_src ../i-Blurry --data_dir dataset          # every method
  python benchmarks/bench_iblurry.py --clib_src ../i-Blurry --methods er,clib --sides ours   # ours only

The setting (the CLIB scripts' CIFAR-10 settings on mlp400): i-Blurry-50-10 on every 6th MNIST training image (--every; 10,000 stream
samples) and the whole test set, mlp400, memory 500, batch 16, temporary batch 8, online_iter 1, eval_period
500, cutmix, each method's optimiser as the CLIB scripts give it (Adam 3e-4; rm: SGD 0.05 with the cosine
schedule and 5 memory epochs). Both codes read the split files this tool generates for --seed (the CLIB
format). --data_dir is a prepared MNIST (``python -m utils.prepare --dataset mnist``).

The CLIB code (a checkout of naver-ai/i-Blurry, --clib_src or $CLIB_SRC) is copied under --work and patched
only as far as MNIST on a CPU needs:
  1. main.py: keep --gpu_transform on a CPU (its tensor transforms run there too; rm's memory epochs use them
     whatever the flag says), instead of turning it off;
  2. utils/data_loader.py: ``np.int`` -> ``int`` in rand_bbox (NumPy >= 1.24 has no np.int);
  3. methods/er_baseline.py: an 'mnist' entry (60000) in its table of dataset sizes;
  4. methods/clib.py: no training call while the memory holds a single sample (mlp400's BatchNorm1d cannot
     train on a batch of one; the CLIB code stops there at the run's first sample; ours skips those steps too).
It needs pandas, SciPy, torch_optimizer... on the path: --clib_pythonpath (or $CLIB_PYTHONPATH) is prepended
to PYTHONPATH. Without a CLIB checkout the CLIB side is skipped with a message (exit 0).

Both codes run in a subprocess under the same runner: the wall time is the subprocess's (start-up, data
loading and evaluations included); steps are the optimizer steps (a global step hook); the CLIB code's time in
evaluation is its ``online_evaluate`` calls, ours the results' evaluation timer. der++ has no CLIB
counterpart: its ratio is against the CLIB code's er (which does less per step). Figures go to --out (JSON);
--reuse FILE takes the CLIB rows from an earlier --out (the CLIB code does not change between runs of ours).
--floor times, right after our runs of er, der++, ewc++, bic and clib, the floor of each run: its steps at the
time of the method's step compiled whole by inductor (benchmarks/bench_step_floor.py; clib's adds its pass over
the memory), plus our evaluations' time and the start-up no run avoids (``python -c "import torch"``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
METHODS = ("er", "der++", "ewc++", "bic", "rm", "mir", "clib")
COMMON = ["--dataset", "mnist", "--rnd_seed", "{seed}", "--batchsize", "16", "--memory_size", "{memory}",
          "--online_iter", "1", "--eval_period", "500", "--transforms", "cutmix"]
ADAM = ["--opt_name", "adam", "--lr", "3e-4"]
# each method's own flags on each side: (CLIB mode or None, CLIB flags, our flags)
FLAGS: dict[str, tuple[str | None, list[str], list[str]]] = {
    "er": ("er", ADAM + ["--sched_name", "default"], ADAM),
    "der++": (None, [], ADAM),
    "ewc++": ("ewc++", ADAM + ["--sched_name", "default"], ADAM + ["--as_intended"]),
    "bic": ("bic", ADAM + ["--sched_name", "default"], ADAM),
    "rm": ("rm", ["--opt_name", "sgd", "--lr", "0.05", "--sched_name", "cos", "--memory_epoch", "5"],
           ["--opt_name", "sgd", "--lr", "0.05", "--sched_name", "cos", "--n_epoch", "5"]),
    "mir": ("mir", ADAM + ["--sched_name", "default"], ADAM),
    "clib": ("clib", ADAM + ["--sched_name", "default"], ADAM),
}
PATCHES = [  # (file, old, new): the only changes to the CLIB code (see the module's help)
    ("main.py", '        if args.gpu_transform:\n            args.gpu_transform = False\n'
                '            logger.warning("Augmentation on GPU not available!")\n',
     "        pass  # PATCH(cpu): keep --gpu_transform (its tensor transforms run on the CPU too)\n"),
    ("utils/data_loader.py", "cut_w = np.int(W * cut_rat)\n    cut_h = np.int(H * cut_rat)",
     "cut_w = int(W * cut_rat)\n    cut_h = int(H * cut_rat)"),
    ("methods/er_baseline.py", "num_samples = {'cifar10': 50000,", "num_samples = {'mnist': 60000, 'cifar10': 50000,"),
    ("methods/clib.py", """            train_loss, train_acc = self.online_train([], self.batch_size, n_worker,
                                                      iterations=int(self.num_updates), stream_batch_size=0)
            self.report_training(sample_num, train_loss, train_acc)
            self.num_updates -= int(self.num_updates)
            self.update_schedule()""",
     """            single = len(self.memory) < 2  # PATCH(mlp400): BatchNorm1d cannot train on a batch of one sample
            if not single:
                train_loss, train_acc = self.online_train([], self.batch_size, n_worker,
                                                          iterations=int(self.num_updates), stream_batch_size=0)
                self.report_training(sample_num, train_loss, train_acc)
            self.num_updates -= int(self.num_updates)
            if not single:
                self.update_schedule()"""),
]
RUNNER = r"""
import json, os, runpy, sys, time
from torch.optim.optimizer import register_optimizer_step_post_hook
stats = {"steps": 0, "eval_s": 0.0}
out, script, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.argv = ["main.py"] + argv  # before any import: the CLIB code parses its flags when its modules load
window = [int(v) for v in os.environ.get("BENCH_PROFILE", "").split(",") if v]  # (steps before, steps profiled)
prof = None
if window:  # ours: a torch.profiler window of steps, with the engine's calls labelled
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function, schedule
    import methods, methods.base
    from methods.engine.trainer import Trainer
    def labelled(f, tag):
        def g(*a, **k):
            with record_function(tag):
                return f(*a, **k)
        return g
    build = methods.build_method
    def build_labelled(*a, **k):
        m = build(*a, **k)
        for name, tag in (("replay_batch", "draw"), ("train_step", "step"), ("remember", "remember"),
                          ("train_aug", "augment"), ("importance_pass", "clib importance pass"),
                          ("extra_loss", "penalty"), ("uncertainty", "uncertainty")):
            if hasattr(m, name):
                setattr(m, name, labelled(getattr(m, name), tag))
        return m
    methods.build_method = build_labelled
    methods.base.cutmix = labelled(methods.base.cutmix, "cutmix")
    import methods.mir, methods.ewcpp
    methods.mir.mir_scores = labelled(methods.mir.mir_scores, "mir scores")
    methods.ewcpp.ewcpp_update = labelled(methods.ewcpp.ewcpp_update, "fisher update")
    Trainer.anytime_point = labelled(Trainer.anytime_point, "evaluation")
    prof = profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=window[0], warmup=5, active=window[1]))
    prof.start()
    marks = {}
def count(opt, args, kwargs):
    stats["steps"] += 1
    if prof is not None:
        prof.step()
        marks[stats["steps"]] = time.perf_counter()
register_optimizer_step_post_hook(count)
if script == "clib":  # time the CLIB code's evaluations
    import importlib
    def timed(f):
        def g(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                stats["eval_s"] += time.perf_counter() - t
        return g
    for mod in ("er_baseline", "bic", "gdumb", "clib", "mir", "ewc", "rainbow_memory"):
        m = importlib.import_module("methods." + mod)
        for obj in list(vars(m).values()):
            if isinstance(obj, type) and obj.__module__ == m.__name__ and "online_evaluate" in vars(obj):
                setattr(obj, "online_evaluate", timed(vars(obj)["online_evaluate"]))
try:
    runpy.run_path("main.py", run_name="__main__")
finally:
    if prof is not None:
        prof.stop()
        a, b = window[0] + 5, window[0] + 5 + window[1]
        n = window[1]
        agg = {}
        for e in prof.key_averages():
            agg[e.key] = (e.cpu_time_total, e.self_cpu_time_total, e.count)
        leaves = syncs = 0
        for e in prof.events():
            if e.name.startswith("aten::") and not any(c.name.startswith("aten::") for c in e.cpu_children):
                leaves += 1
            if e.name in ("aten::_local_scalar_dense", "aten::is_nonzero"):
                syncs += 1
        ops = sum(v[1] for k, v in agg.items() if k.startswith("aten::"))
        mm = sum(v[1] for k, v in agg.items() if k in ("aten::mm", "aten::addmm", "aten::bmm", "aten::_convolution",
                                                         "aten::mkldnn_convolution", "aten::convolution_backward"))
        incl = lambda k: sum(v[0] for name, v in agg.items() if name == k or name.startswith(k + "#"))
        wall = (marks[b] - marks[a]) * 1e6 if a in marks and b in marks else float("nan")
        stats["profile"] = {"steps": n, "wall_us": wall / n, "ops_us": ops / n, "matmul_us": mm / n,
                            "optimizer_us": incl("Optimizer.step") / n, "kernels": leaves / n, "syncs": syncs / n,
                            **{t + "_us": incl(t) / n for t in ("draw", "augment", "cutmix", "step", "remember",
                                                                "clib importance pass", "penalty", "fisher update",
                                                                "mir scores", "evaluation", "uncertainty")},
                            "top_ops": sorted(([k, v[2] / n, v[1] / n] for k, v in agg.items() if k.startswith("aten::")),
                                              key=lambda r: -r[2])[:25]}
    with open(out, "w") as f:
        json.dump(stats, f)
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clib_src", default=os.environ.get("CLIB_SRC"), help="a checkout of naver-ai/i-Blurry")
    p.add_argument("--clib_pythonpath", default=os.environ.get("CLIB_PYTHONPATH", ""),
                   help="prepended to PYTHONPATH for the CLIB code (its extra packages)")
    p.add_argument("--data_dir", default=str(ROOT / "dataset"), help="holds a prepared mnist/")
    p.add_argument("--every", type=int, default=6, help="the stream: every N-th training image (by index)")
    p.add_argument("--work", default=str(ROOT / "results" / "bench_iblurry"))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--sides", default="clib,ours", help="clib, ours or both")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--memory", type=int, default=500, help="--memory_size of both codes")
    p.add_argument("--device", default="cpu", help="our runs' device (the CLIB code runs on the CPU here)")
    p.add_argument("--repeat", type=int, default=1, help="our runs: repeat each N times and keep the median wall "
                                                         "(a shared machine's noise)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each run (OMP_NUM_THREADS)")
    p.add_argument("--out", default=None, help="the figures as JSON (default: <work>/bench_iblurry.json)")
    p.add_argument("--reuse", default=None, help="take the CLIB rows from this earlier --out")
    p.add_argument("--profile", default="", metavar="WAIT,N",
                   help="then profile each of our runs again over N steps after WAIT (torch.profiler), e.g. 2000,500")
    p.add_argument("--floor", action="store_true",
                   help="after our runs of each method, time its step's floor (benchmarks/bench_step_floor.py, "
                        "compiled by inductor) and print the floor of the run next to it")
    p.add_argument("--floor_steps", type=int, default=300, help="--floor: steps per round (3 rounds)")
    p.add_argument("--floor_eager", action="store_true", help="--floor: the eager step instead (no C++ compiler)")
    p.add_argument("--ours_flags", default="", help="extra flags for our runs (e.g. '--compile inductor')")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in FLAGS]
    if bad:
        p.error(f"unknown methods {bad}; valid: {', '.join(METHODS)}")
    return args


def stream_data(data_dir: Path, every: int, work: Path) -> Path:
    """``work``/data/mnist: links to every ``every``-th training image (by its index) and every test image."""
    src = data_dir / "mnist"
    if not (src / "classes.json").is_file():
        raise SystemExit(f"{src}: no prepared MNIST (python -m utils.prepare --dataset mnist --data_dir {data_dir})")
    dst = work / "data" / "mnist"
    if (dst / "classes.json").is_file():
        return dst.parent
    tmp = work / "data" / "mnist.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for split in ("train", "test"):
        for cls in sorted(p for p in (src / split).iterdir() if p.is_dir()):
            (tmp / split / cls.name).mkdir(parents=True)
            for f in cls.glob("*.png"):
                if split == "test" or int(f.stem) % every == 0:
                    os.symlink(f.resolve(), tmp / split / cls.name / f.name)
    shutil.copy(src / "classes.json", tmp / "classes.json")
    tmp.rename(dst)
    return dst.parent


def split_files(data: Path, work: Path, seed: int) -> Path:
    """The i-Blurry-50-10 split files of ``seed`` over ``data`` (CLIB format, made once), which both codes read."""
    from utils.data.iblurry import load_or_make_iblurry, parse_iblurry

    folder = work / "collections" / "mnist"
    files = {split: {c.name: sorted(f"{split}/{c.name}/{f.name}" for f in c.iterdir())
                     for c in sorted((data / "mnist" / split).iterdir())} for split in ("train", "test")}
    load_or_make_iblurry(folder, "mnist", parse_iblurry("iblurry50_10"), seed, 5, files["train"], files["test"])
    return folder


def clib_copy(src: Path, work: Path, data: Path, collections: Path) -> Path:
    """A patched copy of the CLIB code reading ``data`` and the split files in ``collections``."""
    dst = work / "clib"
    if not (dst / "main.py").is_file():
        tmp = work / "clib.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".git", "collections", "dataset", "results"))
        for name, old, new in PATCHES:
            text = (tmp / name).read_text()
            if old not in text:
                raise SystemExit(f"{src}: the patch of {name} does not apply (not naver-ai/i-Blurry at 4446d95?)")
            (tmp / name).write_text(text.replace(old, new, 1))
        (tmp / "dataset").mkdir()
        (tmp / "collections").mkdir()
        tmp.rename(dst)
    for link, target in ((dst / "dataset" / "mnist", data / "mnist"), (dst / "collections" / "mnist", collections)):
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target.resolve())
    return dst


class RunFailed(Exception):
    """A run exited with an error: its row says so and the bench goes on."""


def run(cmd: list[str], cwd: Path, env: dict, log: Path) -> float:
    t = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t
    if rc != 0:
        raise RunFailed(f"exit {rc}; see {log}")
    return wall


def repeated(n: int, fn, *a) -> dict:
    """``fn(*a)`` ``n`` times: the run of median wall time, with every wall time (fastest first) and the fastest
    run's time in evaluation."""
    runs = sorted((fn(*a) for _ in range(n)), key=lambda r: r["wall_s"])
    return {**runs[(n - 1) // 2], "walls_s": [r["wall_s"] for r in runs], "fastest_eval_s": runs[0].get("eval_s")}


def attempt(side: str, method: str, fn, *a) -> dict | None:
    """``fn(*a)``, or {"failed": why} when the run failed."""
    try:
        row = fn(*a)
    except RunFailed as e:
        row = {"failed": str(e)}
    print(f"{side} {method}: {row}", flush=True)
    return row


def runner_env(threads: int, pythonpath: str = "") -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_ours(method: str, args: argparse.Namespace, data: Path, work: Path, collections: Path,
             profile: str = "") -> dict:
    name = f"{method}_s{args.seed}"
    out = work / ("ours_profile" if profile else "ours") / name  # a fresh folder per run
    shutil.rmtree(out, ignore_errors=True)
    common = [a.format(seed=args.seed, memory=args.memory) for a in COMMON]
    argv = ["--mode", method, "--exp_name", "iblurry50_10", "--data_dir", str(data), "--out_dir", str(out),
            "--run_name", name, "--collections_dir", str(collections), "--model_name", "mlp400", "--device", args.device] + common + FLAGS[method][2]
    argv += args.ours_flags.split()
    tag = "profile_" if profile else ""
    stats = work / f"ours_{tag}{name}.stats.json"
    env = dict(runner_env(args.threads), BENCH_PROFILE=profile)
    wall = run([sys.executable, "-c", RUNNER, str(stats), "ours"] + argv, ROOT, env, work / f"ours_{tag}{name}.log")
    res = json.loads((out / "results" / "mnist" / f"{name}.json").read_text())
    st = json.loads(stats.read_text())
    if profile:
        return st["profile"]
    return {"wall_s": wall, "steps": st["steps"], "eval_s": res["phase_time_s"].get("evaluation", 0.0),
            "A_auc": res.get("A_auc"), "A_last": res["A_last"], "F_last": res["F_last"]}


def run_clib(method: str, args: argparse.Namespace, clib: Path, work: Path) -> dict | None:
    mode, flags, _ = FLAGS[method]
    if mode is None:
        return None
    note = f"bench_{method}_s{args.seed}"
    argv = ["--mode", mode, "--n_tasks", "5", "--m", "10", "--n", "50", "--model_name", "mlp400",
            "--gpu_transform", "--note", note] + [a.format(seed=args.seed, memory=args.memory) for a in COMMON] + flags
    stats = work / f"clib_{note}.stats.json"
    log = work / f"clib_{note}.log"
    wall = run([sys.executable, "-c", RUNNER, str(stats), "clib"] + argv, clib,
               runner_env(args.threads, args.clib_pythonpath), log)
    m = re.findall(r"A_auc ([\d.e-]+) \| A_avg ([\d.e-]+) \| A_last ([\d.e-]+) \| F_last ([\d.e-]+)", log.read_text())
    if not m:
        raise RunFailed(f"no summary line in {log}")
    auc, _, last, f_last = (100 * float(v) for v in m[-1])
    st = json.loads(stats.read_text())
    return {"wall_s": wall, "steps": st["steps"], "eval_s": st["eval_s"], "A_auc": auc, "A_last": last,
            "F_last": f_last}


# a method's step in the floor bench: its step's row, and the kernel rows it adds
FLOOR_STEP: dict[str, tuple[str, tuple[str, ...]]] = {
    "er": ("er", ()), "der++": ("der++", ()), "ewc++": ("ewc++", ()), "bic": ("bic", ()),
    "clib": ("er", ("clib's memory pass",))}


def import_torch_s(threads: int) -> float:
    """The start-up no run avoids: the interpreter and ``import torch`` (median of 3)."""
    env = runner_env(threads)
    walls = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], env=env, check=True)
        walls.append(time.perf_counter() - t0)
    return sorted(walls)[1]


def run_floor(method: str, args: argparse.Namespace, work: Path, ours: dict, start_s: float) -> dict | None:
    """The floor of ``method``'s run: its steps at the compiled step's time (bench_step_floor, timed now, so a
    shared machine's slow spell falls on both), its evaluations as our fastest run took them, and ``start_s``;
    against that fastest run."""
    if method not in FLOOR_STEP or not ours or "failed" in ours:
        return None
    step, extra = FLOOR_STEP[method]
    out = work / f"floor_{method}.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_step_floor.py"), "--methods", step, "--rounds", "3",
           "--steps", str(args.floor_steps), "--threads", str(args.threads), "--memory", str(args.memory),
           "--device", args.device, "--json", str(out)] + (["--no_compile"] if args.floor_eager else [])
    run(cmd, ROOT, runner_env(args.threads), work / f"floor_{method}.log")
    us = json.loads(out.read_text())["min_us_per_step"]  # a floor: the fastest round
    kind = "eager step" if args.floor_eager else "compiled step (inductor)"
    step_us = us[f"{step} {kind}"] + sum(us[f"{k} ({args.memory} images)"] for k in extra)
    best = min(ours.get("walls_s", [ours["wall_s"]]))  # the fastest of our runs, with its own evaluations
    floor = ours["steps"] * step_us / 1e6 + ours.get("fastest_eval_s", ours["eval_s"]) + start_s
    return {"step_us": step_us, "start_s": start_s, "floor_s": floor, "ours_s": best, "ours_over_floor": best / floor}


def fmt(r: dict | None, key: str, f: str = "{:.2f}") -> str:
    return "-" if r is None or r.get(key) is None else f.format(r[key])


def table(rows: dict[str, dict]) -> str:
    head = ("| method | CLIB code (s) | ours (s) | ratio | steps CLIB / ours | ms per step CLIB / ours | "
            "evaluation (s) CLIB / ours | A_auc CLIB / ours | A_last CLIB / ours | F_last CLIB / ours |")
    lines = [head, "|" + "---|" * 10]
    for m, r in rows.items():
        failed = [f"{side}: failed ({x['failed']})" for side, x in r.items() if x and "failed" in x]
        if failed:
            lines.append(f"| {m} | " + "; ".join(failed) + " |" + " |" * 8)
            continue
        c, o = r.get("clib"), r.get("ours")
        ref = c if c is not None else (rows.get("er", {}).get("clib") if m == "der++" else None)
        ratio = "-" if ref is None or o is None else f"{ref['wall_s'] / o['wall_s']:.1f}x" + (" (vs er)" if c is None else "")
        ms = [fmt(x, "wall_s", "{:.1f}") if x is None else f"{1000 * x['wall_s'] / max(x['steps'], 1):.2f}" for x in (c, o)]
        lines.append(f"| {m} | {fmt(c, 'wall_s', '{:.1f}')} | {fmt(o, 'wall_s', '{:.1f}')} | {ratio} | "
                     f"{fmt(c, 'steps', '{}')} / {fmt(o, 'steps', '{}')} | {ms[0]} / {ms[1]} | "
                     f"{fmt(c, 'eval_s', '{:.1f}')} / {fmt(o, 'eval_s', '{:.1f}')} | "
                     + " | ".join(f"{fmt(c, k)} / {fmt(o, k)}" for k in ("A_auc", "A_last", "F_last")) + " |")
    return "\n".join(lines)


PROFILE_COLUMNS = [("wall_us", "wall"), ("kernels", "kernels"), ("syncs", "host syncs"), ("ops_us", "in ops"),
                   ("matmul_us", "matmul"), ("optimizer_us", "optimizer step"), ("draw_us", "memory draw"),
                   ("augment_us", "augmentation"), ("cutmix_us", "cutmix"), ("remember_us", "remember"),
                   ("clib importance pass_us", "CLIB importance"), ("mir scores_us", "MIR scores"),
                   ("penalty_us", "EWC penalty"), ("fisher update_us", "Fisher update"), ("evaluation_us", "evaluation")]


def profile_table(rows: dict[str, dict]) -> str:
    """Per step (microseconds, counts) of our profiled runs: wall, leaf kernels, host syncs, time in ops, and
    the labelled calls (inclusive); wall - in ops is Python and the profiler's own cost."""
    lines = ["| method | " + " | ".join(h for _, h in PROFILE_COLUMNS) + " |", "|" + "---|" * (len(PROFILE_COLUMNS) + 1)]
    for m, r in rows.items():
        pr = r.get("profile")
        if pr:
            lines.append(f"| {m} | " + " | ".join(f"{pr.get(k, 0):.0f}" if k not in ("kernels", "syncs")
                                                  else f"{pr.get(k, 0):.1f}" for k, _ in PROFILE_COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else work / "bench_iblurry.json"
    sides = args.sides.split(",")
    data = stream_data(Path(args.data_dir), args.every, work)
    rows: dict[str, dict] = {m: {} for m in args.methods}
    if args.reuse:
        old = json.loads(Path(args.reuse).read_text())["rows"]
        for m in rows:
            rows[m]["clib"] = old.get(m, {}).get("clib")
        if "der++" in rows and "er" not in rows:
            rows["er"] = {"clib": old.get("er", {}).get("clib")}
    collections = split_files(data, work, args.seed)
    clib = None
    if "clib" in sides:
        if not args.clib_src or not (Path(args.clib_src) / "main.py").is_file():
            print("SKIPPED the CLIB side: no CLIB code (give --clib_src or $CLIB_SRC, a checkout of naver-ai/i-Blurry)")
        else:
            clib = clib_copy(Path(args.clib_src), work, data, collections)
    start_s = None
    for m in args.methods:  # method by method, both sides: a shared machine's slow spells fall on both
        if "ours" in sides:
            rows[m]["ours"] = attempt("ours", m, repeated, args.repeat, run_ours, m, args, data, work, collections)
        if clib is not None:
            rows[m]["clib"] = attempt("CLIB", m, run_clib, m, args, clib, work)
        if "ours" in sides and args.floor:
            start_s = start_s if start_s is not None else import_torch_s(args.threads)
            rows[m]["floor"] = attempt("floor", m, run_floor, m, args, work, rows[m]["ours"], start_s)
        if "ours" in sides and args.profile:
            rows[m]["profile"] = attempt("profile", m, run_ours, m, args, data, work, collections, args.profile)
    out.write_text(json.dumps({"setting": {"seed": args.seed, "threads": args.threads, "every": args.every,
                                           "ours_flags": args.ours_flags}, "rows": rows}, indent=1))
    print(table({m: {k: v for k, v in r.items() if k not in ("profile", "floor")} for m, r in rows.items()}))
    if args.floor:
        kind = "eager" if args.floor_eager else "compiled"
        print(f"\nOur runs against their floor (steps x the {kind} step, its fastest round, + our evaluations + "
              f"python -c 'import torch'; ours: the fastest run):"
              f"\n| method | {kind} step (us) | floor of the run (s) | ours, fastest (s) | ours / floor |"
              "\n|---|---|---|---|---|")
        for m, r in rows.items():
            f = r.get("floor")
            if f and "failed" not in f:
                print(f"| {m} | {f['step_us']:.0f} | {f['floor_s']:.1f} | {f['ours_s']:.1f} | "
                      f"{f['ours_over_floor']:.2f}x |")
    if args.profile:
        print("\nOur steps, profiled (per step):\n" + profile_table(rows))
    print(f"figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
