"""The joint-training accuracy behind I_last, read from the newest matching finished joint run."""
from __future__ import annotations

import json
from pathlib import Path


def find_joint_acc(results: Path, seed: int, model: str, exp_name: str, transforms: list[str]
                   ) -> tuple[float, str] | None:
    """A_last of the newest finished joint run in ``results`` with this seed and model (preferring
    the same split and transforms), and its file; None when there is none."""
    found = []
    for p in sorted(results.glob("*.json")) if results.is_dir() else []:
        try:
            r = json.loads(p.read_text())
            c = r["config"]
            if c["mode"] != "joint" or c["rnd_seed"] != seed or c["model_name"] != model:
                continue
            rank = (c.get("exp_name") == exp_name, c.get("transforms") == list(transforms), p.stat().st_mtime)
            found.append((rank, float(r["A_last"]), str(p)))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not found:
        return None
    _, acc, path = max(found)
    return acc, path
