"""The configuration's single sources: flag choices from the registries, --exp_name from one function,
presets from the dataset table (for main.py and experiment.sh alike), --pretrain warned about."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import main as rm_main
from configuration.config import ConfigError, base_parser, resolve
from methods import method_names
from methods.memory import MANAGERS
from methods.engine.optim import OPTIMIZERS, SCHEDULERS
from models import MODELS
from utils.data.augment import TRANSFORMS, UNCERTAINTY_METRICS
from utils.data.datasets import DATASETS, preset_for
from utils.data.splits import SplitError, parse_exp
from tests.paths import FASHION_SRC

ROOT = Path(__file__).resolve().parents[1]


def choices(flag: str) -> list:
    (action,) = [a for a in base_parser(method_names())._actions if flag in a.option_strings]
    return list(action.choices)


def test_every_choice_comes_from_its_registry():
    assert choices("--mode") == method_names() == ["bic", "clib", "der++", "er", "ewc", "ewc++", "finetune", "gdumb",
                                                   "icarl", "joint", "mir", "rm", "rwalk"]
    assert choices("--mem_manage") == ["default", *sorted(MANAGERS)]
    assert sorted(MANAGERS) == ["class_balanced", "greedy_balanced", "prototype", "random", "reservoir", "uncertainty"]
    assert choices("--model_name") == list(MODELS)
    assert choices("--transforms") == list(TRANSFORMS)
    assert choices("--uncert_metric") == list(UNCERTAINTY_METRICS)
    assert choices("--opt_name") == list(OPTIMIZERS) and choices("--sched_name") == list(SCHEDULERS)


@pytest.mark.parametrize("exp", ["disjoint", "blurry10", "blurry30", "blurry1", "blurry99", "blurry05", "blurry0",
                                 "blurry100", "blurry", "Blurry10", "disjoint2"])
def test_the_cli_accepts_exactly_the_splits_the_split_maker_accepts(exp):
    try:
        parse_exp(exp)
        ok = True
    except SplitError:
        ok = False
    args = base_parser(method_names()).parse_args(["--exp_name", exp])
    if ok:
        assert resolve(args).exp_name == exp
    else:
        with pytest.raises(ConfigError, match=f"unknown --exp_name '{exp}'"):
            resolve(args)
    assert ok == (exp in ("disjoint", "blurry10", "blurry30", "blurry1", "blurry99"))


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_unset_flags_take_the_dataset_tables_preset(name):
    for exp, init in (("blurry10", "n_init_cls"), ("disjoint", "n_init_cls_disjoint")):
        cfg = resolve(base_parser(method_names()).parse_args(["--dataset", name, "--exp_name", exp]))
        pre = DATASETS[name].preset
        for k in ("model_name", "n_epoch", "batchsize", "lr", "opt_name", "sched_name", "memory_size", "n_tasks",
                  "n_cls_a_task", "topk"):
            assert getattr(cfg, k) == pre[k], (name, k)
        assert cfg.n_init_cls == pre[init]
    # what is given on the command line wins
    assert resolve(base_parser(method_names()).parse_args(["--dataset", name, "--lr", "0.2"])).lr == 0.2


def test_table_holds_the_papers_settings():
    """SPEC section 9: the public scripts' settings per dataset."""
    assert preset_for("cifar10")["model_name"] == "resnet18" and preset_for("cifar10")["n_epoch"] == 256
    assert preset_for("cifar100")["memory_size"] == 2000 and preset_for("cifar100")["lr"] == 0.03
    assert preset_for("imagenet")["topk"] == 5 and preset_for("imagenet")["sched_name"] == "multistep"
    assert preset_for("some_folder") == preset_for("mnist")  # any image folder: MNIST-sized defaults
    assert len(DATASETS["mnist"].classes) == DATASETS["mnist"].n_classes == 10


def tiny_cifar10(root: Path) -> Path:
    """10 classes of flat-coloured 32x32 RGB PNGs (6 train, 2 test each) named like cifar10."""
    rng = np.random.RandomState(0)
    for split, n in (("train", 6), ("test", 2)):
        for c in range(10):
            d = root / "cifar10" / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = np.full((32, 32, 3), 20 * c, dtype=np.uint8) + rng.randint(0, 10, (32, 32, 3)).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i:04d}.png")
    return root


