"""Summarise finished runs across seeds into the paper's kind of table (markdown, csv or latex).

  python -m utils.report.summarize results/mnist [more folders or files] [--format markdown|csv|latex]
      [--metrics A_last A_avg F_last I_last A_last_final A_auc] [--times] [--out FILE] [--plots DIR]

Runs that differ only in their seed are one group: one row per method (+ memory manager,
transforms, and any other setting that differs between the runs), one column per dataset /
split / stream mode, ``mean +- std (n)`` with the sample standard deviation. Result files that
cannot be read, runs that did not finish every task, runs whose logs exist without results,
and second runs of a seed already counted are listed under the table, never averaged in.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

METRICS = ("A_last", "A_avg", "F_last", "I_last", "A_last_final", "A_avg_final", "A_auc")
# config entries that do not change what a run computes (or are the seed itself)
IGNORED = {"rnd_seed", "run_name", "device", "device_resolved", "out_dir", "data_dir", "joint_acc",
           "joint_acc_source", "mem_manage_resolved", "n_worker", "no_cache", "init_opt", "pretrain", "mem_manage",
           "data_budget_gb", "dry_run"}
ROW_KEYS = ("mode", "mem_manage", "transforms")
COL_KEYS = ("dataset", "exp_name", "stream_env")


@dataclass
class Run:
    path: Path
    config: dict
    result: dict
    mtime: float


@dataclass
class Summary:
    """Groups of runs keyed by (row, column), and what was left out and why."""

    cells: dict[tuple[str, str], list[Run]] = field(default_factory=dict)
    rows: list[str] = field(default_factory=list)
    cols: list[str] = field(default_factory=list)
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


def _json_files(paths: list[Path]) -> list[Path]:
    out = []
    for p in paths:
        if p.is_dir():
            out += sorted(q for q in p.rglob("*.json") if not q.name.endswith(".config.json"))
        elif p.is_file():
            out.append(p)
    return out


def load_run(path: Path) -> tuple[Run | None, str]:
    """A finished run, or None and the reason it cannot be counted."""
    try:
        r = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        return None, f"unreadable: {e}"
    except ValueError as e:
        return None, f"not valid JSON ({e}); a corrupt or partly written file"
    if not isinstance(r, dict) or not isinstance(r.get("config"), dict):
        return None, "not a results file (no 'config')"
    missing = [k for k in ("A_last", "task_acc") if k not in r]
    if missing:
        return None, f"incomplete results: no {', '.join(missing)}"
    c = r["config"]
    n_tasks = 1 if c.get("mode") == "joint" else c.get("n_tasks")
    if isinstance(n_tasks, int) and len(r["task_acc"]) < n_tasks:
        return None, f"incomplete: {len(r['task_acc'])} of {n_tasks} tasks finished"
    return Run(path, c, r, path.stat().st_mtime), ""


def orphan_logs(results_dirs: list[Path], found: set[str]) -> list[tuple[str, str]]:
    """Runs that wrote a config under logs/ but no results file (running, failed or killed)."""
    out = []
    for d in results_dirs:
        if not d.is_dir() or d.parent.name != "results":
            continue
        logs = d.parent.parent / "logs" / d.name
        for cfg in sorted(logs.glob("*.config.json")) if logs.is_dir() else []:
            run = cfg.name[: -len(".config.json")]
            if run not in found:
                out.append((str(cfg), "no results file: the run is still going, failed or was interrupted"))
    return out


def setting(c: dict, key: str) -> str:
    v = c.get(key)
    if key == "transforms":
        return " ".join(v) if v else "none"
    if key == "mem_manage":
        return str(c.get("mem_manage_resolved") or v)
    if key == "mode" and c.get("as_intended"):
        return f"{v} (as intended)"
    return str(v)


def signature(c: dict) -> dict:
    return {k: json.dumps(v, sort_keys=True) for k, v in c.items() if k not in IGNORED}


def summarize_runs(paths: list[Path]) -> Summary:
    s = Summary()
    runs: list[Run] = []
    for p in _json_files(paths):
        run, why = load_run(p)
        if run is None:
            s.left_out.append((str(p), why))
            continue
        folder = p.parent.name
        ds = run.config.get("dataset")
        if p.parent.parent.name == "results" and ds is not None and ds != folder:
            s.left_out.append((str(p), f"mismatched: dataset '{ds}' in folder '{folder}'"))
            continue
        runs.append(run)
    s.left_out += orphan_logs([p for p in paths if p.is_dir()], {r.path.stem for r in runs} |
                              {Path(f).stem for f, _ in s.left_out})
    # settings that differ between runs of the same method / memory / transforms (other than the
    # seed) are shown in their row label; a flag missing from some configs (results of a version
    # that did not have it) is not taken as a difference
    base: dict[str, list[Run]] = {}
    for r in runs:
        base.setdefault(" / ".join(setting(r.config, k) for k in ROW_KEYS), []).append(r)
    groups: dict[tuple[str, str], dict[int, Run]] = {}
    for label, members in base.items():
        sigs = [signature(r.config) for r in members]
        keys = sorted({k for sg in sigs for k in sg})
        varying = [k for k in keys if k not in ROW_KEYS + COL_KEYS and all(k in sg for sg in sigs)
                   and len({sg[k] for sg in sigs}) > 1]
        for r in sorted(members, key=lambda r: r.mtime):
            c = r.config
            extra = [f"{k}={setting(c, k)}" for k in varying]
            row = label + (" (" + ", ".join(extra) + ")" if extra else "")
            col = " ".join(setting(c, k) for k in COL_KEYS)
            g = groups.setdefault((row, col), {})
            seed = c.get("rnd_seed")
            if seed in g:  # keep the newest run of a seed
                s.left_out.append((str(g[seed].path), f"seed {seed} ran again in {r.path.name}: the newer run counts"))
            g[seed] = r
    for key, g in groups.items():
        s.cells[key] = [g[k] for k in sorted(g, key=str)]
    s.rows = sorted({k[0] for k in groups}, key=natural)
    s.cols = sorted({k[1] for k in groups}, key=natural)
    return s


def natural(text: str) -> list:
    """Sort key that puts n_epoch=16 before n_epoch=256."""
    import re
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)]


def mean_std(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return math.nan, math.nan, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def cell_text(runs: list[Run], metric: str) -> str:
    """mean +- std (n) over the runs that have the metric; "n/a" when none has it (I_last without a
    joint accuracy), empty when there are no runs."""
    m, sd, n = mean_std([r.result.get(metric) for r in runs])
    return ("n/a" if runs else "") if n == 0 else f"{m:.2f} +- {sd:.2f} ({n})"


def dominant_phase(runs: list[Run]) -> str:
    tot: dict[str, float] = {}
    for r in runs:
        for k, v in (r.result.get("phase_time_s") or {}).items():
            tot[k] = tot.get(k, 0.0) + float(v) / len(runs)
    if not tot:
        return ""
    k = max(tot, key=tot.get)
    return f"{k} {tot[k]:.1f} s"


def tables(s: Summary, metrics: list[str], times: bool) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) per metric, and the timing table when asked."""
    out = []
    for metric in metrics:
        rows = [[r] + [cell_text(s.cells.get((r, c), []), metric) for c in s.cols] for r in s.rows]
        out.append((metric, ["method / memory / transforms"] + s.cols, rows))
    if times:
        rows = []
        for (r, c), runs in sorted(s.cells.items()):
            wall, sd, n = mean_std([x.result.get("wall_time_s") for x in runs])
            devices = sorted({str(x.result.get("device", "?")) for x in runs})
            rows.append([r, c, f"{wall:.1f} +- {sd:.1f} ({n})", dominant_phase(runs), ", ".join(devices)])
        out.append(("wall time (s)", ["method / memory / transforms", "setting", "wall_time_s", "dominant phase",
                                      "device"], rows))
    return out


