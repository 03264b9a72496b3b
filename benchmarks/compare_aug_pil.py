"""Compare our batched train augmentation with the public code's PIL pipeline, statistically.

The public code augments one PIL image at a time (RandomCrop(28, padding=4), RandomHorizontalFlip,
then the CIFAR-10 AutoAugment policy of the `randaugment` package / its own augment.py), and its
uncertainty views use that package's RandAugment. This script runs both on the same real MNIST
images and prints pixel statistics of the outputs: mean, std, % pixels equal to the fill 128,
% black, % white, mean horizontal gradient. Needs the `randaugment` 1.0.2 wheel unpacked
somewhere (it crashes on NumPy >= 1.24, so `np.int` is patched back in for it):
    pip download --no-deps -d /tmp/ra randaugment==1.0.2 && (cd /tmp/ra && unzip -o -q *.whl)
    python benchmarks/compare_aug_pil.py --randaugment_dir /tmp/ra --mnist ../shared/datasets/mnist
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def stats(z: np.ndarray) -> list[float]:
    return [round(float(v), 2) for v in (z.mean(), z.std(), (z == 128).mean() * 100, (z == 0).mean() * 100,
                                         (z == 255).mean() * 100, np.abs(z[:, :, :-1] - z[:, :, 1:]).mean())]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--randaugment_dir", required=True)
    p.add_argument("--mnist", required=True, help="folder with the MNIST IDX files")
    p.add_argument("--n", type=int, default=3000)
    a = p.parse_args(argv)
    np.int = int  # the package uses the alias NumPy removed in 1.24
    sys.path.insert(0, a.randaugment_dir)
    from PIL import Image
    from randaugment import CIFAR10Policy, RandAugment
    from torchvision import transforms

    from utils.data.augment import autoaugment_cifar10, crop_flip, randaugment
    from utils.prepare.idx import read_split

    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    x = read_split(a.mnist, "test")[0][: a.n].copy()

    def pil(tf) -> np.ndarray:
        return np.stack([np.asarray(tf(Image.fromarray(im).convert("RGB")))[..., 0] for im in x]).astype(float)

    def ours(fn) -> np.ndarray:
        return fn(torch.from_numpy(x)[:, None])[:, 0].numpy().astype(float)

    pil_train = transforms.Compose([transforms.RandomCrop(28, padding=4), transforms.RandomHorizontalFlip(),
                                    CIFAR10Policy()])
    print("columns: mean, std, %fill128, %black, %white, mean |horizontal gradient|")
    print("train crop+flip+autoaug  PIL ", stats(pil(pil_train)))
    print("train crop+flip+autoaug  ours", stats(ours(lambda t: autoaugment_cifar10(crop_flip(t)))))
    print("uncertainty randaug      PIL ", stats(pil(RandAugment())))
    print("uncertainty randaug      ours", stats(ours(randaugment)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