def test_experiment_sh_runs_cifar10_with_the_tables_settings(tmp_path):
    data = tiny_cifar10(tmp_path / "data")
    env = dict(os.environ, PY=sys.executable, SEEDS="1", MODES="finetune", DATASET="cifar10", TRANS="",
               N_EPOCH_OVERRIDE="1", MEM_SIZE="10", OUT_DIR=str(tmp_path / "out"),
               EXTRA=f"--data_dir {data} --device cpu")
    out = subprocess.run(["bash", str(ROOT / "experiment.sh")], env=env, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (res,) = [json.loads(p.read_text()) for p in (tmp_path / "out" / "results" / "cifar10").glob("*.json")]
    cfg = res["config"]
    assert {k: cfg[k] for k in ("model_name", "batchsize", "lr", "opt_name", "sched_name", "n_tasks", "n_cls_a_task",
                                "n_init_cls", "topk")} == \
        {"model_name": "resnet18", "batchsize": 16, "lr": 0.05, "opt_name": "sgd", "sched_name": "cos", "n_tasks": 5,
         "n_cls_a_task": 2, "n_init_cls": 10, "topk": 1}
    assert cfg["n_epoch"] == 1 and cfg["memory_size"] == 10 and cfg["joint_acc"] is None and res["I_last"] is None


def test_pretrain_is_accepted_with_a_warning(mnist_dir, tmp_path):
    assert rm_main.main(["--mode", "finetune", "--dataset", "mnist", "--data_dir", str(mnist_dir), "--out_dir",
                         str(tmp_path), "--device", "cpu", "--n_epoch", "1", "--memory_size", "50", "--transforms",
                         "--debug", "--pretrain", "--run_name", "p"]) == 0
    log = (tmp_path / "logs" / "mnist" / "p.log").read_text()
    assert "[WARNING] --pretrain is ignored: no pretrained weights are used" in log


HELP_GROUPS = ["the run: method, data, split and stream", "training", "memory",
               "the sample-wise protocol (i-Blurry, Si-Blurry) and anytime evaluation", "outputs and resume", "speed and scale-out"]


def test_help_groups_every_flag_and_names_its_default(capsys):
    """--help: six groups in a researcher's order, each flag in exactly one, every flag's default named
    (argparse's "(default: X)", or the help's own "default" for presets and method defaults)."""
    p = base_parser(method_names())
    groups = {g.title: g for g in p._action_groups if g._group_actions}
    assert list(groups) == ["options", *HELP_GROUPS]
    flags = [a for a in p._actions if a.dest != "help"]
    grouped = [a for t in HELP_GROUPS for a in groups[t]._group_actions]
    assert sorted(a.dest for a in grouped) == sorted(a.dest for a in flags) and len(grouped) == len(flags)
    for a in flags:
        assert a.default is not None or "default" in a.help, a.dest
    with pytest.raises(SystemExit) as e:
        rm_main.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert [out.index(f"\n{t}:") for t in HELP_GROUPS] == sorted(out.index(f"\n{t}:") for t in HELP_GROUPS)
    assert "0.05 (mnist, fashion_mnist, cifar10, imagenet), 0.03 (cifar100)" in " ".join(out.split())  # --lr's presets


def test_fashion_mnist_statistics_are_its_own_training_images():
    """The table's Fashion-MNIST mean/std are its 60,000 training images' (exact integer sums, the derivation
    of unknown folders), not MNIST's 0.1307 / 0.3081 that both public codes copy."""
    if not (FASHION_SRC / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST IDX files not found in {FASHION_SRC}")
    import torch
    from utils.data.stats import mean_std, pixel_sums
    from utils.prepare.idx import read_split
    images, _ = read_split(FASHION_SRC, "train", expected_count=60000)
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    mean, std = mean_std(*pixel_sums(x), x[:, 0].numel())
    assert (DATASETS["fashion_mnist"].mean, DATASETS["fashion_mnist"].std) == (mean, std)
    assert round(mean[0], 4) == 0.2860 and round(std[0], 4) == 0.3530
    assert DATASETS["mnist"].mean == (0.1307,) and DATASETS["mnist"].std == (0.3081,)  # the paper's values
