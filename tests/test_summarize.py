"""utils.summarize on hand-made result files: means, stds, grouping, formats, and what is left out."""
from __future__ import annotations

import json
import os
from pathlib import Path

from utils.report import summarize as sm

BASE = {"mode": "rm", "mem_manage": "default", "mem_manage_resolved": "uncertainty", "transforms": ["cutmix", "autoaug"],
        "dataset": "mnist", "exp_name": "blurry10", "stream_env": "online", "n_tasks": 5, "n_epoch": 5,
        "memory_size": 500}


def write(root: Path, name: str, seed: int, a_last: float, mtime: float = 1000.0, dataset: str = "mnist",
          **cfg) -> Path:
    p = root / "results" / dataset / f"{name}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    config = {**BASE, **cfg, "dataset": dataset, "rnd_seed": seed, "run_name": name}
    p.write_text(json.dumps({"config": config, "A_last": a_last, "A_avg": a_last + 5, "A_last_final": a_last - 2,
                             "task_acc": [0.0] * (1 if config["mode"] == "joint" else config["n_tasks"]),
                             "wall_time_s": 10.0 * seed, "phase_time_s": {"stream_pass": 6.0, "evaluation": 1.0},
                             "device": "cpu"}))
    os.utime(p, (mtime, mtime))
    return p


def test_groups_by_everything_but_the_seed_with_sample_std(tmp_path):
    for seed, acc in ((1, 70.0), (2, 72.0), (3, 77.0)):
        write(tmp_path, f"rm_s{seed}", seed, acc)
    for seed, acc in ((1, 80.0), (2, 84.0)):
        write(tmp_path, f"ewc_s{seed}", seed, acc, mode="ewc", mem_manage_resolved="reservoir", transforms=[])
    write(tmp_path, "rm_disjoint_s1", 1, 50.0, exp_name="disjoint")
    s = sm.summarize_runs([tmp_path / "results" / "mnist"])
    assert s.cols == ["mnist blurry10 online", "mnist disjoint online"]
    assert s.rows == ["ewc / reservoir / none", "rm / uncertainty / cutmix autoaug"]
    assert s.left_out == []
    text = sm.report(s, ["A_last", "A_avg"])
    # 70, 72, 77: mean 73, sample std sqrt(((-3)^2 + (-1)^2 + 4^2) / 2) = sqrt(13) = 3.61
    assert "| rm / uncertainty / cutmix autoaug | 73.00 +- 3.61 (3) | 50.00 +- 0.00 (1) |" in text
    # 80, 84: mean 82, std sqrt(8) = 2.83; no disjoint ewc run -> empty cell
    assert "| ewc / reservoir / none | 82.00 +- 2.83 (2) |  |" in text
    assert "**A_avg**" in text and "| rm / uncertainty / cutmix autoaug | 78.00 +- 3.61 (3) |" in text


def test_a_setting_that_differs_splits_the_row_and_is_named(tmp_path):
    for seed in (1, 2):
        write(tmp_path, f"a_s{seed}", seed, 60.0 + seed, n_epoch=5)
        write(tmp_path, f"b_s{seed}", seed, 90.0 + seed, n_epoch=256)
    s = sm.summarize_runs([tmp_path / "results" / "mnist"])
    # natural order: 5 before 256
    assert s.rows == ["rm / uncertainty / cutmix autoaug (n_epoch=5)", "rm / uncertainty / cutmix autoaug (n_epoch=256)"]
    text = sm.report(s, ["A_last"])
    assert "(n_epoch=5) | 61.50 +- 0.71 (2) |" in text and "(n_epoch=256) | 91.50 +- 0.71 (2) |" in text


def test_bad_partial_duplicate_mismatched_and_orphan_runs_are_listed_not_averaged(tmp_path):
    root = tmp_path / "results" / "mnist"
    write(tmp_path, "good_s1", 1, 70.0)
    write(tmp_path, "good_s2", 2, 74.0)
    write(tmp_path, "old_s2", 2, 10.0, mtime=10.0)  # an older run of seed 2: the newer counts
    (root / "corrupt.json").write_text('{"config": {"mode": "rm"}, "A_la')
    partial = json.loads((root / "good_s1.json").read_text())
    partial["task_acc"] = [1.0, 2.0]
    (root / "partial.json").write_text(json.dumps(partial))
    (root / "nometrics.json").write_text(json.dumps({"config": BASE}))
    write(tmp_path, "wrongfolder", 3, 5.0, dataset="fashion_mnist")
    wf = tmp_path / "results" / "fashion_mnist" / "wrongfolder.json"
    wf.rename(root / "wrongfolder.json")
    logs = tmp_path / "logs" / "mnist"
    logs.mkdir(parents=True)
    (logs / "good_s1.config.json").write_text("{}")
    (logs / "killed_s3.config.json").write_text("{}")
    s = sm.summarize_runs([root])
    text = sm.report(s, ["A_last"])
    assert "| rm / uncertainty / cutmix autoaug | 72.00 +- 2.83 (2) |" in text
    why = {Path(f).name: w for f, w in s.left_out}
    assert set(why) == {"corrupt.json", "partial.json", "nometrics.json", "wrongfolder.json", "old_s2.json",
                        "killed_s3.config.json"}
    assert "not valid JSON" in why["corrupt.json"]
    assert why["partial.json"] == "incomplete: 2 of 5 tasks finished"
    assert "no A_last" in why["nometrics.json"]
    assert "mismatched: dataset 'fashion_mnist'" in why["wrongfolder.json"]
    assert "newer run counts" in why["old_s2.json"]
    assert "interrupted" in why["killed_s3.config.json"]
    assert "Not averaged in:" in text and "corrupt.json" in text


