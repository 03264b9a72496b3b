"""Command-line flags with the paper's names (configuration/config.py of the public code) plus ours;
every choice comes from its registry, every preset from the dataset table, every range from validate."""
from __future__ import annotations

import argparse

from configuration.validate import (
    ConfigError,
    check_combinations,
    check_sample_wise,
    check_lists,
    check_names,
    check_output,
    check_ranges,
    fill_method_flags,
    range_help,
)
from methods import get_method_class
from methods.engine.graph_step import AMP_CHOICES, COMPILE_CHOICES
from methods.memory import MANAGERS
from methods.engine.optim import OPTIMIZERS, SCHEDULERS
from models import MODELS
from utils.data.augment import TRANSFORMS, UNCERTAINTY_METRICS
from utils.data.datasets import DATASETS, DEFAULT_PRESET, PRESET_KEYS, preset_for, preset_text
from utils.data.iblurry import parse_iblurry
from utils.data.siblurry import parse_siblurry
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


def _preset(key: str) -> str:
    return f"default: the dataset's preset, {preset_text(key)}; other folders: {DEFAULT_PRESET}'s"


DESCRIPTION = """Rainbow Memory (CVPR 2021) and its baselines and successors in class-incremental continual
learning: the CVPR'21 protocol (--exp_name blurryM / disjoint, --stream_env online / offline) and the
sample-wise i-Blurry protocol of CLIB (--exp_name iblurryN_M); every --mode runs in both. Flags left unset
take the dataset's preset (the public scripts' settings); every run checks its settings before it writes
anything (exit 2)."""


