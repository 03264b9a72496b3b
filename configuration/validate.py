"""The one place that checks a run's configuration: every numeric flag's range, names, lists, combinations,
output paths, and (once the data is loaded) the settings against the data."""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path


class ConfigError(Exception):
    """Impossible or inconsistent settings; the message says what to do."""


@dataclass(frozen=True)
class Range:
    """lo <= value <= hi (lo < value when ``lo_open``), and finite."""

    lo: float
    hi: float
    lo_open: bool = False
    data: str = ""  # what the data adds to the range, checked once it is loaded

    def __contains__(self, v: float) -> bool:
        return math.isfinite(v) and (v > self.lo if self.lo_open else v >= self.lo) and v <= self.hi

    def __str__(self) -> str:
        lo = f"> {_num(self.lo)}" if self.lo_open else f">= {_num(self.lo)}"
        return f"{lo} and <= {_num(self.hi)}" + (f"; {self.data}" if self.data else "")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# every numeric flag and its allowed values (argparse refuses what is not a number at all)
RANGES: dict[str, Range] = {
    "rnd_seed": Range(0, 2 ** 32 - 1),
    "memory_size": Range(0, 10 ** 9, data="at most the training samples"),
    "n_tasks": Range(1, 10 ** 6, data="n_tasks x n_cls_a_task = the classes, for generated splits"),
    "n_cls_a_task": Range(1, 10 ** 6),
    "n_init_cls": Range(1, 10 ** 6, data="at most the classes"),
    "lr": Range(0, 10, lo_open=True),
    "batchsize": Range(2, 65536, data="at most the training samples"),
    "n_epoch": Range(1, 100000),
    "n_worker": Range(0, 256),
    "topk": Range(1, 1000, data="at most the classes"),
    "joint_acc": Range(0, 100),
    "feature_size": Range(1, 65536),
    "reg_coef": Range(0, 1e9),
    "eval_period": Range(0, 10 ** 9, data="0 (off) or at most the stream samples of the run"),
    "input_size": Range(1, 4096, data="resnets: at least 8; mlp400: at most 10^8 input weights"),
    "data_budget_gb": Range(0, 1e6),
    "dist_timeout": Range(10, 7 * 24 * 3600),
    "online_iter": Range(0, 1000, lo_open=True),
    "temp_batchsize": Range(1, 65536, data="at most --batchsize"),
}
# --rwalk_score paper with SGD: the largest reg_coef x lr at which online runs trained on MNIST (docs/baselines.md)
RWALK_PAPER_MAX = 0.05
# flags that only some methods read: (the modes that use it, the default filled in when unset)
METHOD_FLAGS: dict[str, tuple[tuple[str, ...], object]] = {
    "reg_coef": (("ewc", "rwalk", "ewc++"), 100),
    "rwalk_score": (("rwalk",), "public"),
    "feature_size": (("icarl",), 2048),
    "distilling": (("bic",), False),
    "online_iter": (("er", "ewc++", "mir", "der++", "clib", "bic"), 1.0),
    "as_intended": (("rm", "ewc++", "mir", "clib"), False),
}


def range_help(flag: str, text: str = "") -> str:
    """A flag's help with its allowed range."""
    return f"{text}{'; ' if text else ''}range: {RANGES[flag]}"


def check_ranges(cfg: argparse.Namespace) -> None:
    for flag, rng in RANGES.items():
        v = getattr(cfg, flag, None)
        if v is None or isinstance(v, str):  # unset optional flags; --joint_acc auto
            continue
        if v not in rng:
            raise ConfigError(f"--{flag} must be {rng.__str__().split(';')[0]} (got {v})")


def check_names(cfg: argparse.Namespace) -> None:
    """--dataset and --run_name name one folder or file: no path separators, not hidden."""
    for flag in ("dataset", "run_name"):
        v = getattr(cfg, flag)
        if v is not None and (not v or "/" in v or "\\" in v or v.startswith(".") or "\0" in v):
            raise ConfigError(f"--{flag} '{v}' must be a plain name (no '/', not empty, not starting with '.')")


def check_lists(cfg: argparse.Namespace) -> None:
    repeated = sorted({t for t in cfg.transforms if cfg.transforms.count(t) > 1})
    if repeated:
        raise ConfigError(f"--transforms lists {', '.join(repeated)} more than once; give each transform once")


