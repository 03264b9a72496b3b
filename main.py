"""Entry point: parse flags -> build the run (data, method, writer) -> drive the tasks -> write results."""
from __future__ import annotations

import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from configuration.config import ConfigError, base_parser, resolve
from methods import build_method, get_method_class, method_names
from methods.base import DivergedError
from utils import checkpoint, metrics, tb
from utils.checkpoint import checkpoint_path
from utils.data import (STATS, DataError, RunData, dataset_missing_message, default_budget_bytes, fmt_bytes,
                        fmt_floats, load_split, resolve_device)
from utils.runtime import tune_allocator
from utils.run_io import (RunBusyError, claim_run, close_logging, default_run_name, reserve_run, setup_logging,
                          write_json, write_npy)
from utils.splits import SplitError, load_or_make, read_collection, validate_against
from utils.tasks import build_streams

USER_ERRORS = (ConfigError, DataError, SplitError)


def set_seed(seed: int) -> None:
    """Seed every generator; on a GPU, cuDNN picks deterministic kernels (no autotuning)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def prepare_run(cfg):
    """Everything that can fail because of the user's input, before any output or training."""
    device = resolve_device(cfg.device)
    set_seed(cfg.rnd_seed)
    root = Path(cfg.data_dir) / cfg.dataset
    if not (root / "train").is_dir():
        raise DataError(dataset_missing_message(root, cfg.dataset))
    if cfg.input_size is not None and cfg.input_size < 1:
        raise ConfigError(f"--input_size must be >= 1 (got {cfg.input_size})")
    if cfg.data_budget_gb is not None and not cfg.data_budget_gb >= 0:
        raise ConfigError(f"--data_budget_gb must be >= 0 (got {cfg.data_budget_gb})")
    budget, budget_source = default_budget_bytes(device, cfg.data_budget_gb)
    table = STATS.get(cfg.dataset)
    load = dict(size=cfg.input_size, use_cache=not cfg.no_cache, n_workers=cfg.n_worker)
    train = load_split(root, "train", budget=budget, derive_stats=table is None, **load)
    test_split = "test" if (root / "test").is_dir() else "val"
    # the test split gets what the training split left of the budget
    test = load_split(root, test_split, budget=max(0, budget - (0 if train.streaming else train.nbytes)), **load)
    if train.classes != test.classes:
        raise DataError(f"{root}: train and {test_split} class folders differ")
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(f"{root}: train images are {'x'.join(map(str, train.images.shape[1:]))} (CxHxW) but "
                        f"{test_split} images are {'x'.join(map(str, test.images.shape[1:]))}; give --input_size N "
                        f"to resize both to N x N")
    n_classes = len(train.classes)
    if cfg.collections_dir:
        tr_tasks, te_tasks = read_collection(Path(cfg.collections_dir), cfg.dataset, cfg.exp_name, cfg.rnd_seed,
                                             cfg.n_cls_a_task, cfg.n_tasks)
        validate_against(tr_tasks, te_tasks, set(train.files) | set(test.files))
    else:
        if cfg.n_tasks * cfg.n_cls_a_task != n_classes:
            raise ConfigError(f"{n_classes} classes cannot be divided into --n_tasks {cfg.n_tasks} x "
                              f"--n_cls_a_task {cfg.n_cls_a_task}")
        tr_tasks, te_tasks = load_or_make(Path(cfg.out_dir) / "collections" / cfg.dataset, cfg.dataset, cfg.exp_name,
                                          cfg.rnd_seed, cfg.n_cls_a_task, cfg.n_tasks, train.class_files(),
                                          test.class_files())
    streams = build_streams(tr_tasks, te_tasks, train, test, n_classes, cfg.debug)
    n_train = sum(len(t) for t in streams.train)
    if cfg.memory_size > n_train:
        raise ConfigError(f"--memory_size {cfg.memory_size} is larger than the {n_train} training samples")
    if cfg.n_init_cls > n_classes:
        raise ConfigError(f"--n_init_cls {cfg.n_init_cls} exceeds the {n_classes} classes of {cfg.dataset}")
    if cfg.mode == "rm" and cfg.batchsize < 2:
        raise ConfigError("rm needs --batchsize >= 2 (half of each batch comes from memory)")
    data_ch = train.images.shape[1]
    if cfg.in_channels is None:
        cfg.in_channels = 3 if cfg.model_name == "mlp400" else data_ch
    elif cfg.in_channels != data_ch and not (data_ch == 1 and cfg.in_channels == 3):
        raise ConfigError(f"--in_channels {cfg.in_channels} does not fit {cfg.dataset}'s {data_ch}-channel images "
                          f"(grey images may feed a 3-channel model, not the reverse)")
    side = train.images.shape[-1]
    if table is None:
        mean, std = train.mean, train.std
        cached = "" if cfg.no_cache else f" (cached in {root / '.cache'})"
        stats = (f"derived from the training images{cached}: "
                 f"{data_ch} channel(s), input size {side}, mean {fmt_floats(mean)}, std {fmt_floats(std)}")
    else:
        mean, std, table_side = table
        stats = f"{cfg.dataset}'s table: mean {fmt_floats(mean)}, std {fmt_floats(std)}; input size {side}"
        if cfg.input_size is None and side != table_side:
            stats += f" (the table's is {table_side}; --input_size {table_side} resizes to it)"
    info = (f"{train.info}; {test.info}; budget {fmt_bytes(budget)} ({budget_source}); "
            f"{'resized to' if cfg.input_size else 'images'} {side}x{side}; mean/std {stats}")
    data = RunData(train.to(device), test.to(device), streams.train_labels.to(device), streams.test_labels.to(device),
                   tuple(mean), tuple(std), n_classes, streams.task_classes, info)
    tasks = [(a.to(device), b.to(device)) for a, b in zip(streams.train, streams.test)]
    if getattr(get_method_class(cfg.mode), "single_task", False):
        tasks = [(torch.cat([a for a, _ in tasks]), torch.cat([b for _, b in tasks]))]
    if cfg.joint_acc == "auto":
        cfg.joint_acc, cfg.joint_acc_source = find_joint_acc(cfg)
    return device, data, tasks


