"""The golden files of results: every method on a real MNIST subset, CPU, 1 torch thread, fixed seed.

A refactor changes no number: ``tests/test_golden.py`` reruns every case of both suites and compares the
results with the golden files bit for bit. Two suites:
- ``cvpr`` (``tests/golden.json``): the CVPR'21 protocol's methods, blurryM/disjoint, online/offline, on
  the first 300 train and 300 test images per class;
- ``iblurry`` (``tests/golden_iblurry.json``): the sample-wise i-Blurry protocol's methods and their
  ``--as_intended`` variants, anytime curves included, on the first 100 train and 100 test images per
  class (1,000 stream samples).
Regenerate one (only when a change of numbers is intended, and say so in the commit) with:

    .venv/bin/python -m tests.golden --suite cvpr --write
    .venv/bin/python -m tests.golden --suite iblurry --write

The runs use 1 thread and the CPU kernels every x86-64 machine runs alike (PINNED: ATen's
portable kernels, MKL's conditional numerical reproducibility, oneDNN up to SSE4.1), so that the
numbers do not depend on the machine's vector instructions; the script re-runs itself with that
environment when it was started without it. It prepares MNIST (from ../shared or $RM_SHARED) in a
temporary folder, or uses ``--data_dir`` (a folder holding a prepared ``mnist/`` of the suite's size).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

GOLDEN = Path(__file__).with_name("golden.json")
GOLDEN_IBLURRY = Path(__file__).with_name("golden_iblurry.json")
ROOT = Path(__file__).resolve().parents[1]
PINNED = {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE",
          "ONEDNN_MAX_CPU_ISA": "SSE41"}
PER_CLASS = 300
COMMON = ["--dataset", "mnist", "--device", "cpu", "--rnd_seed", "3", "--n_epoch", "2", "--memory_size", "100"]
# the numbers a refactor must not change (I_last is left out: it depends on --joint_acc only)
KEYS = ("task_acc", "task_acc_final", "cls_acc", "A_last", "A_avg", "F_last", "A_last_final", "A_avg_final",
        "memory_class_counts", "epochs", "anytime", "A_auc")
METHODS = {
    "rm": ["--mode", "rm"],
    "rm_noaug": ["--mode", "rm", "--transforms"],
    "finetune": ["--mode", "finetune"],
    "ewc": ["--mode", "ewc"],
    "rwalk": ["--mode", "rwalk"],
    "icarl": ["--mode", "icarl", "--feature_size", "64"],
    "gdumb": ["--mode", "gdumb"],
    "bic": ["--mode", "bic"],
    "bic_distill": ["--mode", "bic", "--distilling"],
    "joint": ["--mode", "joint"],
}
CASES = {f"{m}_{env}": [*flags, "--stream_env", env] for m, flags in METHODS.items() for env in ("online", "offline")}
CASES.update({
    "rm_disjoint_anytime": ["--mode", "rm", "--exp_name", "disjoint", "--eval_period", "400"],
    "icarl_disjoint_anytime": ["--mode", "icarl", "--exp_name", "disjoint", "--eval_period", "400",
                               "--feature_size", "64"],
    "ewc_blurry30_offline": ["--mode", "ewc", "--exp_name", "blurry30", "--stream_env", "offline",
                             "--eval_epochs", "last_task"],
    "rwalk_paper_offline": ["--mode", "rwalk", "--rwalk_score", "paper", "--reg_coef", "0.01", "--stream_env",
                            "offline", "--transforms"],
    "bic_disjoint_distill": ["--mode", "bic", "--exp_name", "disjoint", "--distilling"],
    "gdumb_disjoint": ["--mode", "gdumb", "--exp_name", "disjoint"],
    "finetune_prototype": ["--mode", "finetune", "--mem_manage", "prototype"],
})
# the i-Blurry protocol: every method, the --as_intended variants, anytime curves (10 evaluations)
IBLURRY_PER_CLASS = 100
IBLURRY_COMMON = ["--dataset", "mnist", "--device", "cpu", "--rnd_seed", "3", "--exp_name", "iblurry50_10",
                  "--memory_size", "100", "--eval_period", "100", "--n_epoch", "2", "--transforms", "cutmix",
                  "--online_iter", "0.25"]
IBLURRY_CASES = {m: ["--mode", m] for m in ("er", "ewc++", "mir", "der++", "clib", "bic", "gdumb", "rm")}
IBLURRY_CASES.update({f"{m}_intended": ["--mode", m, "--as_intended"] for m in ("ewc++", "mir", "clib", "rm")})


@dataclass(frozen=True)
class Suite:
    """One golden file: its cases, their common flags and the MNIST subset they run on."""

    golden: Path
    common: list[str]
    cases: dict[str, list[str]]
    per_class: int


SUITES = {"cvpr": Suite(GOLDEN, COMMON, CASES, PER_CLASS),
          "iblurry": Suite(GOLDEN_IBLURRY, IBLURRY_COMMON, IBLURRY_CASES, IBLURRY_PER_CLASS)}


def environment() -> dict:
    """What the numbers depend on besides the code: torch's version, the kernels used, the threads."""
    import torch
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "machine": platform.machine(),
            "pinned": {k: os.environ.get(k) for k in PINNED}}


