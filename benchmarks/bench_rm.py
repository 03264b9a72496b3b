"""Time one full RM run (paper MNIST settings by default) and print each phase and samples/s."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.bench_methods import run_one  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data_dir", default="dataset")
    p.add_argument("--collections_dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--transforms", nargs="*", default=["cutmix", "autoaug"])
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more main.py flags")
    a = p.parse_args(argv)
    res = run_one("rm", a)
    wall = res["bench_wall_s"]
    dev = res["device"]
    name = torch.cuda.get_device_name() if dev.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name} | transforms: {' '.join(a.transforms) or 'none'} | A_last {res['A_last']:.2f} "
          f"| A_last_final {res['A_last_final']:.2f}")
    print(f"{'phase':<18}{'seconds':>10}{'samples':>12}{'samples/s':>12}")
    pairs = [("stream_pass", "stream"), ("memory_update", "uncertainty_views"), ("memory_epochs", "memory"),
             ("evaluation", "evaluation")]
    for ph, key in pairs:
        sec = res["phase_time_s"].get(ph, 0.0)
        n = res["phase_samples"].get(key, 0)
        print(f"{ph:<18}{sec:>10.2f}{n:>12}{(n / sec if sec else 0):>12.0f}")
    print(f"{'total wall':<18}{wall:>10.2f}   (run's own wall_time_s {res['wall_time_s']:.2f}, includes loading the cached data)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