def check_combinations(cfg: argparse.Namespace, stream_pass: bool) -> None:
    """Settings that cannot work together. ``stream_pass``: whether the method trains on the stream
    in an online run (gdumb and joint do not)."""
    if cfg.eval_period and (cfg.stream_env != "online" or not stream_pass):
        why = "offline runs have none" if cfg.stream_env != "online" else f"--mode {cfg.mode} trains on none"
        raise ConfigError(f"--eval_period evaluates during the online stream pass, and {why}; drop --eval_period")
    if (cfg.mode == "rwalk" and cfg.rwalk_score == "paper" and cfg.opt_name == "sgd"
            and cfg.reg_coef * cfg.lr > RWALK_PAPER_MAX * (1 + 1e-9)):
        raise ConfigError(
            f"--rwalk_score paper with sgd needs --reg_coef x --lr <= {RWALK_PAPER_MAX:g} (--reg_coef <= "
            f"{RWALK_PAPER_MAX / cfg.lr:.3g} at --lr {cfg.lr:g}); this run has {cfg.reg_coef:g} x {cfg.lr:g}. The "
            "paper's path-integral scores (about the loss decrease a parameter made, over eps = 1e-3) reach 4.6 "
            "(online) to 16 (offline) on MNIST against a Fisher below 0.005, and Nesterov SGD diverges on the "
            "penalty once lr x 2 x reg_coef x importance >= 1.36. Measured on MNIST (mlp400, lr 0.05): online runs "
            "train at --reg_coef 1 and stop at 10; offline runs train at 0.1 and stop at 1. A run whose penalty "
            "grows too stiff stops with its exact limit")
    if cfg.mode in ("gdumb", "clib") and cfg.memory_size == 0:
        raise ConfigError(f"--mode {cfg.mode} trains on the memory only, so --memory_size 0 trains nothing; give a "
                          "memory")


def check_sample_wise(cfg: argparse.Namespace, sample_wise: bool, chunked: bool) -> None:
    """The sample-wise protocol (--exp_name iblurryN_M or siblurryN_M) is online; --as_intended belongs to it;
    ``chunked``: the stream trains in chunks of --temp_batchsize (i-Blurry, or a replaying method)."""
    if cfg.as_intended and not sample_wise:
        raise ConfigError("--as_intended changes methods of the sample-wise protocol only (--exp_name iblurryN_M or "
                          "siblurryN_M); drop it for blurry/disjoint runs")
    if sample_wise and cfg.mem_manage not in (None, "default"):
        raise ConfigError(f"--mem_manage {cfg.mem_manage}: the sample-wise protocol's methods keep the memory their "
                          "papers define (docs/iblurry.md); drop --mem_manage")
    if getattr(cfg, "setting", "") == "siblurry" and (cfg.online_iter or 1.0) < 1:
        raise ConfigError(f"--online_iter {cfg.online_iter}: Si-Blurry runs int(--online_iter) updates per stream "
                          "batch, none below 1; give 1 or more")
    if sample_wise and cfg.stream_env != "online":
        raise ConfigError(f"--exp_name {cfg.exp_name} is an online protocol: use --stream_env online")
    if chunked and cfg.temp_batchsize > cfg.batchsize:
        raise ConfigError(f"--temp_batchsize {cfg.temp_batchsize} exceeds --batchsize {cfg.batchsize}: the stream "
                          "samples of a step cannot be more than its batch")


def check_device_flags(cfg: argparse.Namespace, cuda: bool, own_step: bool) -> list[str]:
    """--compile and --decode_device against the machine (``cuda``: a GPU is there) and the method (``own_step``:
    it trains with its own step, which stays eager); returns the log's notes on what they leave unchanged."""
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and cuda) else "cpu"
    if cfg.compile == "graphs" and device != "cuda":
        raise ConfigError("--compile graphs replays CUDA graphs and needs a CUDA device; on the CPU use --compile "
                          "inductor (compiled C++ kernels) or off")
    if cfg.decode_device == "cuda" and device != "cuda":
        raise ConfigError("--decode_device cuda decodes JPEGs on the run's GPU and needs a CUDA device (--device "
                          "cuda, or auto with a GPU); use --decode_device cpu or auto")
    notes = []
    if cfg.compile in ("graphs", "inductor") and own_step:
        notes.append(f"--compile {cfg.compile}: --mode {cfg.mode} trains with its own step, which runs eagerly "
                     "(the compiled step is the base step of rm, finetune, gdumb, joint and er)")
    return notes


def check_world(cfg: argparse.Namespace, world: int) -> None:
    """Under torchrun (``world`` processes): --batchsize is the global batch and is split evenly over the
    ranks; iCaRL's cutmix runs a second forward pass on each rank's own new-class rows, whose count
    differs between ranks, so the ranks' batch-norm exchanges would not pair up."""
    if world <= 1:
        return
    if cfg.batchsize % world:
        raise ConfigError(f"--batchsize {cfg.batchsize} is the global batch and must split evenly over the "
                          f"{world} torchrun processes: give a multiple of {world}, or another --nproc_per_node")
    if cfg.mode == "icarl" and "cutmix" in cfg.transforms:
        raise ConfigError("--mode icarl with cutmix cannot run under torchrun (each rank mixes a different number "
                          "of new-class samples); drop cutmix from --transforms or run one process")


