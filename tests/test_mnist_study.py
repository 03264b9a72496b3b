"""The MNIST study script: its grid, reuse of table runs, skipping finished runs, and the report."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import mnist_study as ms  # noqa: E402


def test_repro_grid_is_full_and_public_cells_reuse_table_rows():
    cells = ms.repro_cells(["rm", "ewc", "gdumb"], [5, 16, 64, 256], ["off", "on"], [3, 1])
    assert len(cells) == 3 * 4 * 2 * 2 == len({c["name"] for c in cells})
    alias = {c["name"]: c.get("alias") for c in cells if c.get("alias")}
    # public settings (3 channels, 5 epochs): RM both ways, baselines only without augmentation
    assert alias == {"rm_augoff_ch3_ep5": "rm_w_o_da", "rm_augon_ch3_ep5": "rm",
                     "ewc_augoff_ch3_ep5": "ewc", "gdumb_augoff_ch3_ep5": "gdumb"}
    on = next(c for c in cells if c["name"] == "ewc_augon_ch1_ep64")
    assert on["flags"] == ["--mode", "ewc", "--in_channels", "1", "--n_epoch", "64", "--eval_epochs", "last_task",
                           "--transforms", "cutmix", "autoaug"]
    assert on["paper"] == "ewc"


def _result(out: Path, run: str, mode: str, a_last: float, transforms=(), ch=3, ep=5) -> None:
    p = ms.result_path(out, run)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"A_last": a_last, "A_last_final": a_last - 10, "wall_time_s": 40.0,
                             "phase_time_s": {"stream_pass": 25.0, "memory_epochs": 5.0},
                             "config": {"mode": mode, "transforms": list(transforms), "in_channels": ch,
                                        "n_epoch": ep}}))


def test_finished_and_aliased_runs_are_not_rerun(tmp_path):
    a = SimpleNamespace(out_dir=str(tmp_path))
    _result(tmp_path, "ewc_s1", "ewc", 80.0)
    _result(tmp_path, "gdumb_augoff_ch1_ep16_s1", "gdumb", 70.0, ch=1, ep=16)
    cell = {"name": "ewc_augoff_ch3_ep5", "alias": "ewc", "flags": []}
    assert ms.run_one(cell, 1, a) == ("ewc_augoff_ch3_ep5_s1", "same run as ewc_s1.json")
    assert json.loads(ms.result_path(tmp_path, "ewc_augoff_ch3_ep5_s1").read_text())["A_last"] == 80.0
    assert ms.run_one({"name": "gdumb_augoff_ch1_ep16", "flags": []}, 1, a)[1] == "done before"


def test_report_means_stds_and_paper_spread(tmp_path, capsys):
    for seed, acc in zip((1, 2, 3), (90.0, 91.0, 92.0)):
        _result(tmp_path, f"ewc_augoff_ch1_ep64_s{seed}", "ewc", acc, ch=1, ep=64)
        _result(tmp_path, f"gdumb_augoff_ch1_ep64_s{seed}", "gdumb", acc - 20, ch=1, ep=64)
        _result(tmp_path, f"ewc_s{seed}", "ewc", acc - 10)
    groups = ms.load_runs(tmp_path)
    assert sorted(groups) == ["ewc", "ewc_augoff_ch1_ep64", "gdumb_augoff_ch1_ep64"]
    ms.report_table(groups)
    ms.report_repro(groups)
    out = capsys.readouterr().out
    # mean 81, sample std 1; paper 90.98 +- 0.61; dominant phase is the stream pass
    assert "| EWC | 81.00 +- 1.00 | 71.00 +- 1.00 | 90.98 +- 0.61 | 3 | 40 | stream_pass 25 s |" in out
    # 91 +- 1 overlaps 90.98 +- 0.61; GDumb 71 +- 1 does not reach 88.51 +- 0.52
    assert "| ewc | off | 1 | 64 | 91.00 +- 1.00 | 81.00 +- 1.00 | 90.98 +- 0.61 | yes | 3 | 40 |" in out
    assert "| gdumb | off | 1 | 64 | 71.00 +- 1.00 |" in out and "| 90.98 +- 0.61 | no |" not in out
    assert "- ch 1, n_epoch 64: ewc/off +0.0, gdumb/off -17.5\n" in out
    assert "every method within" not in out