def test_formats_times_and_exit_codes(tmp_path, capsys):
    for seed in (1, 2):
        write(tmp_path, f"rm_s{seed}", seed, 70.0 + 2 * seed)
    root = tmp_path / "results" / "mnist"
    out = tmp_path / "summary.csv"
    assert sm.main([str(root), "--format", "csv", "--times", "--out", str(out)]) == 0
    csv = out.read_text()
    assert "A_last,rm / uncertainty / cutmix autoaug,73.00 +- 1.41 (2)" in csv
    # wall 10 and 20 s: 15 +- 7.1; the stream pass dominates
    assert "15.0 +- 7.1 (2),stream_pass 6.0 s,cpu" in csv
    assert sm.main([str(root), "--format", "latex"]) == 0
    tex = capsys.readouterr().out
    assert "\\begin{tabular}{lc}" in tex and "73.00 $\\pm$ 1.41 (2) \\\\" in tex
    assert sm.main([str(tmp_path / "nowhere")]) == 2
    empty = tmp_path / "results" / "empty"
    empty.mkdir()
    assert sm.main([str(empty)]) == 1
    assert "no finished run" in capsys.readouterr().err


def test_missing_flag_in_an_older_config_takes_its_default(tmp_path):
    write(tmp_path, "new_s1", 1, 70.0, eval_epochs="all")
    write(tmp_path, "old_s2", 2, 72.0)  # saved before --eval_epochs existed
    s = sm.summarize_runs([tmp_path / "results" / "mnist"])
    assert s.rows == ["rm / uncertainty / cutmix autoaug"]
    assert len(s.cells[(s.rows[0], s.cols[0])]) == 2


def test_forgetting_matrix_and_curve_band_by_hand():
    import numpy as np

    from utils.report.plots import curve_stats, forgetting_matrix
    acc = np.array([[90.0, np.nan], [70.0, 80.0], [75.0, 60.0]])
    f = forgetting_matrix(acc)
    # after task 1: task 0 best before = 90 -> 90 - 70 = 20; after task 2: 90 - 75 = 15, 80 - 60 = 20
    assert f[1, 0] == 20 and f[2, 0] == 15 and f[2, 1] == 20
    assert np.isnan(f[0]).all() and np.isnan(f[1, 1])
    m, s = curve_stats([[10.0, 20.0, 30.0], [20.0, 40.0]])  # cut to the shorter run
    assert m.tolist() == [15.0, 30.0] and np.allclose(s, [7.0710678, 14.1421356])


def test_plots_are_written_as_png(tmp_path):
    import pytest
    pytest.importorskip("matplotlib")
    from utils.report.plots import write_plots
    for seed in (1, 2):
        p = write(tmp_path, f"rm_s{seed}", seed, 70.0)
        r = json.loads(p.read_text())
        r.update(task_acc=[50.0, 60.0, 70.0], task_classes=[[0, 1], [2, 3], [4, 5]],
                 cls_acc=[[90, 80, None, None, 0, 0], [50, 60, 90, 90, 0, 0], [40, 50, 70, 60, 95, 85]],
                 memory_class_counts=[[5, 5, 0, 0, 0, 0], [3, 3, 2, 2, 0, 0], [2, 2, 2, 2, 1, 1]])
        r["config"]["n_tasks"] = 3
        p.write_text(json.dumps(r))
    s = sm.summarize_runs([tmp_path / "results" / "mnist"])
    paths = write_plots(s.cells, s.cols, tmp_path / "plots")
    assert sorted(x.name for x in paths) == ["accuracy_mnist_blurry10_online.png",
                                             "group_mnist_blurry10_online__rm_uncertainty_cutmix_autoaug.png"]
    for x in paths:
        assert x.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and x.stat().st_size > 10_000


def test_anytime_curves_columns_and_intended_rows(tmp_path, capsys):
    """i-Blurry results: default columns A_last, A_auc and F_last; an --as_intended row is named; the anytime
    band is the mean and sample std over seeds at each point (by hand), and its PNG is written."""
    import numpy as np
    import pytest

    from utils.report.plots import anytime_stats
    for seed, accs in ((1, [20.0, 40.0]), (2, [30.0, 60.0])):
        for intended in (False, True):
            p = write(tmp_path, f"rm{intended}_s{seed}", seed, 70.0, exp_name="iblurry50_10", as_intended=intended)
            r = json.loads(p.read_text())
            r.update(A_auc=sum(accs) / 2, F_last=5.0, anytime=[{"task": 0, "samples": 100 * (k + 1), "acc": a}
                                                              for k, a in enumerate(accs)])
            p.write_text(json.dumps(r))
    x, m, s = anytime_stats([{"anytime": [{"samples": 100, "acc": 20.0}, {"samples": 200, "acc": 40.0}]},
                             {"anytime": [{"samples": 100, "acc": 30.0}, {"samples": 200, "acc": 60.0}]}])
    assert x.tolist() == [100, 200] and m.tolist() == [25.0, 50.0] and np.allclose(s, [7.0710678, 14.1421356])
    assert sm.main([str(tmp_path / "results" / "mnist")]) == 0
    out = capsys.readouterr().out
    assert "**A_auc**" in out and "**F_last**" in out and "rm (as intended) / uncertainty" in out
    assert "37.50 +- 10.61 (2)" in out  # A_auc: 30 and 45
    pytest.importorskip("matplotlib")
    from utils.report.plots import write_plots
    s = sm.summarize_runs([tmp_path / "results" / "mnist"])
    names = [p.name for p in write_plots(s.cells, s.cols, tmp_path / "plots")]
    assert "anytime_mnist_iblurry50_10_online.png" in names
