"""The refactor safety net: every golden case of both suites (tests/golden.py) gives its golden file's numbers
bit for bit (tests/golden.json: the CVPR'21 protocol; tests/golden_iblurry.json: the i-Blurry protocol)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.golden import KEYS, PINNED, SUITES
from tests.paths import ROOT


def first_difference(want, got, path: str = "") -> str | None:
    """Where two JSON values first differ (exact: floats compared as parsed, no tolerance)."""
    if isinstance(want, dict) and isinstance(got, dict):
        for k in sorted(set(want) | set(got)):
            if k not in want or k not in got:
                return f"{path}/{k}: only in {'golden' if k in want else 'this run'}"
            d = first_difference(want[k], got[k], f"{path}/{k}")
            if d:
                return d
        return None
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return f"{path}: length {len(want)} in golden, {len(got)} now"
        for i, (a, b) in enumerate(zip(want, got)):
            d = first_difference(a, b, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if want == got and type(want) is type(got) else f"{path}: golden {want!r}, now {got!r}"


def test_first_difference_finds_the_last_bit():
    a = {"r": {"x": [1.0, 0.1 + 0.2], "n": 3}}
    assert first_difference(a, json.loads(json.dumps(a))) is None
    assert first_difference(a, {"r": {"x": [1.0, 0.3], "n": 3}}) == "/r/x[1]: golden 0.30000000000000004, now 0.3"
    assert first_difference(a, {"r": {"x": [1.0], "n": 3}}) == "/r/x: length 2 in golden, 1 now"
    assert first_difference(a, {"r": {"x": [1.0, 0.1 + 0.2], "n": 3.0}}) == "/r/n: golden 3, now 3.0"


@pytest.mark.parametrize("suite,data", [("cvpr", "mnist_dir"), ("iblurry", "mnist100_dir")])
def test_every_method_reproduces_the_golden_numbers(suite, data, request, tmp_path):
    golden = json.loads(SUITES[suite].golden.read_text())
    out = tmp_path / "now.json"
    env = {**os.environ, **PINNED}
    r = subprocess.run([sys.executable, "-m", "tests.golden", "--suite", suite, "--data_dir",
                        str(request.getfixturevalue(data)), "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    now = json.loads(out.read_text())
    if now["environment"] != golden["environment"]:
        pytest.skip(f"the golden numbers were recorded with {golden['environment']}, this machine has "
                    f"{now['environment']}: float results differ across torch builds; regenerate them with "
                    f"{golden['command']} from the last commit before the change under test")
    assert set(now["results"]) == set(golden["results"])
    for case, want in golden["results"].items():
        assert set(want) <= set(KEYS)
        diff = first_difference(want, now["results"][case])
        assert diff is None, f"{case}: {diff}"
