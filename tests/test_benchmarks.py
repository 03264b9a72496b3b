"""The benchmark scripts run end to end on tiny settings and print their tables (figures are
read by people, never asserted: speed is machine-dependent)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench(script: str, *args: str) -> str:
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--device", "cpu", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def test_bench_cifar_prints_both_pipelines():
    out = bench("bench_cifar.py", "--n", "96", "--batch", "16", "--steps", "3", "--warmup", "1", "--eval_samples", "40",
                "--workers", "0", "--aug_chunk", "32", "--autoaug")
    assert "ours 32 samples per call" in out
    rows = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(ours|baseline)\s+(\d+)", out, re.M)}
    assert set(rows) == {"ours", "baseline"} and all(v > 0 for v in rows.values())
    assert re.search(r"ours/baseline: train \d+\.\d\dx \| eval \d+\.\d\dx", out)


def test_bench_stream_reads_ahead(tmp_path):
    out = bench("bench_stream.py", "--root", str(tmp_path / "jpegs"), "--n", "48", "--classes", "3", "--side", "40",
                "--input_size", "32", "--model", "resnet18", "--batch", "8", "--chunk", "16", "--workers", "2")
    assert len(list((tmp_path / "jpegs" / "train").glob("class*/*.jpg"))) == 48
    # 3 chunks of 16: read-ahead 0 decodes only the first chunk early, 1 and 2 every image
    assert re.search(r"read-ahead 0\s+[\d.]+\s+\d+\s+16/48$", out, re.M), out
    assert re.search(r"read-ahead 1\s+[\d.]+\s+\d+\s+48/48$", out, re.M), out
    assert re.search(r"read-ahead 2\s+[\d.]+\s+\d+\s+48/48$", out, re.M), out
    assert "streamed/in-memory epoch time" in out


def test_bench_methods_prints_every_phase(mnist_dir: Path):
    """EWC's importance pass is its own phase; GDumb has no stream pass; the public ratio is printed."""
    out = bench("bench_methods.py", "--modes", "ewc", "gdumb", "--data_dir", str(mnist_dir), "--extra",
                "--n_epoch", "1", "--memory_size", "50")
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.split() and ln.split()[0] in ("ewc", "gdumb")}
    assert set(rows) == {"ewc", "gdumb"}, out
    ewc, gdumb = rows["ewc"], rows["gdumb"]
    # process wall, the run's own wall, stream pass, importance
    assert all(float(v) > 0 for v in ewc[1:5]) and float(ewc[1]) > float(ewc[2])
    assert gdumb[3] == "-" and gdumb[4] == "-"  # no stream pass, no importance
    assert ewc[-1].endswith("x") and float(ewc[-1][:-1]) > 0


def test_bench_iblurry_runs_ours_and_skips_a_missing_clib_code(mnist_dir: Path, tmp_path):
    out = bench("bench_iblurry.py", "--data_dir", str(mnist_dir), "--work", str(tmp_path / "work"), "--methods", "er",
                "--every", "5", "--memory", "50", "--threads", "1", "--clib_src", str(tmp_path / "none"), "--profile", "20,10",
                "--floor", "--floor_eager", "--floor_steps", "3")
    assert "SKIPPED the CLIB side" in out
    row = next(line for line in out.splitlines() if line.startswith("| er |"))
    assert re.search(r"\| - / \d+ \|", row)  # our steps, no CLIB figures
    assert re.search(r"^\| er \| \d+ \| \d+\.\d \|", out.split("profiled")[1].split("\n", 3)[3])  # the profile row
    floor = re.search(r"^\| er \| (\d+) \| (\d+\.\d) \| (\d+\.\d) \| (\d+\.\d\d)x \|$", out.split("their floor")[1], re.M)
    assert floor, out  # the eager step's time, the run's floor, ours, and their ratio
    step_us, floor_s, ours_s, ratio = map(float, floor.groups())
    assert step_us > 0 and 0 < floor_s and abs(ours_s / floor_s - ratio) < 0.02 * ratio + 0.01


def test_bench_step_floor_prints_the_step_against_its_kernels():
    out = bench("bench_step_floor.py", "--no_compile", "--steps", "3", "--rounds", "2", "--threads", "1", "--memory",
                "50")
    rows = dict(re.findall(r"^\| ([a-zA-Z'0-9 (),+]+) \| (\d+) \|", out, re.M))
    methods = ("er", "der++", "ewc++", "bic")
    assert set(rows) == {f"{m} eager step" for m in methods} | {"matrix products (7)", "fused Adam kernel",
                                                                  "clib's memory pass (50 images)"}, out
    assert all(int(v) > 0 for v in rows.values())
    for m in methods:  # --no_compile: a run's floor at the eager step's time
        assert re.search(rf"^floor of a run: {re.escape(m)} 10000 steps x eager step = \d+\.\d s$", out, re.M), out
    assert re.search(r"35\.8 MFLOP per step, \d+ GFLOP/s", out)  # batch 16: 2 x 16 x (3 x 477,600 - 313,600)
