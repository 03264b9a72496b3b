"""Train/eval samples/s of resnet18 on CIFAR-10-sized synthetic data: our on-device batched pipeline vs a PIL DataLoader."""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from main import set_seed  # noqa: E402
from methods.engine.evaluation import EVAL_BATCH  # noqa: E402
from methods.engine.graph_step import AMP_CHOICES, COMPILE_CHOICES, GraphStep, autocast, compile_engine  # noqa: E402
from methods.engine.optim import make_optimizer  # noqa: E402
from models import build_model  # noqa: E402
from utils.data.augment import TrainAugment, normalize  # noqa: E402
from utils.data.batches import AUG_CHUNK  # noqa: E402
from utils.data.datasets import DATASETS  # noqa: E402
from utils.data.run_data import resolve_device  # noqa: E402

MEAN, STD = DATASETS["cifar10"].mean, DATASETS["cifar10"].std


class PILDataset(torch.utils.data.Dataset):
    """The images as PIL images (converted once), a torchvision transform applied per sample."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        from PIL import Image
        self.images = [Image.fromarray(a) for a in images.transpose(0, 2, 3, 1)]  # [N,H,W,3] views
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def sgd_step(model, opt, x, y, graph: GraphStep | None = None, amp: str = "off") -> None:
    """One SGD step: eager, or forward + loss + backward through ``graph`` (methods.engine.graph_step, as main.py's
    --compile runs the base step), under --amp's autocast."""
    opt.zero_grad(set_to_none=True)
    with autocast(x.device, amp):
        if graph is not None and graph.takes(x):
            loss = graph(model, x, y, y, 1.0)[0]
        else:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
    opt.step()


def fresh_model(dev: torch.device, seed: int):
    set_seed(seed)  # also the project's cuDNN settings (deterministic, no autotuning)
    model = build_model("resnet18", 10, 3, 32).to(dev)
    return model, make_optimizer("sgd", 0.05, model, "cos")[0]


def timed_train(batches, model, opt, a, dev: torch.device, timed_batches=None, graph: GraphStep | None = None,
                amp: str = "off") -> float:
    """Seconds for a.steps SGD steps after a.warmup (which also compiles ``graph``); `batches` yields (x, y)
    already on the device (``timed_batches``, when given, feeds the timed steps)."""
    model.train()
    for _ in range(a.warmup):
        sgd_step(model, opt, *next(batches), graph, amp)
    sync(dev)
    batches = batches if timed_batches is None else timed_batches
    t0 = time.perf_counter()
    for _ in range(a.steps):
        sgd_step(model, opt, *next(batches), graph, amp)
    sync(dev)
    return time.perf_counter() - t0


@torch.no_grad()
def timed_eval(batches, model, dev: torch.device) -> tuple[float, int]:
    """Seconds and sample count of one pass over `batches` (eval mode, argmax accuracy), after a small warm-up."""
    model.eval()
    model(torch.zeros(8, 3, 32, 32, device=dev))
    sync(dev)
    t0 = time.perf_counter()
    correct, n = torch.zeros((), dtype=torch.long, device=dev), 0
    for x, y in batches:
        correct += (model(x).argmax(1) == y).sum()
        n += len(y)
    sync(dev)
    return time.perf_counter() - t0, n


