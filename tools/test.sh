#!/usr/bin/env bash
# The test command (README): the Rust tests, then the Python package built from python/ and its
# pytest suite. Needs maturin, pytest, numpy, torch, onnx, onnxscript and matplotlib
# (`pip install -r python/requirements-test.txt`; .ci/run does it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test
# the CLI binary the Python tests compare with (cargo test builds it too; this is a no-op then)
cargo build --bin kinkcheck
# Test build of the extension: dev profile with the library and dependencies at opt-level 2
# (python/Cargo.toml), in python/target; installed into the current interpreter.
rm -rf python/target/wheels-dev
python3 -m maturin build --profile dev -m python/Cargo.toml -o python/target/wheels-dev
python3 -m pip install --quiet --force-reinstall --no-deps python/target/wheels-dev/kinkcheck-*.whl
# run from python/ so the pyproject's pytest settings apply; exit 5 (no tests collected) fails too
cd python && python3 -m pytest -q -p no:cacheprovider tests
