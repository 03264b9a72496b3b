"""The paper's RM protocols end to end through main.py on stand-ins: per phase time, steps/s, samples/s, GPU peak.

  python benchmarks/bench_protocol.py --quick --device cpu           # a few steps of each protocol (the test suite)
  python benchmarks/bench_protocol.py --device cuda --only cifar10   # the full CIFAR-10 protocol (a GPU; minutes)

No CIFAR or ImageNet can be downloaded where this runs, so each protocol trains on a STAND-IN of
the real shape built from Fashion-MNIST (the Debian package, $RM_FASHION_SRC or --fashion):
resized and coloured per class, written as a CIFAR-format archive (prepared by `python -m
utils.prepare`, like the real archive) or, for the ImageNet-shaped run, as a JPEG folder. Its
accuracy is a sanity check only. Each run is main.py's main() in this process, so the per-phase
GPU peaks can be read. Without Fashion-MNIST it prints SKIPPED and exits 0. Figures also go to
<out>/bench_protocol.json; exit 1 when a run failed, 2 when --device cuda finds no GPU.
"""
from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import pickle
import shlex
import shutil
import sys
import tarfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from io import BytesIO
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import main as rm_main  # noqa: E402
from methods.engine.trainer import PHASE_TIMER  # noqa: E402
from utils.data.decode import DataError  # noqa: E402
from utils.data.run_data import resolve_device  # noqa: E402
from utils.prepare.build import find_source  # noqa: E402
from utils.prepare.cifar import SPECS  # noqa: E402
from utils.prepare.cli import main as prepare_main  # noqa: E402
from utils.prepare.idx import read_split  # noqa: E402

FASHION_NAMES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
TINT_NAMES = ("red", "orange", "yellow", "lime", "green", "teal", "cyan", "blue", "purple", "pink")
PALETTE = np.array([[255, 40, 40], [255, 140, 0], [240, 230, 40], [150, 255, 40], [30, 200, 60],
                    [20, 160, 150], [40, 230, 255], [40, 80, 255], [150, 50, 230], [255, 90, 200]], np.float32)
STAND_IN = ("STAND-IN DATA: Fashion-MNIST garments resized and coloured per class, in the real dataset's shape and "
            "file format; NOT CIFAR or ImageNet. Accuracy is a sanity check only.")
COMMON = {"--mode": "rm", "--exp_name": "blurry10", "--stream_env": "online", "--transforms": ["cutmix", "autoaug"],
          "--uncert_metric": "vr_randaug"}


@dataclass(frozen=True)
class StandIn:
    """A stand-in dataset: ``classes`` (10, or 100 = 10 tints x 10 garments), images per class, side, format."""

    classes: int
    train: int  # per class
    test: int  # per class
    side: int
    fmt: str  # "cifar10", "cifar100" (archive, prepared by utils.prepare) or "jpeg" (image folder)


@dataclass(frozen=True)
class Protocol:
    """One protocol: main.py's flags (beyond COMMON) and its stand-in, in full and --quick."""

    name: str
    dataset: str
    title: str
    flags: dict
    data: StandIn
    quick_flags: dict
    quick_data: StandIn
    note: str = ""


