"""The command line of ``python -m utils.prepare``: prepare MNIST-style IDX and CIFAR pickle sets as
dataset/<name>/{train,test}/<class>/<file>.png (MNIST-style: <index>.png; CIFAR: cifar2png's per-class
counter, as the paper's split files name them)."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from utils.data.datasets import preparable
from utils.prepare.build import OFFICIAL, prepare
from utils.prepare.errors import PrepareError


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line of `python -m utils.prepare`."""
    p = argparse.ArgumentParser(prog="python -m utils.prepare", description=__doc__)
    p.add_argument("--dataset", required=True, choices=preparable())
    p.add_argument("--source", default=None,
                   help="MNIST-style: folder with the four IDX files (plain or .gz); CIFAR: "
                        "cifar-10(0)-python.tar.gz, its extracted folder, or a folder holding "
                        "either; default: download")
    p.add_argument("--data_dir", default="dataset")
    p.add_argument("--per_class", type=int, default=None,
                   help="keep only the first N samples of each class (quick trials)")
    p.add_argument("--force", action="store_true", help="replace an existing, different folder")
    p.add_argument("--no_count_check", action="store_true",
                   help="do not require the official 60000/10000 (CIFAR: 50000/10000) samples "
                        "(custom sets)")
    p.add_argument("--workers", type=int, default=2)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; return the exit code (2 on a PrepareError)."""
    args = parse_args(argv)
    try:
        prepare(args.dataset, args.source, args.data_dir, args.per_class, args.force,
                expected_counts=None if args.no_count_check else OFFICIAL,
                workers=args.workers)
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
