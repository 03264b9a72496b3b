"""Random values for every numeric flag (negative, zero, huge, NaN, inf and ordinary ones) on a tiny real
dataset: each draw is either accepted (and, when its run is cheap, trained to the end) or refused with exit 2
and a message; never a traceback, never another exit code, and a refused draw writes nothing."""
from __future__ import annotations

import contextlib
import io
import random
import shutil
from pathlib import Path

import pytest

import main as rm_main
from configuration.validate import RANGES
from tests.paths import FASHION_SRC, MNIST_SRC

# the flag's base value and the mode that reads it, in a run on 4 images per class
BASE = ["--device", "cpu", "--n_epoch", "1", "--memory_size", "10", "--batchsize", "4", "--transforms", "--no_cache"]
MODE_OF = {"reg_coef": "ewc", "feature_size": "icarl"}
SPECIAL = ["-1", "0", "1", "2", "5", "nan", "inf", "-inf", "1e308", "-1e308", "4294967296", "99999999999999999999",
           "0.5", "-0.0", "1e-300"]
DRAWS_PER_FLAG = 20
REAL_RUN_LIMIT = {"n_epoch": 3, "input_size": 64}  # accepted values above these are only validated


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, str]:
    """4 train and 4 test images per class of real MNIST (or Fashion-MNIST)."""
    from utils.prepare import prepare
    root = tmp_path_factory.mktemp("tiny")
    for name, src in (("mnist", MNIST_SRC), ("fashion_mnist", FASHION_SRC)):
        if (src / "train-images-idx3-ubyte.gz").is_file():
            prepare(name, source=str(src), data_dir=str(root), per_class=4)
            return root, name
    pytest.skip("no MNIST or Fashion-MNIST IDX files")


def draws(flag: str, rng: random.Random) -> list[str]:
    """The special values, then random ints and floats around and beyond the flag's range."""
    r = RANGES[flag]
    out = list(SPECIAL)
    while len(out) < DRAWS_PER_FLAG:
        if rng.random() < 0.5:
            out.append(str(rng.randint(int(max(r.lo, -10)) - 5, int(min(r.hi, 10 ** 4)) + 5)))
        else:
            out.append(repr(rng.uniform(-10, 2 * min(r.hi, 1e4))))
    return out


def run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = rm_main.main(argv)
        except SystemExit as e:  # argparse refuses what is not a number
            rc = e.code
    return rc, err.getvalue()


def cheap(flag: str, value: str) -> bool:
    return flag not in REAL_RUN_LIMIT or float(value) <= REAL_RUN_LIMIT[flag]


@pytest.mark.parametrize("flag", sorted(RANGES))
def test_every_draw_finishes_or_is_refused_cleanly(tiny, tmp_path, flag):
    """Each draw is validated (--dry_run); the smallest and the largest accepted values that are cheap
    to train then run to the end."""
    data, dataset = tiny
    out = tmp_path / "out"
    argv = ["--dataset", dataset, "--data_dir", str(data), "--out_dir", str(out), "--mode",
            MODE_OF.get(flag, "finetune"), *BASE]
    accepted, refused = [], 0
    for value in draws(flag, random.Random(flag)):
        rc, err = run(argv + [f"--{flag}", value, "--dry_run"])
        assert rc in (0, 2), (flag, value, rc, err[-1500:])
        assert "Traceback" not in err, (flag, value, err[-1500:])
        assert not (out / "results").exists() and not (out / "logs").exists(), (flag, value)
        if rc == 2:
            refused += 1
            assert "error:" in err or "invalid" in err, (flag, value, err[-500:])
        else:
            accepted.append(value)
    cheap_ones = sorted((v for v in accepted if cheap(flag, v)), key=float)
    for value in dict.fromkeys(cheap_ones[:1] + cheap_ones[-1:]):
        rc, err = run(argv + [f"--{flag}", value, "--run_name", "r"])
        # a learning rate or a regularisation weight in range may still make the loss diverge (or make
        # EWC's penalty too stiff for SGD): the run then stops with exit 3 and a message naming the task,
        # never a traceback
        diverged = rc == 3 and flag in ("lr", "reg_coef") and ("training diverged" in err or "too stiff" in err)
        assert rc == 0 or diverged, (flag, value, rc, err[-1500:])
        assert "Traceback" not in err and ((out / "results" / dataset / "r.json").exists() or diverged)
        shutil.rmtree(out)
    # every flag has draws on both sides of its range
    assert accepted and refused >= 8, (flag, accepted, refused)
    print(f"{flag}: {len(accepted) + refused} draws, {len(accepted)} accepted, {refused} refused; trained "
          f"{cheap_ones[:1] + cheap_ones[-1:]}")
