"""examples/shallow_relu_training.py runs and writes its plots and run files (a short run)."""

import subprocess
import sys

from conftest import REPO, run_cli


def test_shallow_relu_example_runs(tmp_path):
    cp = subprocess.run(
        [sys.executable, str(REPO / "examples" / "shallow_relu_training.py"), "--steps", "4",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.count("steps audited               4") == 2, cp.stdout
    for dtype in ("float64", "float32"):
        png = tmp_path / f"shallow_relu_audit_{dtype}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"
        run = tmp_path / f"shallow_relu_run_{dtype}.jsonl"
        assert len(run.read_text().splitlines()) == 4
        out = run_cli("audit", str(run))
        assert out.returncode in (0, 1, 3) and "steps with kinks            4" in out.stdout