def run_ours(images: torch.Tensor, labels: torch.Tensor, a, dev: torch.device,
             compile_choice: str) -> tuple[float, float, int]:
    """Our pipeline; its step eager or compiled (``compile_choice``: main.py's --compile), with --amp and
    --channels_last."""
    images, labels = images.to(dev), labels.to(dev)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    aug = TrainAugment(["autoaug"] if a.autoaug else [], MEAN, STD)

    # as the methods do (methods/base.py run_epoch): one augmentation call per chunk of whole
    # batches (--aug_chunk samples), sliced into the batches. The timed steps start on a fresh
    # chunk and span whole chunks (see per_call), so they pay for their share of augmentation.
    per_call = a.per_call

    def train_batches():
        while True:
            perm = torch.randperm(len(images), device=dev)
            perm = perm[:len(perm) // a.batch * a.batch]
            for c in range(0, len(perm), per_call):
                idx = perm[c:c + per_call]
                x_all, y_all = aug(images[idx]).contiguous(memory_format=fmt), labels[idx]
                for s in range(0, len(idx), a.batch):
                    yield x_all[s:s + a.batch], y_all[s:s + a.batch]

    model, opt = fresh_model(dev, a.seed)
    model = model.to(memory_format=fmt)
    engine = compile_engine(compile_choice, dev)
    graph = None if engine is None else GraphStep(engine, (a.batch,), dev, a.amp)
    train_s = timed_train(train_batches(), model, opt, a, dev, timed_batches=train_batches(), graph=graph,
                          amp=a.amp)
    test_x, test_y = images[:a.eval_samples], labels[:a.eval_samples]
    evals = ((normalize(test_x[s:s + EVAL_BATCH], MEAN, STD).contiguous(memory_format=fmt), test_y[s:s + EVAL_BATCH])
             for s in range(0, a.eval_samples, EVAL_BATCH))
    with autocast(dev, a.amp):
        return (train_s, *timed_eval(evals, model, dev))


def run_baseline(images: np.ndarray, labels: np.ndarray, a, dev: torch.device) -> tuple[float, float, int]:
    from torchvision import transforms as T
    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    if a.autoaug:  # torchvision's PIL version of the CIFAR-10 AutoAugment policy
        steps.append(T.AutoAugment(T.AutoAugmentPolicy.CIFAR10))
    tail = [T.ToTensor(), T.Normalize(MEAN, STD)]
    train_set = PILDataset(images, labels, T.Compose(steps + tail))
    test_set = PILDataset(images[:a.eval_samples], labels[:a.eval_samples], T.Compose(tail))
    pin = dev.type == "cuda"
    loader = torch.utils.data.DataLoader(train_set, batch_size=a.batch, shuffle=True, num_workers=a.workers,
                                         pin_memory=pin, drop_last=True)

    def on_device(batches):
        for x, y in batches:
            yield x.to(dev, non_blocking=pin), y.to(dev, non_blocking=pin)

    model, opt = fresh_model(dev, a.seed)
    train_s = timed_train(on_device(itertools.chain.from_iterable(itertools.repeat(loader))), model, opt, a, dev)
    # a fresh pass as the public code evaluates: worker start-up included
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=EVAL_BATCH, shuffle=False,
                                              num_workers=a.workers, pin_memory=pin)
    return (train_s, *timed_eval(on_device(test_loader), model, dev))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch", type=int, default=16, help="training batch size (the paper's CIFAR batch: 16)")
    p.add_argument("--steps", type=int, default=200, help="timed training steps")
    p.add_argument("--warmup", type=int, default=20, help="untimed training steps first")
    p.add_argument("--eval_samples", type=int, default=10000)
    p.add_argument("--workers", type=int, default=2, help="baseline DataLoader worker processes")
    p.add_argument("--n", type=int, default=50000, help="synthetic training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--autoaug", action="store_true", help="add the CIFAR-10 AutoAugment policy to both pipelines")
    p.add_argument("--aug_chunk", type=int, default=AUG_CHUNK,
                   help="our pipeline: samples per augmentation call (whole batches; the methods use "
                        f"{AUG_CHUNK}); --aug_chunk 0 augments each batch on its own")
    p.add_argument("--skip_baseline", action="store_true")
    p.add_argument("--compile", nargs="+", default=["auto"], choices=COMPILE_CHOICES,
                   help="our step as main.py's --compile runs it; several: one row each (auto: CUDA graphs on a GPU, "
                        "eager on the CPU); the warm-up steps compile")
    p.add_argument("--amp", default="off", choices=AMP_CHOICES, help="ours: main.py's --amp")
    p.add_argument("--channels_last", action="store_true", help="ours: model and batches in channels_last")
    a = p.parse_args(argv)
    if a.n < a.batch or a.steps < 1 or a.warmup < 0 or a.eval_samples < 1 or a.workers < 0 or a.aug_chunk < 0:
        p.error("need --n >= --batch, --steps >= 1, --warmup >= 0, --eval_samples >= 1, --workers >= 0, "
                "--aug_chunk >= 0")
    a.eval_samples = min(a.eval_samples, a.n)
    # batches per augmentation call: --aug_chunk's whole batches, at most the timed steps; the
    # timed steps are rounded up to whole calls
    calls = max(1, min(a.aug_chunk // a.batch, a.steps, a.n // a.batch))
    a.steps = -(-a.steps // calls) * calls
    a.per_call = calls * a.batch
    dev = resolve_device(a.device)
    g = torch.Generator().manual_seed(a.seed)
    images = torch.randint(0, 256, (a.n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (a.n,), generator=g)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"device: {dev} ({name}) | torch threads {torch.get_num_threads()} | torch {torch.__version__}")
    print(f"settings: n {a.n} | batch {a.batch} | steps {a.steps} after {a.warmup} warm-up | eval {a.eval_samples} "
          f"samples in batches of {EVAL_BATCH} | augment crop4+flip{'+autoaug' if a.autoaug else ''}, ours "
          f"{a.per_call} samples per call | baseline workers {a.workers}")
    results = {("ours" if len(a.compile) == 1 else f"ours:{c}"): run_ours(images, labels, a, dev, c)
               for c in a.compile}
    print(f"ours: --compile {' / '.join(a.compile)} ({dev.type}: "
          f"{' / '.join(str(compile_engine(c, dev) or 'eager') for c in a.compile)}) | --amp {a.amp} | "
          f"{'channels_last' if a.channels_last else 'contiguous (NCHW)'}")
    if not a.skip_baseline:
        results["baseline"] = run_baseline(images.numpy(), labels.numpy(), a, dev)
    w = max(10, *(len(k) + 2 for k in results))
    print(f"{'pipeline':<{w}}{'train samples/s':>17}{'eval samples/s':>16}{'ms/step':>10}")
    rates = {}
    for k, (train_s, eval_s, n_eval) in results.items():
        assert n_eval == a.eval_samples, (k, n_eval)
        rates[k] = (a.steps * a.batch / train_s, n_eval / eval_s)
        print(f"{k:<{w}}{rates[k][0]:>17.0f}{rates[k][1]:>16.0f}{1000 * train_s / a.steps:>10.2f}")
    if "baseline" in rates:
        bt, be = rates["baseline"]
        for k in (k for k in rates if k != "baseline"):
            print(f"{k}/baseline: train {rates[k][0] / bt:.2f}x | eval {rates[k][1] / be:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