PROTOCOLS = {p.name: p for p in (
    Protocol("cifar10", "cifar10", "CIFAR-10: rm, blurry10 online, resnet18, 5 tasks, memory 500, 256 epochs, batch 16",
             {"--dataset": "cifar10", "--model_name": "resnet18", "--n_tasks": "5", "--memory_size": "500",
              "--n_epoch": "256", "--batchsize": "16"}, StandIn(10, 5000, 1000, 32, "cifar10"),
             {"--n_tasks": "2", "--n_cls_a_task": "5", "--memory_size": "10", "--n_epoch": "1"},
             StandIn(10, 4, 2, 32, "cifar10")),
    Protocol("cifar100", "cifar100", "CIFAR-100: rm, blurry10 online, resnet32, 5 tasks, memory 2000, 256 epochs, "
             "batch 16", {"--dataset": "cifar100", "--model_name": "resnet32", "--n_tasks": "5",
                          "--memory_size": "2000", "--n_epoch": "256", "--batchsize": "16"},
             StandIn(100, 500, 100, 32, "cifar100"),
             {"--n_tasks": "2", "--n_cls_a_task": "50", "--memory_size": "50", "--n_epoch": "1"},
             StandIn(100, 1, 1, 32, "cifar100")),
    Protocol("imagenet", "imagenet", "ImageNet-shaped, REDUCED: rm, blurry10 online, resnet34 at 224x224, 100 classes "
             "in 10 tasks, memory 1000, 3 epochs, batch 256, top-5",
             {"--dataset": "imagenet", "--model_name": "resnet34", "--n_tasks": "10", "--n_cls_a_task": "10",
              "--n_init_cls": "100", "--memory_size": "1000", "--n_epoch": "3", "--batchsize": "256", "--topk": "5"},
             StandIn(100, 100, 20, 224, "jpeg"),
             {"--n_tasks": "2", "--n_cls_a_task": "5", "--n_init_cls": "10", "--memory_size": "10", "--n_epoch": "1",
              "--batchsize": "16"}, StandIn(10, 4, 2, 64, "jpeg"),
             note="reduced from ImageNet's 1,000 classes x ~1,281 train / 50 val images, memory 20,000 (20 per "
                  "class; here 10) and 100 epochs to 100 classes x 100 train / 20 val JPEGs, memory 1,000 and "
                  "3 epochs"),
)}
TRAIN_PHASES = {"stream_pass": "stream", "memory_epochs": "memory", "offline_epochs": "offline"}
OTHER_SAMPLES = {"memory_update": "uncertainty_views", "evaluation": "evaluation"}
DERIVATION = {
    "time_s": "phase_time_s of the run's results file (the trainer's timers; evaluation is its own phase, "
              "excluded from the others); other = wall_time_s minus the phases (start-up, data loading, logs)",
    "samples": "phase_samples of the results file: stream pass and memory epochs = training samples; memory "
               "update = uncertainty views forwarded (12 per candidate); evaluation = test images forwarded",
    "steps": "optimizer steps = training batches, counted by a Trainer subclass the bench puts in main.py's place "
             "(the results file holds no step counts, and samples / batchsize is wrong for RM: its stream batches "
             "carry a partial memory half when the memory is not a multiple of batchsize // 2); n/a for phases "
             "without optimizer steps",
    "peak_gpu_mib": "torch.cuda.max_memory_allocated within the phase (tensors; the allocator reserves more), "
                    "read by the same Trainer subclass; n/a on the CPU",
}


# ----------------------------------------------------------------------------- stand-in data

def fashion_source(given: str | None) -> Path | None:
    """The folder with Fashion-MNIST's IDX files: --fashion, else $RM_FASHION_SRC, else utils.prepare's known
    places (the Debian package, ../shared/datasets/fashion_mnist); None when the one asked for lacks them."""
    for cand in (given, os.environ.get("RM_FASHION_SRC")):
        if cand:
            ok = any((Path(cand) / f"train-images-idx3-ubyte{gz}").is_file() for gz in ("", ".gz"))
            return Path(cand) if ok else None
    return find_source("fashion_mnist")


def class_name(c: int, n_classes: int) -> str:
    """Class c of a stand-in: 10 classes = garment c in tint c; 100 = garment c % 10 in tint c // 10."""
    return f"{TINT_NAMES[c // 10 if n_classes > 10 else c]}_{FASHION_NAMES[c % 10]}"


