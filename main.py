"""Entry point: parse flags -> build the run (data, tasks, outputs) -> the trainer runs the method -> write results."""
from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch

from configuration.config import ConfigError, base_parser, resolve
from configuration.validate import (check_against_data, check_classes, check_device_flags, check_world,
                                    grey_fold_unused, unused_flags)
from methods import build_method, get_method_class, method_names
from methods.engine.common import method_config
from methods.engine.trainer import Settings, StopRun, Trainer
from utils.data.decode import DataError
from utils.data.run_data import RunData, load_splits, normalisation, resolve_device, to_device
from utils.data.iblurry import load_or_make_iblurry, parse_iblurry, read_clib_collection, relabel
from utils.data.siblurry import load_or_make_siblurry, parse_siblurry, task_lines
from utils.data.splits import SplitError, load_or_make, read_collection, validate_against
from utils.data.tasks import build_streams
from utils.report import metrics
from utils.report.joint import find_joint_acc
from utils.run import checkpoint, dist, tb
from utils.run.atomic import write_json, write_npy
from utils.run.logs import close_logging, setup_logging
from utils.run.names import RunBusyError, RunPaths, claim_run, default_run_name, reserve_run
from utils.run.runtime import tune_allocator

USER_ERRORS = (ConfigError, DataError, SplitError, checkpoint.CheckpointError, RunBusyError)
DIST_ERRORS = ((dist.RankStopped, torch.distributed.DistError, RuntimeError) if torch.distributed.is_available()
               else (dist.RankStopped, RuntimeError))
T = TypeVar("T")
NOTES = {"task_acc": "best test accuracy over the epochs of each task's final training call "
                     "(public code protocol; model selection on the test set)",
         "task_acc_final": "test accuracy of the model at the end of each task",
         "units": "percent"}


def set_seed(seed: int) -> None:
    """Seed every generator; on a GPU, cuDNN picks deterministic kernels (no autotuning)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


Tasks = list[tuple[torch.Tensor, torch.Tensor]]


def build_run(cfg: argparse.Namespace) -> tuple[torch.device, RunData, Tasks]:
    """Everything that can fail because of the user's input, before any output or training: the
    device, the data and its task split (generated, or read from --collections_dir)."""
    device = resolve_device(cfg.device)
    set_seed(cfg.rnd_seed)
    root = Path(cfg.data_dir) / cfg.dataset
    train, test, info = load_splits(root, cfg.dataset, device, cfg.data_budget_gb, cfg.input_size, not cfg.no_cache,
                                    cfg.n_worker, cfg.decode_device)
    n_classes = len(train.classes)
    spec = parse_iblurry(cfg.exp_name) or parse_siblurry(cfg.exp_name)
    if spec is not None:  # i-Blurry, Si-Blurry: CLIB-format split files, labels by order of appearance
        folder = Path(cfg.collections_dir) if cfg.collections_dir else Path(cfg.out_dir) / "collections" / cfg.dataset
        if cfg.collections_dir:
            tr_tasks, te_tasks = relabel(*read_clib_collection(folder, cfg.dataset, cfg.n_tasks, spec, cfg.rnd_seed))
        elif cfg.setting == "siblurry":
            tr_tasks, te_tasks = load_or_make_siblurry(folder, cfg.dataset, spec, cfg.rnd_seed, cfg.n_tasks,
                                                       train.files, train.classes, test.class_files())
        else:
            tr_tasks, te_tasks = load_or_make_iblurry(folder, cfg.dataset, spec, cfg.rnd_seed, cfg.n_tasks,
                                                      train.class_files(), test.class_files())
        validate_against(tr_tasks, te_tasks, set(train.files) | set(test.files))
    elif cfg.collections_dir:
        tr_tasks, te_tasks = read_collection(Path(cfg.collections_dir), cfg.dataset, cfg.exp_name, cfg.rnd_seed,
                                             cfg.n_cls_a_task, cfg.n_tasks)
        validate_against(tr_tasks, te_tasks, set(train.files) | set(test.files))
    else:
        check_classes(cfg, n_classes)
        tr_tasks, te_tasks = load_or_make(Path(cfg.out_dir) / "collections" / cfg.dataset, cfg.dataset, cfg.exp_name,
                                          cfg.rnd_seed, cfg.n_cls_a_task, cfg.n_tasks, train.class_files(),
                                          test.class_files())
    streams = build_streams(tr_tasks, te_tasks, train, test, n_classes, cfg.debug)
    check_against_data(cfg, n_classes, [len(t) for t in streams.train], train.images.shape[1], train.images.shape[-1])
    mean, std, stats = normalisation(cfg.dataset, train, root, cfg.input_size, not cfg.no_cache)
    data, tasks = to_device(train, test, streams, mean, std, f"{info}; mean/std {stats}", device)
    if get_method_class(cfg.mode).single_task:
        tasks = [(torch.cat([a for a, _ in tasks]), torch.cat([b for _, b in tasks]))]
    if cfg.joint_acc == "auto":
        found = find_joint_acc(Path(cfg.out_dir) / "results" / cfg.dataset, cfg.rnd_seed, cfg.model_name,
                               cfg.exp_name, cfg.transforms)
        if found is None:
            raise ConfigError(f"--joint_acc auto: no joint result for {cfg.dataset} seed {cfg.rnd_seed} "
                              f"({cfg.model_name}) in {Path(cfg.out_dir) / 'results' / cfg.dataset}; run main.py "
                              f"--mode joint first or give a number")
        cfg.joint_acc, cfg.joint_acc_source = found
    return device, data, tasks


def open_run(cfg: argparse.Namespace, out: Path) -> tuple[RunPaths, dict | None, Path | None] | None:
    """The run's paths, its checkpoint state (--resume) and lock; None when a resumed run already finished."""
    if not cfg.resume:
        name, _ = reserve_run(out, cfg.dataset, cfg.run_name or default_run_name(cfg))
        return RunPaths(out, cfg.dataset, name), None, None
    paths = RunPaths(out, cfg.dataset, cfg.run_name or default_run_name(cfg))
    if paths.results.exists():
        print(f"--resume: {paths.name} already finished ({paths.results}); nothing to do", file=sys.stderr)
        return None
    lock = claim_run(out, cfg.dataset, paths.name)
    try:
        want = dict(vars(cfg), run_name=paths.name)
        state = checkpoint.load(paths.checkpoint, want) if paths.checkpoint.exists() else None
    except checkpoint.CheckpointError:
        lock.unlink(missing_ok=True)
        raise
    paths.log.parent.mkdir(parents=True, exist_ok=True)
    return paths, state, lock