def base_parser(modes: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=_Help,
                                usage="python main.py [--mode MODE] [--dataset NAME] [--exp_name SPLIT] [flags below]")
    a = p.add_argument_group("the run: method, data, split and stream").add_argument
    a("--mode", default="rm", choices=modes, help="the method (README: methods and settings)")
    a("--dataset", default="mnist", help=f"folder name under --data_dir: {', '.join(DATASETS)} (their presets), "
                                         "or any image folder <name>/train|test/<class>/<image>")
    a("--data_dir", default="dataset", help="folder holding <dataset>/train|test")
    a("--exp_name", default="blurry10",
      help="task split: disjoint, blurryM (M%% of each task's samples spread over the other tasks, 0<M<100: "
           "blurry10, blurry30), iblurryN_M (CLIB's i-Blurry: N%% disjoint classes, M%% of each blurry class "
           "pooled; the sample-wise protocol) or siblurryN_M (Si-Blurry: random task boundaries, the classes per "
           "task and the M%% of all blurry samples pooled drawn from --rnd_seed; the stream in batches of "
           "--batchsize, see docs/siblurry.md)")
    a("--stream_env", default="online", choices=["online", "offline"],
      help="online: one pass over each task's stream, then --n_epoch epochs on the memory; offline: --n_epoch "
           "epochs on stream + memory (i-Blurry: online only)")
    a("--rnd_seed", type=int, default=1, help=range_help("rnd_seed", "random seed; also picks the split files"))
    a("--n_tasks", type=int, help=range_help("n_tasks", f"number of tasks; {_preset('n_tasks')}"))
    a("--n_cls_a_task", type=int, help=range_help("n_cls_a_task", f"classes per task; {_preset('n_cls_a_task')}"))
    a("--n_init_cls", type=int,
      help=range_help("n_init_cls", "outputs of the first head (classes); default: every class for blurry "
                                    "splits, --n_cls_a_task for disjoint, 1 for i-Blurry (the head grows)"))
    a("--collections_dir", metavar="DIR",
      help="read the split files from DIR (the paper's or the CLIB code's format) instead of generating them; "
           "default: generate them from --rnd_seed into --out_dir's collections/")
    a("--input_size", type=int, metavar="N",
      help=range_help("input_size", "resize every image to N x N pixels (bilinear, antialiased); default: the "
                                    "images' own size, which must be the same for all"))
    a("--debug", action="store_true", help="at most 2560 train and test samples per task")

    a = p.add_argument_group("training").add_argument
    a("--model_name", choices=MODELS, help=_preset("model_name"))
    a("--in_channels", type=int, choices=[1, 3],
      help="input channels the model is defined for; default: 3 for mlp400 (the public code feeds MNIST as RGB, "
           "grey repeated 3 times), else the data's; 1 on grey data trains a true grey model")
    a("--pretrain", action="store_true", help="accepted so that the public scripts run; ignored with a warning "
                                              "(no pretrained weights are used)")
    a("--opt_name", choices=OPTIMIZERS,
      help=f"sgd (momentum 0.9, Nesterov, weight decay 1e-4), adam or radam; {_preset('opt_name')}; i-Blurry's "
           "er, ewc++, mir, der++, bic and clib: adam (the CLIB scripts)")
    a("--sched_name", choices=SCHEDULERS, help=f"learning-rate schedule per epoch (SPEC section 7); "
                                                f"{_preset('sched_name')}")
    a("--lr", type=float, help=range_help("lr", f"learning rate; {_preset('lr')}; i-Blurry's er, ewc++, mir, "
                                                f"der++, bic and clib: 3e-4"))
    a("--batchsize", type=int, help=range_help("batchsize", f"samples per training step; {_preset('batchsize')}"))
    a("--n_epoch", type=int,
      help=range_help("n_epoch", f"epochs of each training call (online: epochs on the memory; i-Blurry rm and "
                                 f"gdumb: memory epochs); {_preset('n_epoch')}"))
    a("--transforms", nargs="*", default=["cutmix", "autoaug"], choices=TRANSFORMS,
      help="train augmentations after crop and flip; give the flag with no value for none")
    a("--init_model", action="store_true", help="re-initialise the whole model at every task")
    a("--init_opt", action="store_true", default=True,
      help="reset optimizer and scheduler at every task (always on: the head is replaced every task)")
    a("--reg_coef", type=float,
      help=range_help("reg_coef", "ewc, rwalk, ewc++: weight of the quadratic penalty (dimensionless); default "
                                  "100"))
    a("--rwalk_score", choices=["public", "paper"],
      help="rwalk's path-integral score: 'public' reproduces the public code (always 0), 'paper' computes it "
           "(needs --reg_coef x --lr <= 0.05 with sgd); default: public")
    a("--feature_size", type=int, help=range_help("feature_size", "icarl: features before its head; default 2048"))
    a("--distilling", action="store_true", default=None, help="bic: add the distillation loss; default: off")
    a("--eval_epochs", default="all", choices=["all", "last_task"],
      help="evaluate after every epoch (the protocol), or per epoch only in the final task and once at the end "
           "of each earlier training call: A_last and A_last_final are unchanged, earlier tasks' best-epoch "
           "accuracy becomes their final-model accuracy")
    a("--topk", type=int, help=range_help("topk", f"top-k accuracy (classes); {_preset('topk')}"))
    a("--joint_acc", type=joint_acc_value, default=None,
      help=range_help("joint_acc", "joint-training accuracy (%%) for I_last, or 'auto': read it from the matching "
                                   "joint run in results/; default: none, I_last is not computed (null)"))

    a = p.add_argument_group("memory").add_argument
    a("--memory_size", type=int, help=range_help("memory_size", f"episodic memory (samples); "
                                                                f"{_preset('memory_size')}"))
    a("--mem_manage", default="default", choices=mem_manager_choices(),
      help="memory manager; 'default': the method's own (rm: uncertainty, icarl and bic: prototype, ...)")
    a("--uncert_metric", default="vr_randaug", choices=UNCERTAINTY_METRICS,
      help="rm's uncertainty: the perturbed views it votes over (vr_randaug: 12 RandAugment views)")

    a = p.add_argument_group("the sample-wise protocol (i-Blurry, Si-Blurry) and anytime evaluation").add_argument
    a("--eval_period", type=int, default=0, metavar="N",
      help=range_help("eval_period", "anytime accuracy: also evaluate every N stream samples on the test samples of "
                                     "the classes exposed so far; records the curve and A_auc; 0 = off (the "
                                     "CVPR'21 protocol); i-Blurry runs take 100 for 0 (the CLIB scripts), "
                                     "Si-Blurry runs 1000 (its scripts; a point after the batch that passes each "
                                     "multiple)"))
    a("--online_iter", type=float, metavar="F",
      help=range_help("online_iter", "i-Blurry: training steps per stream sample (a fraction counts up: 0.25 = "
                                     "one step per 4 samples); Si-Blurry: int(F) updates per stream batch of "
                                     "--batchsize; default 1"))
    a("--temp_batchsize", type=int, metavar="N",
      help=range_help("temp_batchsize", "i-Blurry, and er, ewc++, mir, der++, clib in any setting: stream samples "
                                        "gathered before they train (with memory samples up to --batchsize); default "
                                        "--batchsize // 2 (rm: --batchsize; clib, gdumb: 1); Si-Blurry: each update "
                                        "adds --batchsize - --temp_batchsize memory samples to the stream batch "
                                        "(default --batchsize // 2 for every method)"))
    a("--as_intended", action="store_true", default=None,
      help="i-Blurry: run the method as its paper intends where the CLIB code has a defect (SPEC section 12): rm "
           "as the CVPR'21 code runs it (steps of half stream, half memory; the memory chosen at each task end by "
           "uncertainty from itself and the task's stream; memory epochs in train mode) with a kept head; ewc++ "
           "with a Fisher that updates; mir scored without batch-norm drift; clib with the importance step "
           "H_B -= 0.1 (dL - mean H_B) / |B| and the head's lr kept at new classes; default: off, as the CLIB "
           "code runs it")

    a = p.add_argument_group("outputs and resume").add_argument
    a("--out_dir", default=".", help="root of logs/, results/, tensorboard/, checkpoints/ and collections/")
    a("--run_name", help="name of this run's outputs; default: built from the settings")
    a("--resume", action="store_true",
      help="continue the run of this name (--run_name or the default) after its last finished task; "
           "does nothing when it already finished")
    a("--dry_run", action="store_true",
      help="check every flag, the data and the task split, print the resolved settings and stop: no training, "
           "nothing written under --out_dir's logs/, results/, tensorboard/ or checkpoints/")

    a = p.add_argument_group("speed and scale-out").add_argument
    a("--device", default="auto", choices=["auto", "cpu", "cuda"], help="'auto': the GPU when there is one")
    a("--n_worker", type=int, default=0,
      help=range_help("n_worker", "decoding processes of a streamed split (see --data_budget_gb); 0 = one per CPU "
                                  "core, at most 8"))
    a("--data_budget_gb", type=float, metavar="X",
      help=range_help("data_budget_gb", "a split whose decoded pixels (N*C*H*W bytes) exceed X GB is streamed from "
                                        "disk in worker processes instead of held in memory; default: 4 without a "
                                        "GPU, 50%% of the free GPU memory on CUDA; 0 streams every split"))
    a("--no_cache", action="store_true", help="do not read or write the decoded-image cache (<dataset>/.cache)")
    a("--decode_device", default="cpu", choices=["cpu", "auto", "cuda"],
      help="where a streamed split's JPEGs are decoded (see --data_budget_gb): 'cpu' in --n_worker processes "
           "(libjpeg, the in-memory path's pixels to the byte), 'cuda' on the GPU in batches (nvjpeg: faster, "
           "pixels may differ from libjpeg's by a few levels), 'auto' the GPU when the run is on CUDA")
    a("--compile", default="auto", choices=COMPILE_CHOICES,
      help="the training step (forward, loss, backward) of rm, finetune, gdumb, joint and er as compiled graphs "
           "at full batches: 'graphs' replays them as CUDA graphs (CUDA only), 'inductor' compiles kernels "
           "(CUDA graphs of them on a GPU), 'auto' is graphs on CUDA and eager on the CPU (er: eager, its head "
           "grows per class, each growth a rebuild), 'off' eager; the numbers agree with the eager step's within "
           "float rounding (docs/gpu.md)")
    a("--amp", default="off", choices=AMP_CHOICES,
      help="'bf16': training steps and evaluation under bfloat16 autocast (faster on a GPU; the numbers are no "
           "longer comparable with the public code's fp32); 'off': fp32")
    a("--grey_fold", default="auto", choices=["auto", "all", "off"],
      help="mlp400 on grey images with SGD, or with the ER family's Adam (no weight decay), keeps one input weight "
           "for its 3 identical channels (3x less work; with Adam, equal to the 3-channel model within rounding): "
           "'auto' wherever that is exact (every method but ewc and rwalk, whose penalty sees each channel slice "
           "and whose weight decay makes the slices drift apart); 'all' also for those (per-slice importances; not "
           "exact, see docs/baselines.md); 'off' never")
    a("--dist_timeout", type=float, default=1800.0, metavar="S",
      help=range_help("dist_timeout", "under torchrun: seconds a rank waits for the others in one exchange "
                                      "before the run stops with an error (rank 0 builds the decoded-image cache "
                                      "while the others wait)"))
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset flags from the dataset's preset and the method defaults, and check everything that
    can be checked without the data (configuration.validate)."""
    check_names(args)
    try:
        iblurry = parse_iblurry(args.exp_name)
        siblurry = parse_siblurry(args.exp_name) if iblurry is None else None
        if iblurry is None and siblurry is None:
            parse_exp(args.exp_name)
    except SplitError:
        raise ConfigError(f"unknown --exp_name '{args.exp_name}'; valid: disjoint, blurry10, blurry30, blurryM "
                          f"for an integer 0<M<100 (no leading zero), iblurryN_M or siblurryN_M (percentages "
                          f"0-100)") from None
    sample_wise = iblurry is not None or siblurry is not None
    args.protocol = "sample_wise" if sample_wise else "epochs"
    args.setting = "siblurry" if siblurry is not None else "iblurry" if iblurry is not None else "cvpr21"
    args.follow = ("paper" if args.as_intended else "clib") if sample_wise else "cvpr21"
    cls = get_method_class(args.mode).form(args.follow)
    for k, v in cls.hyper_defaults(args.follow).items():  # the method's own optimiser (CLIB's Adam) unless given
        if getattr(args, k) is None:
            setattr(args, k, v)
    pre = preset_for(args.dataset, args.exp_name)
    for k in PRESET_KEYS:
        if getattr(args, k) is None:
            setattr(args, k, pre[k])
    fill_method_flags(args)
    if sample_wise:
        args.n_init_cls = 1  # the head starts with one output and grows per exposed class
        # anytime evaluation is the protocol: the CLIB scripts' period, the Si-Blurry scripts'
        args.eval_period = args.eval_period or (1000 if siblurry is not None else 100)
    chunked = sample_wise or cls.replays  # the stream trains in chunks of --temp_batchsize
    if chunked and args.temp_batchsize is None:  # Si-Blurry: the official trainer's default for every method
        args.temp_batchsize = (max(1, args.batchsize // 2) if siblurry is not None
                               else cls.default_temp_batchsize(args.batchsize, args.follow))
    check_ranges(args)
    check_lists(args)
    check_sample_wise(args, sample_wise, chunked)
    check_combinations(args, cls.stream_pass or sample_wise)  # sample-wise: gdumb trains at each evaluation
    check_output(args.out_dir)
    return args
