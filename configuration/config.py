"""Command-line flags with the paper's names (configuration/config.py of the public code) plus ours;
every choice comes from its registry, every preset from the dataset table."""
from __future__ import annotations

import argparse

from methods.memory import MANAGERS
from methods.optim import OPTIMIZERS, SCHEDULERS
from models import MODELS
from utils.data.augment import TRANSFORMS, UNCERTAINTY_METRICS
from utils.data.datasets import DATASETS, PRESET_KEYS, preset_for
from utils.data.splits import SplitError, parse_exp


class ConfigError(Exception):
    """Impossible or inconsistent settings."""


def mem_manager_choices() -> list[str]:
    return ["default", *sorted(MANAGERS)]


def joint_acc_value(text: str) -> float | str:
    """A percentage, or 'auto'."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got '{text}'") from None


def base_parser(modes: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Rainbow Memory and baselines for class-incremental learning",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--mode", default="rm", choices=modes, help="CIL method")
    a("--mem_manage", default="default", choices=mem_manager_choices(),
      help="memory manager; default = the method's own")
    a("--dataset", default="mnist", help=f"dataset folder name under --data_dir ({', '.join(DATASETS)}, or any "
                                         f"image folder)")
    a("--exp_name", default="blurry10", help="task split: disjoint, blurry10, blurry30 (blurryM for 0<M<100)")
    a("--stream_env", default="online", choices=["online", "offline"])
    a("--rnd_seed", type=int, default=1, help="random seed (also selects the split files)")
    a("--memory_size", type=int, help="episodic memory size (preset per dataset)")
    a("--n_tasks", type=int, help="number of tasks")
    a("--n_cls_a_task", type=int, help="classes per task")
    a("--n_init_cls", type=int, help="initial head size (preset: all classes for blurry, n_cls_a_task for disjoint)")
    a("--model_name", choices=MODELS, help="mlp400 (MNIST), resnet18 (CIFAR-10), resnet32 (CIFAR-100), "
                                           "resnet34 (ImageNet); preset per dataset")
    a("--in_channels", type=int, choices=[1, 3],
      help="channels the model is defined for; default: 3 for mlp400 (the public code feeds MNIST as RGB, "
           "grey repeated 3 times), else the data's. 1 on grey data trains a true grey model")
    a("--pretrain", action="store_true", help="accepted so that the public scripts run; ignored with a warning "
                                              "(no pretrained weights are used)")
    a("--opt_name", choices=OPTIMIZERS)
    a("--sched_name", choices=SCHEDULERS)
    a("--lr", type=float)
    a("--batchsize", type=int)
    a("--n_epoch", type=int, help="epochs of each training call (online: epochs over the memory)")
    a("--n_worker", type=int, default=0,
      help="decoding processes of a streamed split (see --data_budget_gb); 0 = one per CPU core, at most 8")
    a("--transforms", nargs="*", default=["cutmix", "autoaug"], choices=TRANSFORMS,
      help="train augmentations; give the flag with no value for none")
    a("--uncert_metric", default="vr_randaug", choices=UNCERTAINTY_METRICS)
    a("--init_model", action="store_true", help="re-initialise the whole model at every task")
    a("--init_opt", action="store_true", default=True,
      help="reset optimizer and scheduler at every task (always on: the head is replaced every task)")
    a("--topk", type=int, help="top-k accuracy")
    a("--joint_acc", type=joint_acc_value, default=None,
      help="joint-training accuracy (%%) for I_last, or 'auto': read it from the matching joint run in results/; "
           "without it I_last is not computed (null)")
    a("--feature_size", type=int, default=2048, help="iCaRL / prototype feature size")
    a("--distilling", action="store_true", help="BiC: use the distillation loss")
    a("--reg_coef", type=float, default=100, help="EWC/RWalk regularisation weight")
    a("--rwalk_score", default="public", choices=["public", "paper"],
      help="RWalk path-integral score: 'public' reproduces the public code (always 0), 'paper' computes it")
    a("--eval_epochs", default="all", choices=["all", "last_task"],
      help="evaluate after every epoch (the protocol), or per epoch only in the final task and once at the end "
           "of each earlier training call: A_last and A_last_final are unchanged, earlier tasks' best-epoch "
           "accuracy becomes their final-model accuracy")
    a("--eval_period", type=int, default=0, metavar="N",
      help="anytime accuracy: also evaluate every N stream samples of the online stream pass, on the test "
           "samples of the classes exposed so far; records the curve and A_auc (0 = off, the paper's protocol)")
    a("--debug", action="store_true", help="at most 2560 train and test samples per task")
    a("--collections_dir", help="read split files in the paper's format from DIR instead of generating them")
    a("--data_dir", default="dataset", help="folder holding <dataset>/train|test")
    a("--device", default="auto", choices=["auto", "cpu", "cuda"])
    a("--out_dir", default=".", help="root of logs/, results/, tensorboard/ and collections/")
    a("--run_name", help="name of this run's outputs (default: built from the settings)")
    a("--resume", action="store_true",
      help="continue the run of this name (--run_name or the default) after its last finished task; "
           "does nothing when it already finished")
    a("--no_cache", action="store_true", help="do not read or write the decoded-image cache")
    a("--input_size", type=int, metavar="N",
      help="resize every image to N x N (bilinear, antialiased); default: the images' own size, which must be "
           "the same for all (the table's size for mnist, cifar10, ...; else the first image's)")
    a("--data_budget_gb", type=float, metavar="X",
      help="a split whose decoded pixels (N*C*H*W bytes) exceed X GB is streamed from disk in worker processes "
           "instead of held in memory; default: 4 without a GPU, 50%% of the free GPU memory on CUDA; "
           "0 streams every split")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset flags from the dataset's preset and check what can be checked without data."""
    try:
        parse_exp(args.exp_name)
    except SplitError:
        raise ConfigError(f"unknown --exp_name '{args.exp_name}'; valid: disjoint, blurry10, blurry30, or blurryM "
                          f"for an integer 0<M<100 (no leading zero)") from None
    pre = preset_for(args.dataset, args.exp_name)
    for k in PRESET_KEYS:
        if getattr(args, k) is None:
            setattr(args, k, pre[k])
    checks = [
        (args.memory_size < 0, f"--memory_size must be >= 0 (got {args.memory_size})"),
        (args.n_tasks < 1, f"--n_tasks must be >= 1 (got {args.n_tasks})"),
        (args.n_cls_a_task < 1, f"--n_cls_a_task must be >= 1 (got {args.n_cls_a_task})"),
        (args.n_init_cls < 1, f"--n_init_cls must be >= 1 (got {args.n_init_cls})"),
        (args.batchsize < 2, f"--batchsize must be >= 2 (got {args.batchsize})"),
        (args.n_epoch < 1, f"--n_epoch must be >= 1 (got {args.n_epoch})"),
        (not args.lr > 0, f"--lr must be > 0 (got {args.lr})"),
        (args.topk < 1, f"--topk must be >= 1 (got {args.topk})"),
        (args.eval_period < 0, f"--eval_period must be >= 0 (got {args.eval_period})"),
        (args.input_size is not None and args.input_size < 1, f"--input_size must be >= 1 (got {args.input_size})"),
        (args.data_budget_gb is not None and not args.data_budget_gb >= 0,
         f"--data_budget_gb must be >= 0 (got {args.data_budget_gb})"),
    ]
    for bad, msg in checks:
        if bad:
            raise ConfigError(msg)
    return args