def _latex_escape(t: str) -> str:
    return t.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%").replace("&", "\\&") \
        .replace("+-", "$\\pm$")


def render(title: str, header: list[str], rows: list[list[str]], fmt: str) -> str:
    if fmt == "csv":
        import csv
        import io
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["metric"] + header)
        for r in rows:
            w.writerow([title] + r)
        return buf.getvalue()
    if fmt == "latex":
        lines = [f"% {title}", "\\begin{tabular}{l" + "c" * (len(header) - 1) + "}", "\\hline",
                 " & ".join(_latex_escape(h) for h in header) + " \\\\", "\\hline"]
        lines += [" & ".join(_latex_escape(x) for x in r) + " \\\\" for r in rows]
        lines += ["\\hline", "\\end{tabular}"]
        return "\n".join(lines) + "\n"
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def report(s: Summary, metrics: list[str], fmt: str = "markdown", times: bool = False) -> str:
    parts = [render(t, h, r, fmt) for t, h, r in tables(s, metrics, times)]
    if s.left_out:
        if fmt == "csv":
            parts.append("left_out,reason\n" + "".join(f"\"{f}\",\"{w}\"\n" for f, w in s.left_out))
        else:
            c = "% " if fmt == "latex" else "- "
            parts.append(("% " if fmt == "latex" else "") + "Not averaged in:\n" +
                         "".join(f"{c}{f}: {w}\n" for f, w in s.left_out))
    return "\n".join(parts)


def default_metrics(s: Summary) -> list[str]:
    """A_last; A_last, A_auc and F_last when some run has an anytime curve."""
    anytime = any(r.result.get("anytime") for runs in s.cells.values() for r in runs)
    return ["A_last", "A_auc", "F_last"] if anytime else ["A_last"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, help="results folders (e.g. results/mnist) or result files")
    p.add_argument("--format", default="markdown", choices=["markdown", "csv", "latex"])
    p.add_argument("--metrics", nargs="+", choices=METRICS,
                   help="default: A_last; with runs that have an anytime curve (i-Blurry, --eval_period) also A_auc "
                        "and F_last")
    p.add_argument("--times", action="store_true", help="also the wall time per group and its dominant phase")
    p.add_argument("--out", type=Path, help="write the summary to FILE as well")
    p.add_argument("--plots", type=Path, metavar="DIR",
                   help="write PNG figures to DIR: accuracy after each task per group (mean, +- std band), the "
                        "anytime accuracy against the samples seen (runs with a curve), the accuracy and "
                        "forgetting matrices and the final memory's class histogram per group")
    a = p.parse_args(argv)
    missing = [str(x) for x in a.paths if not x.exists()]
    if missing:
        print(f"error: not found: {', '.join(missing)} (give results/<dataset> folders or result files)",
              file=sys.stderr)
        return 2
    s = summarize_runs(a.paths)
    if not s.cells:
        print(report(s, a.metrics or ["A_last"], a.format), end="")
        print("error: no finished run found in " + ", ".join(str(x) for x in a.paths), file=sys.stderr)
        return 1
    metrics = a.metrics or default_metrics(s)
    text = report(s, metrics, a.format, a.times)
    print(text, end="")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_name(a.out.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(a.out)
    if a.plots:
        from utils.report.plots import write_plots
        for path in write_plots(s.cells, s.cols, a.plots):
            print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
