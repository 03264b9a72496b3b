"""The MNIST column of the paper's table, and the study of which settings bring it back.

  python benchmarks/mnist_study.py table  --collections_dir ../shared/collections/mnist --jobs 2
  python benchmarks/mnist_study.py repro  --collections_dir ../shared/collections/mnist --jobs 2
  python benchmarks/mnist_study.py report [--out_dir study]

Each run is ``main.py`` in its own process (``--threads`` torch threads each, ``--jobs`` at a time),
named after its cell and seed under ``--out_dir``; a run whose results file exists is skipped, so
an interrupted sweep continues where it stopped. ``report`` prints mean +- std over seeds of A_last
(best epoch, the paper's protocol) and A_last_final (final model) next to SPEC section 10.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from utils.report.summarize import mean_std  # noqa: E402

AUG = ["cutmix", "autoaug"]

# SPEC section 10, MNIST, Blurry10-Online: (mean, std) of last accuracy over 3 seeds
PAPER = {"ewc": (90.98, 0.61), "rwalk": (90.69, 0.62), "icarl": (78.09, 0.60), "gdumb": (88.51, 0.52),
         "bic": (77.75, 1.27), "rm_noda": (92.65, 0.33), "rm": (91.80, 0.69)}

# the paper's rows: (row name, paper key, main.py flags); baselines without cutmix/autoaug as the
# authors say they ran (random crop and flip remain)
TABLE = [("EWC", "ewc", ["--mode", "ewc", "--transforms"]),
         ("Rwalk", "rwalk", ["--mode", "rwalk", "--transforms"]),
         ("iCaRL", "icarl", ["--mode", "icarl", "--transforms"]),
         ("GDumb", "gdumb", ["--mode", "gdumb", "--transforms"]),
         ("BiC", "bic", ["--mode", "bic", "--transforms"]),
         ("BiC --distilling", "bic", ["--mode", "bic", "--distilling", "--transforms"]),
         ("RM w/o DA", "rm_noda", ["--mode", "rm", "--transforms"]),
         ("RM", "rm", ["--mode", "rm", "--transforms", *AUG])]


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")


def table_cells() -> list[dict]:
    return [{"name": slug(row), "row": row, "paper": key, "flags": flags} for row, key, flags in TABLE]


def repro_cells(methods: list[str], epochs: list[int], augs: list[str], channels: list[int]) -> list[dict]:
    """Full grid over method x augmentation x input channels x epochs over memory."""
    cells = []
    for m, aug, ch, ep in itertools.product(methods, augs, channels, epochs):
        key = ("rm" if aug == "on" else "rm_noda") if m == "rm" else m
        # only A_last / A_last_final are reported: per-epoch evaluation in the final task suffices
        flags = ["--mode", m, "--in_channels", str(ch), "--n_epoch", str(ep), "--eval_epochs", "last_task",
                 "--transforms", *(AUG if aug == "on" else [])]
        cell = {"name": f"{m}_aug{aug}_ch{ch}_ep{ep}", "row": m, "paper": key, "flags": flags}
        if ch == 3 and ep == 5:  # the public settings: the same run as the table's row
            same = [t["name"] for t in table_cells() if t["paper"] == key and "distill" not in t["name"]]
            if same and (aug == "off" or m == "rm"):
                cell["alias"] = same[0]
        cells.append(cell)
    return cells


def result_path(out: Path, run: str) -> Path:
    return out / "results" / "mnist" / f"{run}.json"


def run_one(cell: dict, seed: int, a) -> tuple[str, str]:
    run = f"{cell['name']}_s{seed}"
    out = Path(a.out_dir)
    if result_path(out, run).is_file():
        return run, "done before"
    if cell.get("alias") and result_path(out, f"{cell['alias']}_s{seed}").is_file():
        # the same settings ran as a table row: reuse that run's results under this name
        src = result_path(out, f"{cell['alias']}_s{seed}")
        tmp = result_path(out, run).with_suffix(".tmp")
        tmp.write_text(src.read_text())
        tmp.replace(result_path(out, run))
        return run, f"same run as {src.name}"
    cmd = [sys.executable, str(ROOT / "main.py"), "--dataset", "mnist", "--data_dir", a.data_dir,
           "--exp_name", "blurry10", "--stream_env", "online", "--rnd_seed", str(seed), "--device", a.device,
           "--out_dir", a.out_dir, "--run_name", run, *cell["flags"]]
    if a.collections_dir:
        cmd += ["--collections_dir", a.collections_dir]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if p.returncode:
        return run, f"FAILED (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:]}"
    return run, f"{time.perf_counter() - t0:.0f} s"


def sweep(cells: list[dict], seeds: list[int], a) -> int:
    jobs = [(c, s) for s in seeds for c in cells]  # seed-major: every cell gets seed 1 first
    failed = 0
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        for i, (run, status) in enumerate(pool.map(lambda j: run_one(j[0], j[1], a), jobs), 1):
            failed += status.startswith("FAILED")
            print(f"[{i}/{len(jobs)}] {run}: {status}", flush=True)
    return 1 if failed else 0


def load_runs(out: Path) -> dict[str, list[dict]]:
    """Results grouped by cell name (the run name less its _s<seed> suffix)."""
    groups: dict[str, list[dict]] = {}
    for p in sorted((out / "results" / "mnist").glob("*.json")):
        try:
            r = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            print(f"skipped unreadable {p}: {e}", file=sys.stderr)
            continue
        groups.setdefault(p.stem.rsplit("_s", 1)[0], []).append(r)
    return groups


def ms(values: list[float]) -> tuple[float, float]:
    return mean_std(values)[:2]


def fmt(values: list[float]) -> str:
    m, s = ms(values)
    return f"{m:.2f} +- {s:.2f}" if len(values) > 1 else f"{m:.2f}"


def within(values: list[float], key: str) -> bool:
    """Our mean +- std overlaps the paper's mean +- std."""
    m, s = ms(values)
    pm, ps = PAPER[key]
    return abs(m - pm) <= s + ps