def check_classes(cfg: argparse.Namespace, n_classes: int) -> None:
    """Generated splits need n_tasks x n_cls_a_task classes."""
    if cfg.n_tasks * cfg.n_cls_a_task != n_classes:
        raise ConfigError(f"{n_classes} classes cannot be divided into --n_tasks {cfg.n_tasks} x "
                          f"--n_cls_a_task {cfg.n_cls_a_task}")


def check_against_data(cfg: argparse.Namespace, n_classes: int, n_train: int, data_channels: int) -> None:
    """What needs the data: the memory against the training samples, the head against the classes,
    the model's channels against the images'; fills --in_channels when unset."""
    if cfg.memory_size > n_train:
        raise ConfigError(f"--memory_size {cfg.memory_size} is larger than the {n_train} training samples")
    if cfg.n_init_cls > n_classes:
        raise ConfigError(f"--n_init_cls {cfg.n_init_cls} exceeds the {n_classes} classes of {cfg.dataset}")
    if cfg.in_channels is None:
        cfg.in_channels = 3 if cfg.model_name == "mlp400" else data_channels
    elif cfg.in_channels != data_channels and not (data_channels == 1 and cfg.in_channels == 3):
        raise ConfigError(f"--in_channels {cfg.in_channels} does not fit {cfg.dataset}'s {data_channels}-channel "
                          f"images (grey images may feed a 3-channel model, not the reverse)")