def open_run_everywhere(cfg: argparse.Namespace, out: Path) -> tuple[RunPaths, dict | None, Path | None] | None:
    """open_run on rank 0 (name, lock, checkpoint); every other rank gets its name and checkpoint state."""
    opened = open_run(cfg, out) if dist.info().main else None
    if not dist.info().active:
        return opened
    shared = dist.broadcast(None if opened is None else (opened[0].name, opened[1]))
    if shared is None:
        return None
    return opened if dist.info().main else (RunPaths(out, cfg.dataset, shared[0]), shared[1], None)


def main_first(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 first (it may write the decoded-image cache), then on the other ranks; a user
    error on rank 0 stops every rank with it."""
    if not dist.info().active:
        return fn()
    if dist.info().main:
        try:
            out = fn()
        except USER_ERRORS as e:
            dist.broadcast(str(e))
            raise
        dist.broadcast(None)
        return out
    error = dist.broadcast(None)
    if error is not None:
        raise ConfigError(error)
    return fn()


def decoded_per_rank(data: RunData, device: torch.device) -> list[int] | None:
    """Training images each rank decoded, for a split streamed from disk (every rank calls it); else None."""
    decoded = getattr(data.train.images, "decoded", None)
    if decoded is None:
        return None
    counts = torch.zeros(dist.info().world, dtype=torch.long, device=device)
    counts[dist.info().rank] = decoded
    return dist.all_sum(counts).tolist()


def result_record(cfg: argparse.Namespace, config: dict, rec: dict, trainer: Trainer, data: RunData,
                  device: torch.device, wall: float, decoded: list[int] | None = None) -> dict:
    """The results file of a finished run."""
    summary = metrics.summarize(rec["task_acc"], rec["task_acc_final"], rec["cls_acc"], data.task_classes,
                                None if cfg.joint_acc is None else float(cfg.joint_acc))
    result = {"config": config, **summary, **{k: rec[k] for k in ("task_acc", "task_acc_final", "cls_acc")},
              "task_classes": data.task_classes,
              **{k: rec[k] for k in ("memory_class_counts", "epochs", "phase_time_s", "phase_samples")},
              "wall_time_s": wall, "device": str(device), "world_size": dist.info().world,
              "backend": dist.info().backend or "none", "notes": dict(NOTES)}
    if decoded is not None:
        result["decoded_train_images_per_rank"] = decoded
    if cfg.protocol == "sample_wise":
        result["F_last"] = metrics.f_last_per_class(rec["cls_acc"])
        result["notes"]["F_last"] = ("i-Blurry and Si-Blurry: the mean, over classes with a non-zero best accuracy "
                                     "before the last task, of that best accuracy minus the class's accuracy after "
                                     "the last task")
    if cfg.eval_period and trainer.anytime:  # joint, one offline task, has no anytime curve
        result["anytime"] = trainer.anytime
        result["A_auc"] = metrics.a_auc([p["acc"] for p in trainer.anytime])
        result["notes"]["anytime"] = (f"accuracy on the test samples of the exposed classes every {cfg.eval_period} "
                                      "stream samples of the online stream pass; A_auc = their mean")
    if cfg.eval_epochs == "last_task":
        result["notes"]["eval_epochs"] = ("last_task: before the final task only the last epoch of each training "
                                          "call was evaluated, so task_acc of earlier tasks is their final-model "
                                          "accuracy; A_last and A_last_final are as with 'all'")
    if summary["I_last"] is None:
        result["notes"]["I_last"] = "no joint accuracy given (--joint_acc N or auto), so I_last is not computed"
    return result


def fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def start_log(cfg: argparse.Namespace, paths: RunPaths, device: torch.device, data: RunData, state: dict | None,
              ignored: list[str]) -> tuple[logging.Logger, dict]:
    """The run's log (file and stderr) and its saved configuration; ``ignored``: flags this run does not read."""
    main_rank = dist.info().main
    log = setup_logging(paths.log if main_rank else None, rank=None if main_rank else dist.info().rank)
    config = dict(vars(cfg), run_name=paths.name, device_resolved=str(device))
    if main_rank:
        write_json(paths.config, config)
    log.info("Run %s on %s | config %s", paths.name, device, json.dumps(config))
    log.info("Data: %s", data.info)
    if dist.info().active:
        log.info("torchrun: %d processes (%s); --batchsize %d is the global batch, %d per rank; rank 0 writes the "
                 "outputs", dist.info().world, dist.info().backend, cfg.batchsize, cfg.batchsize // dist.info().world)
    if cfg.pretrain:
        log.warning("--pretrain is ignored: no pretrained weights are used (the flag is accepted so that the "
                    "public scripts run)")
    for text in ignored:
        log.warning(text)
    if cfg.resume:
        log.info("--resume: %s", f"continuing after task {state['task']} from {paths.checkpoint}" if state else
                 f"no checkpoint in {paths.checkpoint}: starting from the first task")
    return log, config


def build_trainer(cfg: argparse.Namespace, data: RunData, tasks: Tasks, device: torch.device, writer,
                  state: dict | None) -> Trainer:
    """The method and its trainer, restored from a checkpoint ``state`` (with the RNG states)."""
    view = method_config(cfg)  # Si-Blurry: the stream batch is the method's temporary batch
    method = build_method(cfg.mode, view, data, device, writer)
    trainer = Trainer(method, data, tasks, Settings.from_config(cfg), writer)
    if state:
        method.load_state_dict(state["method"])
        trainer.load_state_dict(state["trainer"])
        checkpoint.set_rng_state(state["rng"])
    return trainer


def write_results(log: logging.Logger, writer, paths: RunPaths, result: dict, task_acc: list[float]) -> None:
    tb.log_hparams(writer, result["config"], {k: v for k, v in result.items() if k.startswith(("A_", "F_", "I_"))})
    write_npy(paths.npy, task_acc)
    write_json(paths.results, result)
    log.info("A_last %s | A_avg %s | F_last %s | I_last %s | A_last_final %s | wall %.1f s",
             *(fmt(result[k]) for k in ("A_last", "A_avg", "F_last", "I_last", "A_last_final")), result["wall_time_s"])
    log.info("results: %s", paths.results)


def train_and_write(cfg: argparse.Namespace, device: torch.device, data: RunData, tasks: Tasks, paths: RunPaths,
                    state: dict | None, start: float,
                    ignored: list[str]) -> int:
    """Train (continuing after the checkpoint ``state``), checkpoint after every task, write the results."""
    log, config = start_log(cfg, paths, device, data, state, ignored)
    if cfg.setting == "siblurry":
        names, label = data.train.classes, data.train.folder_label
        for line in task_lines([[names[k] for k in label[s].tolist()] for s, _ in tasks]):
            log.info("Si-Blurry split: %s", line)
    main_rank = dist.info().main  # only rank 0 writes: log file, TensorBoard, checkpoints, results
    writer = None
    if main_rank:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(paths.tensorboard))
    wall = (state["wall_s"] if state else 0.0) - start  # + perf_counter(): the run's wall time so far
    try:
        trainer = build_trainer(cfg, data, tasks, device, writer, state)
        config["mem_manage_resolved"] = trainer.method.mem_manage

        def task_done(t: int) -> None:
            if not main_rank:
                return
            checkpoint.save(paths.checkpoint, {
                "task": t, "method": trainer.method.state_dict(), "trainer": trainer.state_dict(),
                "rng": checkpoint.rng_state(), "config": checkpoint.comparable(config),
                "wall_s": wall + time.perf_counter()})
        try:
            rec = trainer.run(state["task"] + 1 if state else 0, task_done)
        except StopRun as e:
            kept = (f"the checkpoint after task {e.task_id - 1} is kept ({paths.checkpoint})"
                    if paths.checkpoint.exists() else "no task finished")
            log.error("%s; %s. %s", e, kept, e.advice)
            return 3
        except DIST_ERRORS as e:
            if not dist.info().active:
                raise
            kept = (f"the checkpoint of the last finished task is kept ({paths.checkpoint})"
                    if paths.checkpoint.exists() else "no task finished")
            what = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            log.error("rank %d: the torchrun run stopped (%s); %s. Start the same torchrun command again with "
                      "--resume.", dist.info().rank, what, kept)
            return 1
        decoded = decoded_per_rank(data, device)
        if not main_rank:
            return 0
        result = result_record(cfg, config, rec, trainer, data, device, wall + time.perf_counter(), decoded)
        if "A_auc" in result:
            log.info("A_auc %.2f over %d anytime evaluations", result["A_auc"], len(trainer.anytime))
        write_results(log, writer, paths, result, rec["task_acc"])
        paths.checkpoint.unlink(missing_ok=True)  # the results are final; the checkpoint is not needed any more
    finally:
        if writer is not None:
            writer.close()
        close_logging()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = base_parser(method_names()).parse_args(argv)
    start = time.perf_counter()
    tune_allocator()
    try:
        ignored = unused_flags(args)
        cfg = resolve(args)
        check_world(cfg, dist.env_world())
        own_step = not get_method_class(cfg.mode).graph_step_ok()
        ignored += check_device_flags(cfg, torch.cuda.is_available(), own_step)
        if not cfg.dry_run:
            dist.init(resolve_device(cfg.device).type, cfg.dist_timeout)
            dist.stop_on_sigterm()
        device, data, tasks = main_first(lambda: build_run(cfg))
        ignored += grey_fold_unused(cfg, data.train.images.shape[1],
                                   get_method_class(cfg.mode).form(cfg.follow).optimizer_kind(cfg))
        opened = None if cfg.dry_run else open_run_everywhere(cfg, Path(cfg.out_dir))
    except USER_ERRORS as e:
        if dist.info().main:
            print(f"error: {e}", file=sys.stderr)
        dist.shutdown()
        return 2
    if cfg.dry_run:
        print(f"--dry_run: the settings, the data and the split are valid ({len(tasks)} task(s), "
              f"{sum(len(a) for a, _ in tasks)} training samples); resolved settings: "
              f"{json.dumps(dict(vars(cfg)), default=str)}")
        return 0
    if opened is None:
        dist.shutdown()
        return 0
    paths, state, lock = opened
    try:
        return train_and_write(cfg, device, data, tasks, paths, state, start, ignored)
    finally:
        if lock is not None:
            lock.unlink(missing_ok=True)
        dist.shutdown()


if __name__ == "__main__":
    sys.exit(main())