def find_joint_acc(cfg) -> tuple[float, str]:
    """A_last of the newest finished joint run on the same dataset, seed and model
    (preferring the same split and transforms)."""
    folder = Path(cfg.out_dir) / "results" / cfg.dataset
    found = []
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            r = json.loads(p.read_text())
            c = r["config"]
            if c["mode"] != "joint" or c["rnd_seed"] != cfg.rnd_seed or c["model_name"] != cfg.model_name:
                continue
            rank = (c.get("exp_name") == cfg.exp_name, c.get("transforms") == list(cfg.transforms), p.stat().st_mtime)
            found.append((rank, float(r["A_last"]), str(p)))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not found:
        raise ConfigError(f"--joint_acc auto: no joint result for {cfg.dataset} seed {cfg.rnd_seed} "
                          f"({cfg.model_name}) in {folder}; run main.py --mode joint first or give a number")
    _, acc, path = max(found)
    return acc, path


def eval_indices(cfg, tasks, t: int) -> torch.Tensor:
    """blurry: the test sets of all tasks; disjoint: tasks 0..t."""
    upto = t + 1 if cfg.exp_name == "disjoint" else len(tasks)
    return torch.cat([tasks[i][1] for i in range(upto)])


def drive(cfg, method, tasks, log, writer, state: dict | None = None, on_task_done=None) -> dict:
    """Call each hook once per task in a fixed order and collect the per-task records; with a
    checkpoint ``state``, continue after its task; ``on_task_done(t, rec, timers)`` after each task."""
    rec = defaultdict(list, state["rec"] if state else {})
    timers = defaultdict(float, state["timers"] if state else {})
    first = state["task"] + 1 if state else 0
    def timed(phase: str, fn, *a):
        """Run a hook; its time, less the evaluation inside it, goes to ``phase``."""
        e0, t0 = method.eval_time, time.perf_counter()
        out = fn(*a)
        timers[phase] += time.perf_counter() - t0 - (method.eval_time - e0)
        return out

    for t, (stream, _) in enumerate(tasks):
        if t < first:
            continue
        method.last_task = t == len(tasks) - 1
        method.before_task(t, stream, eval_indices(cfg, tasks, t))
        if cfg.stream_env == "online":
            timed("stream_pass", method.train_stream, t)
            timed("memory_update", method.update_memory, t)
            res = timed("memory_epochs", method.train_memory, t)
        else:
            res = timed("offline_epochs", method.train_offline, t)
            timed("memory_update", method.update_memory, t)
        method.after_task(t)
        rec["task_acc"].append(res.best_acc)
        rec["task_acc_final"].append(res.last["avg_acc"])
        rec["cls_acc"].append(res.last["cls_acc"])
        rec["epochs"].append(res.epochs)
        rec["memory_class_counts"].append(method.memory.class_counts(method.data.n_classes))
        log.info("Task %d done: task_acc (best epoch) %.2f | final model %.2f", t, res.best_acc, res.last["avg_acc"])
        if writer is not None:
            writer.add_scalar("Metrics/TaskAcc", res.best_acc, t)
            writer.add_scalar("Metrics/TaskAccFinal", res.last["avg_acc"], t)
            for c, a in enumerate(res.last["cls_acc"]):
                if a is not None:
                    writer.add_scalar(f"ClassAcc/class_{c}", a, t)
            tb.log_task(writer, method, t, rec["cls_acc"], method.data.task_classes)
        if on_task_done is not None:
            on_task_done(t, rec, timers)
    rec["phase_time_s"] = dict(timers)
    rec["phase_time_s"]["evaluation"] = method.eval_time
    rec["phase_samples"] = dict(method.samples)
    return rec


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(method_names())
    args = parser.parse_args(argv)
    start = time.perf_counter()
    tune_allocator()
    try:
        cfg = resolve(args)
        device, data, tasks = prepare_run(cfg)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(cfg.out_dir)
    state = None
    lock = None
    if cfg.resume:
        run_name = cfg.run_name or default_run_name(cfg)
        done = out / "results" / cfg.dataset / f"{run_name}.json"
        if done.exists():
            print(f"--resume: {run_name} already finished ({done}); nothing to do", file=sys.stderr)
            return 0
        ckpt = checkpoint_path(out, cfg.dataset, run_name)
        try:
            lock = claim_run(out, cfg.dataset, run_name)
        except RunBusyError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        try:
            state = checkpoint.load(ckpt, dict(vars(cfg)), device) if ckpt.exists() else None
        except checkpoint.CheckpointError as e:
            lock.unlink(missing_ok=True)
            print(f"error: {e}", file=sys.stderr)
            return 2
        log_file = out / "logs" / cfg.dataset / f"{run_name}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
    else:
        run_name, log_file = reserve_run(out, cfg.dataset, cfg.run_name or default_run_name(cfg))
        ckpt = checkpoint_path(out, cfg.dataset, run_name)
    log = setup_logging(log_file)
    config = dict(vars(cfg), run_name=run_name, device_resolved=str(device))
    write_json(out / "logs" / cfg.dataset / f"{run_name}.config.json", config)
    log.info("Run %s on %s | config %s", run_name, device, json.dumps(config))
    log.info("Data: %s", data.info)
    if cfg.resume:
        log.info("--resume: %s", f"continuing after task {state['task']} from {ckpt}" if state else
                 f"no checkpoint in {ckpt}: starting from the first task")
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(str(out / "tensorboard" / cfg.dataset / run_name))
    wall_before = state["wall_s"] if state else 0.0

    def task_done(t: int, rec: dict, timers: dict) -> None:
        checkpoint.save(ckpt, t, method, rec, timers, config, wall_before + time.perf_counter() - start)

    try:
        method = build_method(cfg.mode, cfg, data, device, writer)
        if state:
            checkpoint.restore(method, state)
        config["mem_manage_resolved"] = method.mem_manage
        try:
            rec = drive(cfg, method, tasks, log, writer, state, task_done)
        except DivergedError as e:
            kept = f"the checkpoint after task {e.task_id - 1} is kept ({ckpt})" if ckpt.exists() else "no task finished"
            log.error("%s; %s. Lower --lr (or check the data) and start the run again.", e, kept)
            return 3
        summary = metrics.summarize(rec["task_acc"], rec["task_acc_final"], rec["cls_acc"], data.task_classes,
                                    cfg.joint_acc)
        result = {"config": config, **summary, "task_acc": rec["task_acc"], "task_acc_final": rec["task_acc_final"],
                  "cls_acc": rec["cls_acc"], "task_classes": data.task_classes,
                  "memory_class_counts": rec["memory_class_counts"], "epochs": rec["epochs"],
                  "phase_time_s": rec["phase_time_s"], "phase_samples": rec["phase_samples"], "wall_time_s": wall_before + time.perf_counter() - start,
                  "device": str(device),
                  "notes": {"task_acc": "best test accuracy over the epochs of each task's final training call "
                                        "(public code protocol; model selection on the test set)",
                            "task_acc_final": "test accuracy of the model at the end of each task",
                            "units": "percent"}}
        if cfg.eval_period:
            result["anytime"] = method.anytime
            result["A_auc"] = metrics.a_auc([p["acc"] for p in method.anytime])
            result["notes"]["anytime"] = (f"accuracy on the test samples of the exposed classes every {cfg.eval_period} "
                                          "stream samples of the online stream pass; A_auc = their mean")
            log.info("A_auc %.2f over %d anytime evaluations", result["A_auc"], len(method.anytime))
        if cfg.eval_epochs == "last_task":
            result["notes"]["eval_epochs"] = ("last_task: before the final task only the last epoch of each training "
                                              "call was evaluated, so task_acc of earlier tasks is their final-model "
                                              "accuracy; A_last and A_last_final are as with 'all'")
        tb.log_hparams(writer, config, {k: v for k, v in result.items() if k.startswith(("A_", "F_", "I_"))})
        write_npy(out / "results" / cfg.dataset / f"{run_name}.npy", rec["task_acc"])
        write_json(out / "results" / cfg.dataset / f"{run_name}.json", result)
        log.info("A_last %.2f | A_avg %.2f | F_last %.2f | I_last %.2f | A_last_final %.2f | wall %.1f s",
                 summary["A_last"], summary["A_avg"], summary["F_last"], summary["I_last"],
                 summary["A_last_final"], result["wall_time_s"])
        log.info("results: %s", out / "results" / cfg.dataset / f"{run_name}.json")
        ckpt.unlink(missing_ok=True)  # the results are final; the checkpoint is not needed any more
    finally:
        writer.close()
        close_logging()
        if lock is not None:
            lock.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
