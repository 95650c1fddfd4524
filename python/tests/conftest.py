"""Shared helpers: the repository root and the CLI binary the Python results are compared with.

The binary is ``$KINKCHECK_BIN`` or ``target/debug/kinkcheck`` (built by ``cargo test``, which
tools/test.sh runs first). A missing binary is a failure, never a skip.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures"


def cli_binary() -> Path:
    b = Path(os.environ.get("KINKCHECK_BIN", REPO / "target" / "debug" / "kinkcheck"))
    assert b.is_file(), f"the kinkcheck binary {b} is missing: run `cargo build` (tools/test.sh does)"
    return b


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(cli_binary()), *args], capture_output=True, text=True, timeout=120, cwd=REPO
    )


@pytest.fixture
def cli():
    return run_cli


def program_cases():
    for p in sorted((FIXTURES / "programs").glob("*.json")):
        yield p.stem, json.loads(p.read_text())