def unused_flags(args: argparse.Namespace) -> list[str]:
    """Method flags given on the command line that this --mode does not read (they are ignored,
    and the log says so); must be called before ``fill_method_flags``."""
    out = []
    for flag, (modes, default) in METHOD_FLAGS.items():
        v = getattr(args, flag)
        if v is not None and v is not False and args.mode not in modes:
            out.append(f"--{flag} is read by --mode {' / '.join(modes)} only; ignored by --mode {args.mode}")
    return out


def grey_fold_unused(cfg: argparse.Namespace, data_channels: int, optimizer_kind: str | None) -> list[str]:
    """--grey_fold all/off where it changes nothing (it acts on mlp400 fed grey images, trained with SGD or with
    Adam without weight decay: ``optimizer_kind``, the method's)."""
    if cfg.grey_fold == "auto" or (cfg.model_name == "mlp400" and data_channels == 1 and cfg.in_channels > 1
                                   and optimizer_kind is not None):
        return []
    return [f"--grey_fold {cfg.grey_fold} has no effect here: it applies to mlp400 with 3 input channels fed grey "
            f"images and trained with sgd, or with the Adam of the ER family (this run: {cfg.model_name}, "
            f"--in_channels {cfg.in_channels}, {data_channels}-channel images, {cfg.mode} with {cfg.opt_name})"]


def fill_method_flags(args: argparse.Namespace) -> None:
    for flag, (_, default) in METHOD_FLAGS.items():
        if getattr(args, flag) is None:
            setattr(args, flag, default)


def check_output(out_dir: str) -> None:
    """--out_dir must be a folder this process can write, or one it can create."""
    p = Path(out_dir)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--out_dir {p} is a file, not a folder; give a folder for logs/, results/, ...")
    q = p
    while not q.exists():
        q = q.parent
    if not q.is_dir():
        raise ConfigError(f"--out_dir {p} cannot be created: {q} is a file")
    if not os.access(q, os.W_OK | os.X_OK):
        raise ConfigError(f"--out_dir {p} cannot be written ({q} is not writable); give another folder")


def check_classes(cfg: argparse.Namespace, n_classes: int) -> None:
    """Generated splits need n_tasks x n_cls_a_task classes."""
    if cfg.n_tasks * cfg.n_cls_a_task != n_classes:
        raise ConfigError(f"{n_classes} classes cannot be divided into --n_tasks {cfg.n_tasks} x "
                          f"--n_cls_a_task {cfg.n_cls_a_task}")


MLP_MAX_INPUT_WEIGHTS = 10 ** 8  # mlp400's first layer: 400 x C x H x W weights at most
RESNET_MIN_SIDE = 8  # the resnets' stages halve the resolution 3 times (measured: 1x1 and 3x3 inputs give NaN)


def check_against_data(cfg: argparse.Namespace, n_classes: int, task_sizes: list[int], data_channels: int,
                       side: int) -> None:
    """What needs the data: the memory and the batch against the training samples, the head and
    top-k against the classes, the anytime period against the stream, the model against the images
    (channels, and mlp400's input size); fills --in_channels when unset."""
    n_train = sum(task_sizes)
    if cfg.memory_size > n_train:
        raise ConfigError(f"--memory_size {cfg.memory_size} is larger than the {n_train} training samples")
    if cfg.n_init_cls > n_classes:
        raise ConfigError(f"--n_init_cls {cfg.n_init_cls} exceeds the {n_classes} classes of {cfg.dataset}")
    if cfg.topk > n_classes:
        raise ConfigError(f"--topk {cfg.topk} exceeds the {n_classes} classes of {cfg.dataset}")
    if cfg.batchsize > n_train:
        raise ConfigError(f"--batchsize {cfg.batchsize} is larger than the {n_train} training samples: no batch "
                          f"could be formed")
    if cfg.eval_period > n_train:
        raise ConfigError(f"--eval_period {cfg.eval_period} is longer than the {n_train} stream samples of the run: "
                          f"nothing would be evaluated")
    if cfg.in_channels is None:
        cfg.in_channels = 3 if cfg.model_name == "mlp400" else data_channels
    elif cfg.in_channels != data_channels and not (data_channels == 1 and cfg.in_channels == 3):
        raise ConfigError(f"--in_channels {cfg.in_channels} does not fit {cfg.dataset}'s {data_channels}-channel "
                          f"images (grey images may feed a 3-channel model, not the reverse)")
    if cfg.model_name.startswith("resnet") and side < RESNET_MIN_SIDE:
        raise ConfigError(f"{cfg.model_name} halves its resolution three times, so {side}x{side} images leave it "
                          f"nothing to learn from (its loss becomes NaN); give --input_size {RESNET_MIN_SIDE} or more")
    weights = 400 * cfg.in_channels * side * side
    if cfg.model_name == "mlp400" and weights > MLP_MAX_INPUT_WEIGHTS:
        raise ConfigError(f"mlp400 on {side}x{side} images would need {weights:,} input weights (at most "
                          f"{MLP_MAX_INPUT_WEIGHTS:,}); give a smaller --input_size or a resnet --model_name")
