"""benchmarks/bench_protocol.py --quick: each protocol runs every phase through main.py on its stand-in."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.paths import FASHION_SRC, ROOT

PROTOCOLS = {"cifar10": (10, 32, ".png", "test"), "cifar100": (100, 32, ".png", "test"),
             "imagenet": (10, 64, ".jpg", "val")}  # --quick stand-ins: classes, side, file type, test split
PHASES = ("stream_pass", "memory_update", "memory_epochs", "evaluation")
TRAINING = ("stream_pass", "memory_epochs")


def bench(out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_protocol.py"), "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[str, dict, Path]:
    """One --quick run of the three protocols on the CPU: its stdout, its JSON and its work folder."""
    if not any((FASHION_SRC / f"train-images-idx3-ubyte{gz}").is_file() for gz in ("", ".gz")):
        pytest.skip(f"Fashion-MNIST IDX files not found in {FASHION_SRC}")
    out = tmp_path_factory.mktemp("bench_protocol")
    p = bench(out, "--quick", "--device", "cpu", "--fashion", str(FASHION_SRC), "--profile")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout, json.loads((out / "bench_protocol.json").read_text()), out


def test_every_protocol_runs_every_phase(quick):
    _, report, _ = quick
    assert report["quick"] is True and report["device"] == "cpu" and "STAND-IN" in report["stand_in"]
    assert set(report["derivation"]) == {"time_s", "samples", "steps", "peak_gpu_mib"}
    assert set(report["protocols"]) == set(PROTOCOLS)
    for name, f in report["protocols"].items():
        assert f["ok"] and f["exit_code"] == 0, name
        assert set(PHASES) <= set(f["phases"]), (name, f["phases"])
        for phase in PHASES:
            v = f["phases"][phase]
            assert v["time_s"] > 0 and v["samples"] > 0 and v["samples_per_s"] > 0, (name, phase, v)
            assert v["peak_gpu_mib"] is None, (name, phase)  # the CPU: n/a
            if phase in TRAINING:
                assert v["steps"] > 0 and v["steps_per_s"] > 0, (name, phase, v)
            else:  # no optimizer steps in the memory update (uncertainty views) or the evaluation
                assert v["steps"] is None and v["steps_per_s"] is None, (name, phase, v)
        assert f["wall_time_s"] > sum(v["time_s"] for v in f["phases"].values()) and f["other_s"] > 0
        assert isinstance(f["A_last"], float) and 0 <= f["A_last"] <= 100, (name, f["A_last"])
        assert f["n_epoch"] == 1 and f["eval_epochs"] == "last_task" and f["peak_gpu_mib_run"] is None
        assert (f["compile"], f["amp"]) == ("auto", "off")
        # --profile: the top operators of each phase's first epoch and of the first evaluation (CPU times only)
        assert set(f["profiles"]) == {"stream_pass", "memory_epochs", "evaluation"}, f["profiles"]
        for line in f["profiles"].values():
            assert re.fullmatch(r"self CPU \d+ ms: .+ \d+% \(\d+x\)", line), line
        assert "aten::" in f["profiles"]["stream_pass"]


def test_runs_went_through_main_with_the_protocol_flags(quick):
    _, report, _ = quick
    for name, f in report["protocols"].items():
        res = json.loads(Path(f["results"]).read_text())
        assert res["A_last"] == f["A_last"] and res["phase_time_s"]["stream_pass"] == \
            f["phases"]["stream_pass"]["time_s"]
        cfg = res["config"]
        assert (cfg["mode"], cfg["exp_name"], cfg["stream_env"]) == ("rm", "blurry10", "online")
        assert cfg["transforms"] == ["cutmix", "autoaug"] and cfg["uncert_metric"] == "vr_randaug"
        assert cfg["model_name"] == {"cifar10": "resnet18", "cifar100": "resnet32", "imagenet": "resnet34"}[name]
        assert len(res["task_acc"]) == cfg["n_tasks"] == 2
        # the counted steps against what the results file implies of RM's batches: memory epochs in batches of
        # B // 2 (last partial kept); stream batches of B - B // 2 stream samples plus 1 to B // 2 memory samples
        b, half = f["batchsize"], f["batchsize"] // 2
        mem = sum(len(e) * math.ceil(sum(c) / half) for e, c in zip(res["epochs"], res["memory_class_counts"]))
        assert f["phases"]["memory_epochs"]["steps"] == mem, name
        stream = f["phases"]["stream_pass"]
        assert stream["steps"] * (b - half + 1) <= stream["samples"] <= stream["steps"] * b, (name, stream)


def test_stand_ins_have_the_real_layout(quick):
    """CIFAR stand-ins went through utils.prepare (PNG folders); the ImageNet-shaped one is a JPEG folder."""
    _, _, out = quick
    for name, (classes, side, ext, test_split) in PROTOCOLS.items():
        root = out / "quick" / "data" / name
        for split in ("train", test_split):
            folders = sorted(d for d in (root / split).iterdir() if d.is_dir())
            assert len(folders) == classes, (name, split)
            first = next(folders[0].glob(f"*{ext}"))
            with Image.open(first) as im:
                assert im.size == (side, side) and im.mode == "RGB", (name, first)
        if name != "imagenet":
            assert json.loads((root / "prepared.json").read_text())["dataset"] == name


def test_prints_a_table_per_protocol(quick):
    out, _, _ = quick
    assert "STAND-IN DATA" in out and "how each figure is derived" in out
    for name in PROTOCOLS:
        assert re.search(rf"^== {name}: .*QUICK", out, re.M), name
    for phase in ("stream pass", "memory epochs"):  # time, steps, steps/s, samples, samples/s, peak n/a
        assert len(re.findall(rf"^{phase}\s+[\d.]+\s+\d+\s+[\d.]+\s+\d+\s+[\d.]+\s+n/a$", out, re.M)) == 3, out
    assert len(re.findall(r"^evaluation\s+[\d.]+\s+n/a\s+n/a\s+\d+\s+[\d.]+\s+n/a$", out, re.M)) == 3, out
    assert len(re.findall(r"A_last \d+\.\d\d \| A_last_final \d+\.\d\d \(stand-in", out)) == 3


def test_skips_without_fashion_mnist(tmp_path):
    p = bench(tmp_path, "--quick", "--device", "cpu", env={"RM_FASHION_SRC": str(tmp_path / "absent")})
    assert p.returncode == 0 and p.stdout.startswith("SKIPPED: no Fashion-MNIST"), p.stdout + p.stderr
    assert not (tmp_path / "bench_protocol.json").exists()


def test_probe_keeps_nested_phase_peaks_apart(monkeypatch):
    """The per-phase GPU peaks (no GPU here: torch.cuda's two counters faked): a phase's peak is what was
    allocated while it ran, a nested phase's own peak is not charged to the phase around it."""
    spec = importlib.util.spec_from_file_location("bench_protocol", ROOT / "benchmarks" / "bench_protocol.py")
    bp = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_protocol", bp)  # its dataclasses look their module up there
    spec.loader.exec_module(bp)
    mem = {"now": 0, "peak": 0}

    def reset(*_) -> None:
        mem["peak"] = mem["now"]

    def alloc(n: int) -> None:
        mem["now"], mem["peak"] = n, max(mem["peak"], n)

    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *_: mem["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    probe = bp.Probe(torch.device("cuda"))
    with probe.phase("run"):
        alloc(100 << 20)
        with probe.phase("memory_epochs"):
            alloc(500 << 20)
            with probe.phase("evaluation"):
                alloc(900 << 20)
                alloc(300 << 20)
            alloc(400 << 20)
        alloc(50 << 20)
    assert {k: probe.mib(k) for k in probe.peak} == {"run": 400, "memory_epochs": 500, "evaluation": 900}
    assert probe.overall == 900 << 20 and probe.mib("stream_pass") is None and not probe.stack
