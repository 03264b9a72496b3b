"""The run's logger ('rm'): to its log file and to stderr."""
from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(log_file: Path | None, rank: int | None = None) -> logging.Logger:
    """Log to the run's file and to stderr (the 'rm' logger). ``rank``: a torchrun rank other than 0,
    which logs only warnings and errors, to stderr, with its rank."""
    logger = logging.getLogger("rm")
    logger.setLevel(logging.INFO if rank is None else logging.WARNING)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    who = "" if rank is None else f"[rank {rank}] "
    fmt = logging.Formatter(f"%(asctime)s {who}[%(levelname)s] %(message)s", "%H:%M:%S")
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(fmt)
    logger.addHandler(sh)
    if log_file is not None:
        fh = logging.FileHandler(log_file, mode="a")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


def close_logging() -> None:
    logger = logging.getLogger("rm")
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