def dominant(runs: list[dict]) -> str:
    phases: dict[str, float] = {}
    for r in runs:
        for k, v in r.get("phase_time_s", {}).items():
            phases[k] = phases.get(k, 0.0) + v / len(runs)
    if not phases:
        return "-"
    k = max(phases, key=phases.get)
    return f"{k} {phases[k]:.0f} s"


def report_table(groups: dict[str, list[dict]]) -> None:
    print("| method | A_last (paper protocol) | A_last_final | paper | n | wall s (mean) | dominant phase |")
    print("|---|---|---|---|---|---|---|")
    for c in table_cells():
        runs = groups.get(c["name"], [])
        if not runs:
            continue
        pm, ps = PAPER[c["paper"]]
        print(f"| {c['row']} | {fmt([r['A_last'] for r in runs])} | {fmt([r['A_last_final'] for r in runs])} | "
              f"{pm:.2f} +- {ps:.2f} | {len(runs)} | {statistics.fmean(r['wall_time_s'] for r in runs):.0f} | "
              f"{dominant(runs)} |")


def report_repro(groups: dict[str, list[dict]]) -> None:
    rows = []
    for name, runs in sorted(groups.items()):
        c = runs[0]["config"]
        if "_aug" not in name:
            continue
        m = c["mode"]
        aug = "on" if c["transforms"] else "off"
        key = ("rm" if aug == "on" else "rm_noda") if m == "rm" else m
        rows.append((m, aug, c["in_channels"], c["n_epoch"], key, runs))
    if not rows:
        return
    print("\n| method | aug | in_channels | n_epoch | A_last | A_last_final | paper | within paper spread | n | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m, aug, ch, ep, key, runs in sorted(rows, key=lambda r: (r[0], r[1], r[2], r[3])):
        acc = [r["A_last"] for r in runs]
        pm, ps = PAPER[key]
        print(f"| {m} | {aug} | {ch} | {ep} | {fmt(acc)} | {fmt([r['A_last_final'] for r in runs])} | "
              f"{pm:.2f} +- {ps:.2f} | {'yes' if within(acc, key) and len(runs) > 1 else 'no' if len(runs) > 1 else '(1 seed)'} | "
              f"{len(runs)} | {statistics.fmean(r['wall_time_s'] for r in runs):.0f} |")
    # settings shared by every method: which land all of them within the paper's spread
    by_setting: dict[tuple, dict[str, list]] = {}
    for m, aug, ch, ep, key, runs in rows:
        by_setting.setdefault((ch, ep), {})[f"{m}/{aug}"] = [key, [r["A_last"] for r in runs]]
    print("\nPer setting (in_channels, n_epoch): gap to the paper, ours - paper, A_last means")
    for (ch, ep), ms_ in sorted(by_setting.items()):
        gaps = ", ".join(f"{k} {ms(v[1])[0] - PAPER[v[0]][0]:+.1f}" for k, v in sorted(ms_.items()))
        ok = all(within(v[1], v[0]) and len(v[1]) > 1 for v in ms_.values())
        print(f"- ch {ch}, n_epoch {ep}: {gaps}{' -> every method within the paper spread' if ok else ''}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["table", "repro", "report"])
    p.add_argument("--out_dir", default="study", help="root of the sweep's logs/, results/, tensorboard/")
    p.add_argument("--data_dir", default="dataset")
    p.add_argument("--collections_dir", default=None, help="the paper's split files (../shared/collections/mnist)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--methods", nargs="+", default=["rm", "ewc", "gdumb"], help="repro: methods")
    p.add_argument("--epochs", type=int, nargs="+", default=[5, 16, 64, 256], help="repro: epochs over memory")
    p.add_argument("--augs", nargs="+", default=["off", "on"], choices=["off", "on"],
                   help="repro: without / with cutmix autoaug")
    p.add_argument("--channels", type=int, nargs="+", default=[3, 1], choices=[1, 3],
                   help="repro: 3 = grey repeated to RGB as the public code, 1 = grey model")
    a = p.parse_args(argv)
    rc = 0
    if a.what == "table":
        rc = sweep(table_cells(), a.seeds, a)
    elif a.what == "repro":
        rc = sweep(repro_cells(a.methods, a.epochs, a.augs, a.channels), a.seeds, a)
    groups = load_runs(Path(a.out_dir))
    report_table(groups)
    report_repro(groups)
    return rc


if __name__ == "__main__":
    sys.exit(main())
