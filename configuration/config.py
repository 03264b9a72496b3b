"""Command-line flags with the paper's names (configuration/config.py of the public code) plus ours;
every choice comes from its registry, every preset from the dataset table, every range from validate."""
from __future__ import annotations

import argparse

from configuration.validate import (
    ConfigError,
    check_combinations,
    check_protocol,
    check_sample_wise,
    check_lists,
    check_names,
    check_output,
    check_ranges,
    fill_method_flags,
    range_help,
)
from methods import get_method_class, method_names
from methods.graph_step import AMP_CHOICES, COMPILE_CHOICES
from methods.memory import MANAGERS
from methods.optim import OPTIMIZERS, SCHEDULERS
from models import MODELS
from utils.data.augment import TRANSFORMS, UNCERTAINTY_METRICS
from utils.data.datasets import DATASETS, PRESET_KEYS, preset_for
from utils.data.iblurry import parse_iblurry
from utils.data.splits import SplitError, parse_exp

__all__ = ["ConfigError", "base_parser", "resolve"]


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


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it is None (a preset or method default, named in the help)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


def base_parser(modes: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Rainbow Memory and baselines for class-incremental learning",
                                formatter_class=_Help)
    a = p.add_argument
    a("--mode", default="rm", choices=modes, help="CIL method")
    a("--mem_manage", default="default", choices=mem_manager_choices(),
      help="memory manager; default = the method's own")
    a("--dataset", default="mnist", help=f"dataset folder name under --data_dir ({', '.join(DATASETS)}, or any "
                                         f"image folder)")
    a("--exp_name", default="blurry10", help="task split: disjoint, blurry10, blurry30 (blurryM for 0<M<100)")
    a("--stream_env", default="online", choices=["online", "offline"])
    a("--rnd_seed", type=int, default=1, help=range_help("rnd_seed", "random seed (also selects the split files)"))
    a("--memory_size", type=int, help=range_help("memory_size", "episodic memory size (preset per dataset)"))
    a("--n_tasks", type=int, help=range_help("n_tasks", "number of tasks"))
    a("--n_cls_a_task", type=int, help=range_help("n_cls_a_task", "classes per task"))
    a("--n_init_cls", type=int, help=range_help("n_init_cls", "initial head size (preset: all classes for blurry, "
                                                              "n_cls_a_task for disjoint)"))
    a("--model_name", choices=MODELS, help="mlp400 (MNIST), resnet18 (CIFAR-10), resnet32 (CIFAR-100), "
                                           "resnet34 (ImageNet); preset per dataset")
    a("--in_channels", type=int, choices=[1, 3],
      help="channels the model is defined for; default: 3 for mlp400 (the public code feeds MNIST as RGB, "
           "grey repeated 3 times), else the data's. 1 on grey data trains a true grey model")
    a("--pretrain", action="store_true", help="accepted so that the public scripts run; ignored with a warning "
                                              "(no pretrained weights are used)")
    a("--opt_name", choices=OPTIMIZERS)
    a("--sched_name", choices=SCHEDULERS)
    a("--lr", type=float, help=range_help("lr", "learning rate"))
    a("--batchsize", type=int, help=range_help("batchsize", "batch size"))
    a("--n_epoch", type=int,
      help=range_help("n_epoch", "epochs of each training call (online: epochs over the memory)"))
    a("--n_worker", type=int, default=0,
      help=range_help("n_worker", "decoding processes of a streamed split (see --data_budget_gb); 0 = one per CPU "
                                  "core, at most 8"))
    a("--transforms", nargs="*", default=["cutmix", "autoaug"], choices=TRANSFORMS,
      help="train augmentations; give the flag with no value for none")
    a("--uncert_metric", default="vr_randaug", choices=UNCERTAINTY_METRICS)
    a("--init_model", action="store_true", help="re-initialise the whole model at every task")
    a("--init_opt", action="store_true", default=True,
      help="reset optimizer and scheduler at every task (always on: the head is replaced every task)")
    a("--topk", type=int, help=range_help("topk", "top-k accuracy"))
    a("--joint_acc", type=joint_acc_value, default=None,
      help=range_help("joint_acc", "joint-training accuracy (%%) for I_last, or 'auto': read it from the matching "
                                   "joint run in results/; without it I_last is not computed (null)"))
    a("--feature_size", type=int, help=range_help("feature_size", "iCaRL's feature size (default 2048)"))
    a("--distilling", action="store_true", default=None, help="BiC: use the distillation loss")
    a("--reg_coef", type=float, help=range_help("reg_coef", "EWC/RWalk regularisation weight (default 100)"))
    a("--rwalk_score", choices=["public", "paper"],
      help="RWalk path-integral score: 'public' (default) reproduces the public code (always 0), 'paper' computes "
           "it")
    a("--grey_fold", default="auto", choices=["auto", "all", "off"],
      help="mlp400 on grey images with SGD keeps one input weight for its 3 identical channels (3x less work): "
           "'auto' (default) wherever that is exact (every method but ewc/rwalk, whose penalty sees each channel "
           "slice, and weight decay makes the slices drift apart); 'all' also for ewc/rwalk (per-slice "
           "importances; not exact, see README); 'off' never")
    a("--eval_epochs", default="all", choices=["all", "last_task"],
      help="evaluate after every epoch (the protocol), or per epoch only in the final task and once at the end "
           "of each earlier training call: A_last and A_last_final are unchanged, earlier tasks' best-epoch "
           "accuracy becomes their final-model accuracy")
    a("--eval_period", type=int, default=0, metavar="N",
      help=range_help("eval_period", "anytime accuracy: also evaluate every N stream samples of the online stream "
                                     "pass, on the test samples of the classes exposed so far; records the curve "
                                     "and A_auc (0 = off, the paper's protocol)"))
    a("--debug", action="store_true", help="at most 2560 train and test samples per task")
    a("--collections_dir", help="read split files in the paper's format from DIR instead of generating them")
    a("--data_dir", default="dataset", help="folder holding <dataset>/train|test")
    a("--device", default="auto", choices=["auto", "cpu", "cuda"])
    a("--out_dir", default=".", help="root of logs/, results/, tensorboard/ and collections/")
    a("--run_name", help="name of this run's outputs (default: built from the settings)")
    a("--dry_run", action="store_true",
      help="check every flag, the data and the task split, print the resolved settings and stop: no training, "
           "nothing written under --out_dir's logs/, results/, tensorboard/ or checkpoints/")
    a("--resume", action="store_true",
      help="continue the run of this name (--run_name or the default) after its last finished task; "
           "does nothing when it already finished")
    a("--online_iter", type=float, metavar="F",
      help=range_help("online_iter", "i-Blurry protocol: training steps per stream sample (a fraction counts up: "
                                     "0.25 = one step per 4 samples); default 1"))
    a("--temp_batchsize", type=int, metavar="N",
      help=range_help("temp_batchsize", "i-Blurry protocol: stream samples gathered before they train (with "
                                        "memory samples up to --batchsize); default --batchsize // 2"))
    a("--as_intended", action="store_true", default=None,
      help="i-Blurry protocol: run the method as its paper intends where the CLIB code has a defect (SPEC "
           "section 12): rm as the CVPR'21 code runs it (steps of half stream, half memory; the memory chosen "
           "at each task end by uncertainty from itself and the task's stream) with a kept head; ewc++ with a "
           "Fisher that updates; mir scored without batch-norm drift; clib with the importance step "
           "H_B -= 0.1 (dL - mean H_B) / |B| and the head's lr kept at new classes. Default: as the CLIB code "
           "runs it")
    a("--dist_timeout", type=float, default=1800.0, metavar="S",
      help=range_help("dist_timeout", "under torchrun: seconds a rank waits for the others in one exchange "
                                      "before the run stops with an error (rank 0 builds the decoded-image cache "
                                      "while the others wait)"))
    a("--compile", default="auto", choices=COMPILE_CHOICES,
      help="the training step (forward, loss, backward) of rm, finetune, gdumb and joint as compiled graphs at "
           "full batches: 'graphs' replays them as CUDA graphs (CUDA only), 'inductor' compiles kernels "
           "(CUDA graphs of them on a GPU), 'auto' is graphs on CUDA and eager on the CPU, 'off' eager; the "
           "numbers agree with the eager step's within float rounding (README: compiled steps)")
    a("--amp", default="off", choices=AMP_CHOICES,
      help="'bf16': training steps and evaluation under bfloat16 autocast (faster on a GPU; the numbers are no "
           "longer comparable with the public code's fp32); 'off': fp32")
    a("--decode_device", default="cpu", choices=["cpu", "auto", "cuda"],
      help="where a streamed split's JPEGs are decoded (see --data_budget_gb): 'cpu' in --n_worker processes "
           "(libjpeg, the in-memory path's pixels to the byte), 'cuda' on the GPU in batches (nvjpeg: faster, "
           "pixels may differ from libjpeg's by a few levels), 'auto' the GPU when the run is on CUDA")
    a("--no_cache", action="store_true", help="do not read or write the decoded-image cache")
    a("--input_size", type=int, metavar="N",
      help=range_help("input_size", "resize every image to N x N (bilinear, antialiased); default: the images' own "
                                    "size, which must be the same for all (the table's size for mnist, cifar10, "
                                    "...; else the first image's)"))
    a("--data_budget_gb", type=float, metavar="X",
      help=range_help("data_budget_gb", "a split whose decoded pixels (N*C*H*W bytes) exceed X GB is streamed from "
                                        "disk in worker processes instead of held in memory; default: 4 without a "
                                        "GPU, 50%% of the free GPU memory on CUDA; 0 streams every split"))
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset flags from the dataset's preset and the method defaults, and check everything that
    can be checked without the data (configuration.validate)."""
    check_names(args)
    try:
        iblurry = parse_iblurry(args.exp_name)
        if iblurry is None:
            parse_exp(args.exp_name)
    except SplitError:
        raise ConfigError(f"unknown --exp_name '{args.exp_name}'; valid: disjoint, blurry10, blurry30, blurryM "
                          f"for an integer 0<M<100 (no leading zero), or iblurryN_M (percentages 0-100)") from None
    check_protocol(args.mode, iblurry is not None, method_names(iblurry is not None))
    cls = get_method_class(args.mode, iblurry is not None)
    sample_wise = cls.sample_wise
    for k, v in getattr(cls, "protocol_defaults", {}).items():  # CLIB's optimisers (SPEC section 12) unless given
        if getattr(args, k) is None:
            setattr(args, k, v)
    pre = preset_for(args.dataset, args.exp_name)
    for k in PRESET_KEYS:
        if getattr(args, k) is None:
            setattr(args, k, pre[k])
    fill_method_flags(args)
    if iblurry is not None:
        args.n_init_cls = 1  # the head starts with one output and grows per exposed class
        args.eval_period = args.eval_period or 100  # anytime evaluation is the protocol
    if sample_wise and args.temp_batchsize is None:
        args.temp_batchsize = cls.default_temp_batchsize(args.batchsize, bool(args.as_intended))
    check_ranges(args)
    check_lists(args)
    check_sample_wise(args, iblurry is not None, sample_wise)
    check_combinations(args, cls.stream_pass)
    check_output(args.out_dir)
    return args
