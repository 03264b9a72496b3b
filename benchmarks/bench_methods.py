"""Time full runs of several methods (paper MNIST settings: blurry10 online) and print each phase.

  python benchmarks/bench_methods.py --collections_dir ../shared/collections/mnist [--modes rm ewc ...]

RM runs without augmentation by default (RM w/o DA), the baselines without cutmix/autoaug, as in
the public code's comparison. The last column divides the public code's wall time for the same
run on this 2-core CPU (measured once, 2 torch threads; see PUBLIC_S) by our process's (both: the
whole `python main.py` process). "run" is our main() alone, without the interpreter and imports.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import main as rm_main  # noqa: E402

MODES = ("rm", "ewc", "rwalk", "icarl", "gdumb", "bic")
# the public code's wall time (s) for the same run: full MNIST, the paper's split files, seed 1,
# 2 torch threads, --n_worker 0, a quiet 2-core CPU. ewc, rwalk, icarl, gdumb: measured 2026-12-05
# on this machine; rm (the mean of 737-767 s) and bic: issue 13, measured on the same machine type
PUBLIC_S = {"rm": 752.0, "ewc": 360.3, "rwalk": 236.3, "icarl": 196.5, "gdumb": 150.0, "bic": 721.0}
PHASES = ("stream_pass", "importance", "memory_update", "memory_epochs", "offline_epochs", "evaluation")


def run_one(mode: str, a: argparse.Namespace) -> dict:
    """One full run of ``mode`` as its own process (``python main.py ...``: interpreter, imports and all,
    as the public code's wall time was taken), its decoded-image cache warmed first; its results, the
    process's wall time (``bench_wall_s``) and the run's own (``wall_time_s``: main() without imports)."""
    with tempfile.TemporaryDirectory() as out:
        args = ["--mode", mode, "--dataset", a.dataset, "--data_dir", a.data_dir, "--exp_name", "blurry10",
                "--stream_env", "online", "--rnd_seed", str(a.seed), "--device", a.device, "--out_dir", out,
                "--transforms", *a.transforms, *a.extra]
        if a.collections_dir:
            args += ["--collections_dir", a.collections_dir]
        rm_main.build_run(rm_main.resolve(rm_main.base_parser(rm_main.method_names()).parse_args(args)))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"{mode}: main.py exited with {proc.returncode}\n{proc.stderr[-3000:]}")
        res = json.loads(next(Path(out, "results", a.dataset).glob("*.json")).read_text())
    res["bench_wall_s"] = wall
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data_dir", default="dataset")
    p.add_argument("--collections_dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--transforms", nargs="*", default=[], help="default none (RM w/o DA, baselines without DA)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more main.py flags")
    a = p.parse_args(argv)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {a.device}, seed {a.seed}, "
          f"transforms {' '.join(a.transforms) or 'none'}")
    head = f"{'method':<8}{'process':>8}{'run':>7}" + "".join(f"{ph.replace('_', ' '):>15}" for ph in PHASES)
    print(head + f"{'A_last':>8}{'final':>8}{'public':>8}{'ratio':>7}")
    for mode in a.modes:
        res = run_one(mode, a)
        wall, pt = res["bench_wall_s"], res["phase_time_s"]
        pub = PUBLIC_S.get(mode) if a.dataset == "mnist" and not a.transforms else None
        cells = "".join(f"{pt[ph]:>15.2f}" if ph in pt else f"{'-':>15}" for ph in PHASES)
        print(f"{mode:<8}{wall:>8.2f}{res['wall_time_s']:>7.2f}{cells}{res['A_last']:>8.2f}{res['A_last_final']:>8.2f}"
              + (f"{pub:>8.0f}{pub / wall:>6.1f}x" if pub else f"{'-':>8}{'-':>7}"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