def pinned() -> bool:
    return all(os.environ.get(k) == v for k, v in PINNED.items())


def run_case(suite: Suite, name: str, data_dir: Path, out: Path) -> dict:
    """One case through main.main; the golden numbers of its result."""
    import main as rm_main
    argv = [*suite.common, *suite.cases[name], "--data_dir", str(data_dir), "--out_dir", str(out), "--run_name", name]
    with contextlib.redirect_stderr(io.StringIO()) as err:
        rc = rm_main.main(argv)
    if rc != 0:
        raise RuntimeError(f"case {name} exited with {rc}:\n{err.getvalue()[-3000:]}")
    res = json.loads((out / "results" / "mnist" / f"{name}.json").read_text())
    return {k: res[k] for k in KEYS if k in res}


def prepared_mnist(tmp: Path, per_class: int) -> Path:
    from tests.paths import MNIST_SRC
    from utils.prepare import prepare
    prepare("mnist", source=str(MNIST_SRC), data_dir=str(tmp), per_class=per_class)
    return tmp


def run_all(suite_name: str, data_dir: Path | None, names: list[str]) -> dict:
    import torch
    torch.set_num_threads(1)
    suite = SUITES[suite_name]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = data_dir or prepared_mnist(tmp / "data", suite.per_class)
        results = {n: run_case(suite, n, data, tmp / "out") for n in names}
    return {"environment": environment(), "command": f"python -m tests.golden --suite {suite_name} --write",
            "common_flags": suite.common, "cases": {n: suite.cases[n] for n in names}, "results": results}


def main(argv: list[str] | None = None) -> int:
    if not pinned():  # the environment must be set before torch starts: run again with it
        args = sys.argv[1:] if argv is None else argv
        return subprocess.call([sys.executable, "-m", "tests.golden", *args], cwd=ROOT, env={**os.environ, **PINNED})
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=list(SUITES), default="cvpr", help="which golden file (default: cvpr)")
    p.add_argument("--write", action="store_true", help="write the suite's golden file")
    p.add_argument("--out", help="write the results here (JSON) instead")
    p.add_argument("--data_dir", help="a folder holding a prepared mnist/ of the suite's size (cvpr: 300 train and "
                                      "300 test images per class; iblurry: 100)")
    p.add_argument("--cases", nargs="*", help="a subset of the suite's cases (default: all)")
    a = p.parse_args(argv)
    suite = SUITES[a.suite]
    names = a.cases or list(suite.cases)
    unknown = sorted(set(names) - set(suite.cases))
    if unknown:
        p.error(f"unknown case(s) of suite {a.suite}: {', '.join(unknown)}; valid: {', '.join(suite.cases)}")
    if a.write and a.cases:
        p.error("--write records the whole suite: drop --cases")
    got = run_all(a.suite, Path(a.data_dir) if a.data_dir else None, names)
    text = json.dumps(got, indent=1) + "\n"
    if a.write:
        suite.golden.write_text(text)
    elif a.out:
        Path(a.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