def select(labels: np.ndarray, n_classes: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (standard order) and stand-in labels: the i-th image of garment k goes to tint i % (n_classes // 10),
    stand-in class tint * 10 + k; the first ``per_class`` of each stand-in class are kept."""
    n_tints = n_classes // 10
    rank = np.zeros(len(labels), np.int64)
    for k in range(10):
        at = np.flatnonzero(labels == k)
        rank[at] = np.arange(len(at))
    keep = np.flatnonzero(rank // n_tints < per_class)
    derived = (rank % n_tints) * 10 + labels.astype(np.int64)
    counts = np.bincount(derived[keep], minlength=n_classes)
    if counts.min() < per_class:
        raise SystemExit(f"Fashion-MNIST holds too few images for {per_class} per class of {n_classes} classes")
    return keep, derived[keep]


def render(grey: np.ndarray, labels: np.ndarray, n_classes: int, side: int, seed: int) -> np.ndarray:
    """uint8 [N,side,side,3]: each garment resized (bilinear) and drawn in its class's tint (brightness jittered)
    over a dark random background, with light noise."""
    rng = np.random.default_rng(seed)
    g = np.stack([np.asarray(Image.fromarray(x).resize((side, side), Image.BILINEAR)) for x in grey])
    g = g.astype(np.float32)[..., None] / 255.0
    tint = labels // 10 if n_classes > 10 else labels
    fg = PALETTE[tint] * rng.uniform(0.7, 1.0, (len(g), 1)).astype(np.float32)
    bg = rng.uniform(0, 60, (len(g), 3)).astype(np.float32)
    img = g * fg[:, None, None] + (1 - g) * bg[:, None, None] + 6 * rng.standard_normal(g.shape[:3] + (3,),
                                                                                          np.float32)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def render_split(fashion: tuple[np.ndarray, np.ndarray], d: StandIn, per_class: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in split in chunks: images [N,side,side,3] uint8 and labels [N]."""
    keep, labels = select(fashion[1], d.classes, per_class)
    chunks = [render(fashion[0][keep[s:s + 4096]], labels[s:s + 4096], d.classes, d.side, seed + s)
              for s in range(0, len(keep), 4096)]
    return np.concatenate(chunks), labels


def _pickled(obj: dict) -> bytes:
    # protocol 4: arrays rebuilt by numpy's _reconstruct, bytes as bytes (Python 3's protocol 2 calls
    # _codecs.encode, which utils.prepare.cifar's restricted unpickler refuses, as it should)
    return pickle.dumps(obj, protocol=4)


def write_cifar_archive(path: Path, d: StandIn, fashion: dict, seed: int) -> None:
    """A CIFAR-format python archive (``cifar-10-python.tar.gz`` or ``cifar-100-python.tar.gz`` layout)."""
    spec = SPECS[d.fmt]
    names = [class_name(c, d.classes) for c in range(d.classes)]
    members = {}
    for split, per, files in (("train", d.train, spec.train), ("test", d.test, spec.test)):
        images, labels = render_split(fashion[split], d, per, seed + (0 if split == "train" else 1))
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # R, G, B planes per row
        for name, part in zip(files, np.array_split(np.arange(len(rows)), len(files))):
            batch = {"data": rows[part], spec.label_key.decode(): labels[part].tolist(),
                     "batch_label": f"stand-in {name}", "filenames": [f"{i}.png" for i in part.tolist()]}
            if d.fmt == "cifar100":
                batch["coarse_labels"] = (labels[part] % 10).tolist()
            members[name] = _pickled(batch)
    meta = {spec.names_key.decode(): names}
    if d.fmt == "cifar100":
        meta["coarse_label_names"] = list(FASHION_NAMES)
    members[spec.meta] = _pickled(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"{spec.folder}/{name}")
            info.size = len(blob)
            tar.addfile(info, BytesIO(blob))
    os.replace(tmp, path)


def _write_jpegs(job: tuple[str, np.ndarray, np.ndarray, int, int, int]) -> int:
    """Worker: one class of one split of the JPEG folder (quality 90)."""
    folder, grey, labels, n_classes, side, seed = job
    Path(folder).mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(render(grey, labels, n_classes, side, seed)):
        Image.fromarray(img).save(Path(folder) / f"{i:05d}.jpg", quality=90)
    return len(grey)


def write_jpeg_folder(root: Path, d: StandIn, fashion: dict, seed: int, workers: int) -> None:
    """root/train|val/<class>/<n>.jpg (ImageNet's layout: val/ is the test split), written beside and moved in."""
    tmp = root.with_name(f".{root.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    jobs = []
    for split, per, src in (("train", d.train, "train"), ("val", d.test, "test")):
        keep, labels = select(fashion[src][1], d.classes, per)
        for c in range(d.classes):
            at = keep[labels == c]
            jobs.append((str(tmp / split / class_name(c, d.classes)), fashion[src][0][at], labels[labels == c],
                         d.classes, d.side, seed + 7919 * c + (0 if split == "train" else 1)))
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            pool.map(_write_jpegs, jobs)
    else:
        for job in jobs:
            _write_jpegs(job)
    (tmp / "prepared.json").write_text(json.dumps({"stand_in": asdict(d), "seed": seed}) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)


def prepare_stand_in(p: Protocol, d: StandIn, data_dir: Path, src: Path, workers: int, force: bool) -> str:
    """The stand-in of ``p`` under data_dir/<dataset> (kept for reruns); a line saying what it is."""
    what = (f"{d.classes} classes x {d.train} train / {d.test} {'val' if d.fmt == 'jpeg' else 'test'} images, "
            f"{d.side}x{d.side} RGB")
    target = data_dir / p.dataset
    stamp = json.dumps({"stand_in": asdict(d), "seed": 0})
    if d.fmt == "jpeg":
        if force or not (target / "prepared.json").is_file() or \
                (target / "prepared.json").read_text().strip() != stamp:
            write_jpeg_folder(target, d, load_fashion(src), 0, workers)
        return f"{what}, JPEG folder {target}"
    archive = data_dir / "sources" / p.dataset / SPECS[d.fmt].archive
    if force or not (archive.is_file() and (target / "prepared.json").is_file()):
        write_cifar_archive(archive, d, load_fashion(src), 0)
        force = True
    argv = ["--dataset", d.fmt, "--source", str(archive), "--data_dir", str(data_dir), "--workers", str(workers)]
    argv += ["--no_count_check"] * (d.train * d.classes != 50000 or d.test * d.classes != 10000) + ["--force"] * force
    if prepare_main(argv) != 0:
        raise SystemExit(f"python -m utils.prepare {' '.join(argv)} failed")
    return f"{what}, archive {archive} -> python -m utils.prepare {' '.join(argv)}"


_FASHION: dict[str, dict] = {}


def load_fashion(src: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST's splits, {split: (images [N,28,28], labels [N])}, read once with utils.prepare's IDX reader."""
    if str(src) not in _FASHION:
        _FASHION[str(src)] = {s: read_split(src, s) for s in ("train", "test")}
    return _FASHION[str(src)]


# ----------------------------------------------------------------------------- what main.py's trainer does

class Probe:
    """What the results file does not hold: optimizer steps per training phase (the batches the trainer ran) and
    the peak allocated CUDA memory per phase, nested phases apart (the running phase's peak is folded in before a
    nested one starts, then the counter is reset); peaks only on CUDA. With ``profile``, the first epoch of each
    training phase and the first evaluation run under torch.profiler: ``profiles`` holds each one's top operators."""

    def __init__(self, device: torch.device, profile: bool = False) -> None:
        self.on = device.type == "cuda"
        self.profile = profile
        self.profiles: dict[str, str] = {}
        self.peak: dict[str, int] = {}
        self.steps: dict[str, int] = defaultdict(int)
        self.stack: list[str] = []
        self.overall = 0
        if self.on:
            torch.cuda.reset_peak_memory_stats(device)

    def _fold(self) -> None:
        value = torch.cuda.max_memory_allocated()
        self.overall = max(self.overall, value)
        if self.stack:
            self.peak[self.stack[-1]] = max(self.peak.get(self.stack[-1], 0), value)
        torch.cuda.reset_peak_memory_stats()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self.on:
            yield
            return
        self._fold()
        self.stack.append(name)
        try:
            yield
        finally:
            self._fold()
            self.stack.pop()

    def mib(self, name: str) -> float | None:
        return self.peak[name] / 2 ** 20 if name in self.peak else None

    @contextmanager
    def profiled(self, name: str) -> Iterator[None]:
        """Profile the block when ``profile`` is on and ``name`` has no profile yet."""
        if not self.profile or name in self.profiles:
            yield
            return
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * self.on
        with profile(activities=acts) as prof:
            yield
        if self.on:
            torch.cuda.synchronize()
        self.profiles[name] = profile_line(prof, self.on)


def profile_line(prof, cuda: bool, top: int = 4) -> str:
    """The operators that dominate a profiled block: share of self CPU time (and of self CUDA time on a GPU)."""
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    parts = []
    for label, attr in [("self CPU", "self_cpu_time_total")] + [("self CUDA", "self_device_time_total")] * cuda:
        total = sum(getattr(e, attr, 0) for e in events) or 1
        best = sorted(events, key=lambda e: getattr(e, attr, 0), reverse=True)[:top]
        parts.append(f"{label} {total / 1e3:.0f} ms: " + ", ".join(
            f"{e.key} {100 * getattr(e, attr, 0) / total:.0f}% ({e.count}x)" for e in best))
    return " | ".join(parts)


def probed_trainer(base: type, probe: Probe) -> type:
    """``base`` (methods.engine.trainer.Trainer) with each timed hook and each evaluation inside ``probe.phase`` and the
    batches of each training epoch counted (one optimizer step each)."""

    class ProbedTrainer(base):
        def timed(self, phase: str, fn, *args):
            with probe.phase(phase):
                return super().timed(phase, fn, *args)

        def evaluate(self, test_idx: torch.Tensor) -> dict:
            with probe.phase("evaluation"), probe.profiled("evaluation"):
                return super().evaluate(test_idx)

        def run_epoch(self, phase: str, epoch: int, batches: list[torch.Tensor]) -> tuple[float, float]:
            probe.steps[PHASE_TIMER[phase]] += len(batches)
            with probe.profiled(PHASE_TIMER[phase]):
                return super().run_epoch(phase, epoch, batches)

    return ProbedTrainer


# ----------------------------------------------------------------------------- running and figures

def flags_to_argv(flags: dict) -> list[str]:
    argv: list[str] = []
    for k, v in flags.items():
        argv += [k, *(v if isinstance(v, list) else [v])]
    return argv


def run_argv(p: Protocol, a: argparse.Namespace, data_dir: Path, out_dir: Path) -> list[str]:
    """main.py's flags of ``p`` (its --quick overrides, --epochs, --eval_epochs) and where to read and write."""
    flags = {**COMMON, **p.flags, **(p.quick_flags if a.quick else {})}
    if a.epochs:
        flags["--n_epoch"] = str(a.epochs)
    flags.update({"--eval_epochs": a.eval_epochs or ("last_task" if a.quick else "all"), "--rnd_seed": str(a.seed),
                  "--compile": a.compile, "--amp": a.amp,
                  "--device": a.device, "--data_dir": str(data_dir), "--out_dir": str(out_dir),
                  "--run_name": f"bench_{p.name}"})
    return flags_to_argv(flags) + shlex.split(a.extra)


def run_main(argv: list[str], device: torch.device, profile: bool = False) -> tuple[int, float, Probe]:
    """main.main(argv) in this process with the probed trainer in main's place; exit code, seconds, the probe."""
    gc.collect()  # the previous protocol's tensors, before this run's peaks are read
    probe = Probe(device, profile)
    plain = rm_main.Trainer
    rm_main.Trainer = probed_trainer(plain, probe)
    t0 = time.perf_counter()
    try:
        with probe.phase("run"):
            rc = rm_main.main(argv)
    finally:
        rm_main.Trainer = plain
    return rc, time.perf_counter() - t0, probe


def rate(n: float | None, s: float) -> float | None:
    return None if n is None or s <= 0 else n / s


def phase_figures(res: dict, probe: Probe) -> dict[str, dict]:
    """{phase: time_s, steps, steps_per_s, samples, samples_per_s, peak_gpu_mib} of every timed phase."""
    out = {}
    for phase, sec in res["phase_time_s"].items():
        key = TRAIN_PHASES.get(phase) or OTHER_SAMPLES.get(phase)
        samples = res["phase_samples"].get(key) if key else None
        steps = probe.steps.get(phase) if phase in TRAIN_PHASES else None
        out[phase] = {"time_s": sec, "steps": steps, "steps_per_s": rate(steps, sec), "samples": samples,
                      "samples_per_s": rate(samples, sec), "peak_gpu_mib": probe.mib(phase)}
    return out


def bench_one(p: Protocol, a: argparse.Namespace, src: Path, device: torch.device) -> dict:
    """Prepare the stand-in of ``p``, run it through main(), read its results; the protocol's figures."""
    work = Path(a.out) / ("quick" if a.quick else "full")
    d = p.quick_data if a.quick else p.data
    print_head(p, a.quick)
    t0 = time.perf_counter()
    data_line = prepare_stand_in(p, d, work / "data", src, 1 if a.quick else min(8, os.cpu_count() or 1), a.rebuild)
    prep_s = time.perf_counter() - t0
    out_dir = work / "runs" / p.name
    shutil.rmtree(out_dir, ignore_errors=True)  # a fresh run: results/<dataset>/bench_<name>.json is this run's
    argv = run_argv(p, a, work / "data", out_dir) + ["--dry_run"] * a.dry_run
    rc, main_s, probe = run_main(argv, device, a.profile)
    fig = {"title": p.title, "quick": a.quick, "note": p.note, "data": data_line, "stand_in": asdict(d),
           "prepare_s": prep_s, "command": "python main.py " + " ".join(argv), "exit_code": rc, "main_s": main_s,
           "peak_gpu_mib_run": probe.overall / 2 ** 20 if probe.on else None}
    res_file = out_dir / "results" / p.dataset / f"bench_{p.name}.json"
    if a.dry_run:
        return {**fig, "ok": rc == 0, "dry_run": True}
    if rc != 0 or not res_file.is_file():
        return {**fig, "ok": False}
    res = json.loads(res_file.read_text())
    batch = int(res["config"]["batchsize"])
    phases = phase_figures(res, probe)
    other = res["wall_time_s"] - sum(v["time_s"] for v in phases.values())
    return {**fig, "ok": True, "results": str(res_file), "batchsize": batch, "n_epoch": res["config"]["n_epoch"],
            "eval_epochs": res["config"]["eval_epochs"], "compile": a.compile, "amp": a.amp,
            "profiles": probe.profiles, "phases": phases, "other_s": other,
            "wall_time_s": res["wall_time_s"], "A_last": res["A_last"], "A_last_final": res["A_last_final"],
            "device": res["device"]}


def cell(v: float | int | None, fmt: str, width: int) -> str:
    return f"{'n/a':>{width}}" if v is None else f"{v:>{width}{fmt}}"


def print_head(p: Protocol, quick: bool) -> None:
    print(f"\n== {p.name}: {p.title}{' (QUICK: a few steps on tiny data, not the protocol)' if quick else ''}")
    if p.note:
        print(f"   {p.note}")
    sys.stdout.flush()  # before utils.prepare's and main()'s output


def print_table(f: dict) -> None:
    print(f"   data ({f['prepare_s']:.1f} s to make): {f['data']}")
    print(f"   {f['command']}")
    if not f["ok"]:
        print(f"   FAILED: main() returned {f['exit_code']} (its log is above, on stderr)")
        return
    if f.get("dry_run"):
        print("   DRY RUN: the stand-in is ready and main.py --dry_run accepted the settings, the data and the split")
        return
    print(f"{'phase':<22}{'time s':>10}{'steps':>9}{'steps/s':>10}{'samples':>11}{'samples/s':>11}"
          f"{'peak GPU MiB':>14}")
    for phase, v in f["phases"].items():
        print(f"{phase.replace('_', ' '):<22}{v['time_s']:>10.2f}{cell(v['steps'], 'd', 9)}"
              f"{cell(v['steps_per_s'], '.2f', 10)}{cell(v['samples'], 'd', 11)}{cell(v['samples_per_s'], '.1f', 11)}"
              f"{cell(v['peak_gpu_mib'], '.0f', 14)}")
    print(f"{'other (start-up, data)':<22}{f['other_s']:>10.2f}")
    print(f"{'run (wall_time_s)':<22}{f['wall_time_s']:>10.2f}{'':>41}{cell(f['peak_gpu_mib_run'], '.0f', 14)}")
    print(f"   A_last {f['A_last']:.2f} | A_last_final {f['A_last_final']:.2f} (stand-in: sanity check only) | "
          f"batch {f['batchsize']}, {f['n_epoch']} epoch(s), --eval_epochs {f['eval_epochs']}, --compile "
          f"{f['compile']}, --amp {f['amp']} | {f['results']}")
    for phase, line in f["profiles"].items():
        print(f"   profile of the first {phase.replace('_', ' ')} (its time above includes the profiler): {line}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a few steps of each protocol on tiny stand-ins (CPU, the test suite), not the protocol")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default="/tmp/bench_protocol", help="work folder: stand-in data (kept), runs, JSON")
    p.add_argument("--only", nargs="+", choices=list(PROTOCOLS), default=list(PROTOCOLS))
    p.add_argument("--fashion", default=None, help="folder with Fashion-MNIST's IDX files (default: $RM_FASHION_SRC, "
                                                   "/usr/share/datasets/fashion-mnist, ../shared/datasets/...)")
    p.add_argument("--epochs", type=int, default=None, help="override every protocol's epochs (then REDUCED)")
    p.add_argument("--eval_epochs", choices=["all", "last_task"], default=None,
                   help="main.py's --eval_epochs (default: all, the protocol; --quick: last_task)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--compile", choices=["auto", "off", "graphs", "inductor"], default="auto",
                   help="main.py's --compile (auto: CUDA graphs on a GPU, eager on the CPU)")
    p.add_argument("--amp", choices=["off", "bf16"], default="off", help="main.py's --amp")
    p.add_argument("--extra", default="", metavar="FLAGS",
                   help="further main.py flags for every run, as one string: --extra='--decode_device cuda "
                        "--data_budget_gb 0'")
    p.add_argument("--profile", action="store_true",
                   help="profile the first epoch of each training phase and the first evaluation; print their top "
                        "operators (those phases' times then include the profiler's overhead)")
    p.add_argument("--rebuild", action="store_true", help="write the stand-in data again")
    p.add_argument("--dry_run", action="store_true",
                   help="make the stand-ins and check each run with main.py --dry_run; no training, no figures")
    a = p.parse_args(argv)
    if a.epochs is not None and a.epochs < 1:
        p.error("--epochs must be at least 1")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    src = fashion_source(a.fashion)
    if src is None:
        print("SKIPPED: no Fashion-MNIST IDX files found (--fashion, $RM_FASHION_SRC, the Debian package "
              "dataset-fashion-mnist at /usr/share/datasets/fashion-mnist); the stand-ins are made from it")
        return 0
    try:
        device = resolve_device(a.device)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device} ({name}) | torch {torch.__version__}, {torch.get_num_threads()} thread(s) | "
          f"Fashion-MNIST from {src}\n{STAND_IN}")
    if a.epochs:
        print(f"REDUCED: --epochs {a.epochs} replaces every protocol's epochs")
    report = {"stand_in": STAND_IN, "quick": a.quick, "device": str(device), "device_name": name,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "seed": a.seed, "epochs": a.epochs,
              "derivation": DERIVATION, "protocols": {}}
    for p_name in a.only:
        report["protocols"][p_name] = f = bench_one(PROTOCOLS[p_name], a, src, device)
        print_table(f)
    print("\nhow each figure is derived:\n" + "\n".join(f"  {k}: {v}" for k, v in DERIVATION.items()))
    out = Path(a.out) / "bench_protocol.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"figures: {out}")
    return 0 if all(f["ok"] for f in report["protocols"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
