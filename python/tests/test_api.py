"""The Python API gives exactly the CLI's JSON on every CONTRACT example, and bad input raises
InputError with the CLI's message."""

import json
import math
import random

import numpy as np
import pytest

import kinkcheck
from conftest import FIXTURES, program_cases, run_cli

CASES = list(program_cases())
assert len(CASES) >= 20  # the corpus is there (no silent empty parametrization)


def at_text(at):
    return ",".join(repr(float(v)) for v in at)


@pytest.mark.parametrize("convention", ["pytorch", "jax", "tensorflow", "sigma=0"])
@pytest.mark.parametrize("name,case", CASES, ids=[c[0] for c in CASES])
def test_programs_match_the_cli(name, case, convention):
    cp = run_cli("verify", "--expr", case["program"], "--at", at_text(case["at"]),
                 "--convention", convention, "--json")
    assert cp.returncode in (0, 1, 3), cp.stderr
    r = kinkcheck.verify(case["program"], at=case["at"], convention=convention)
    assert r.to_json() == cp.stdout.rstrip("\n")
    assert r.exit_code == cp.returncode
    d = json.loads(cp.stdout)
    assert r.verdict == d["verdict"] and isinstance(r.verdict, kinkcheck.Verdict)
    assert isinstance(r.gradient, np.ndarray) and r.gradient.dtype == np.float64
    assert r.gradient.tolist() == d["gradient"]
    assert r.analyzer == d["analyzer"] and r.pieces == d["pieces"]
    assert r.certificate == d.get("certificate")
    if "clarke_gradient" in d:
        assert r.clarke_gradient["vector"].tolist() == d["clarke_gradient"]["vector"]
    else:
        assert r.clarke_gradient is None


def test_fixture_verdicts_through_python():
    # the corpus's own expected verdict and AD vector (THEORY §8), PyTorch convention
    checked = 0
    for name, case in CASES:
        exp = case.get("verdict", {})
        if isinstance(exp, dict) and "pytorch" in exp:
            r = kinkcheck.verify(case["program"], at=np.array(case["at"]))
            assert r.verdict.value == exp["pytorch"], name
            checked += 1
    assert checked > 0


def test_explicit_gradient_and_anf_match_the_cli():
    prog = "vars x; u = abs(x); f = abs(x + 2*u) - 2*u"
    cp = run_cli("verify", "--expr", prog, "--at", "0", "--gradient", "1", "--json")
    r = kinkcheck.verify(prog, at=[0], gradient=np.array([1.0]))
    assert r.to_json() == cp.stdout.rstrip("\n")
    assert r.convention == "explicit"
    cp = run_cli("anf", "--expr", prog, "--at", "0", "--json")
    assert kinkcheck.anf(prog, at=[0]) == json.loads(cp.stdout)


NETWORKS = [
    ("networks/e12.json", None, None),
    ("networks/e13.json", None, None),
    ("networks/e14.json", "networks/e14_data.json", None),
    ("networks/mlp_small.json", "networks/mlp_data.json", None),
    ("networks/e12.json", None, "inputs"),
]


@pytest.mark.parametrize("src,data,wrt", NETWORKS)
def test_networks_match_the_cli(src, data, wrt):
    args = ["verify", str(FIXTURES / src), "--json"]
    if data:
        args += ["--data", str(FIXTURES / data)]
    if wrt:
        args += ["--wrt", wrt]
    cp = run_cli(*args)
    assert cp.returncode in (0, 1, 3), cp.stderr
    want = cp.stdout.rstrip("\n")
    # by path, and as a dict (with the batch as a dict)
    r = kinkcheck.verify(FIXTURES / src, data=(FIXTURES / data) if data else None, wrt=wrt)
    assert r.to_json() == want
    desc = json.loads((FIXTURES / src).read_text())
    batch = json.loads((FIXTURES / data).read_text()) if data else None
    r = kinkcheck.verify(desc, data=batch, wrt=wrt)
    assert r.to_json() == want


ONNX = [
    ("onnx/e14_maxpool.onnx", "networks/e14_data.json", "inputs", None),
    ("onnx/e12_one_neuron.onnx", "networks/e12_data.json", None, None),
    ("onnx/mlp_small.onnx", "networks/mlp_data.json", None, "l1"),
    ("onnx/mlp_matmul.onnx", "networks/mlp_data.json", "inputs", None),
]


@pytest.mark.parametrize("src,data,wrt,loss", ONNX)
def test_onnx_matches_the_cli(src, data, wrt, loss):
    args = ["verify", str(FIXTURES / src), "--data", str(FIXTURES / data), "--json"]
    if wrt:
        args += ["--wrt", wrt]
    if loss:
        args += ["--loss", loss]
    cp = run_cli(*args)
    assert cp.returncode in (0, 1, 3), cp.stderr
    want = cp.stdout.rstrip("\n")
    r = kinkcheck.verify(str(FIXTURES / src), data=str(FIXTURES / data), wrt=wrt, loss=loss)
    assert r.to_json() == want
    batch = json.loads((FIXTURES / data).read_text())
    r = kinkcheck.verify((FIXTURES / src).read_bytes(), data=batch, wrt=wrt, loss=loss)
    assert r.to_json() == want


def cli_error(*args):
    cp = run_cli(*args)
    assert cp.returncode == 2 and cp.stdout == ""
    assert cp.stderr.startswith("kinkcheck: ")
    return cp.stderr[len("kinkcheck: "):].rstrip("\n")


def test_errors_carry_the_cli_message():
    assert issubclass(kinkcheck.InputError, ValueError)
    for prog, at in [("vars x; f = rel(x)", "0"), ("vars x; f = (x", "0"), ("vars x; f = max(x)", "0"),
                     ("vars x, y; f = x + y", "1")]:
        msg = cli_error("verify", "--expr", prog, "--at", at)
        with pytest.raises(kinkcheck.InputError) as e:
            kinkcheck.verify(prog, at=[float(v) for v in at.split(",")])
        assert str(e.value) == msg
    msg = cli_error("verify", "--expr", "vars x; f = x", "--at", "0", "--convention", "keras")
    with pytest.raises(kinkcheck.InputError, match="unknown convention") as e:
        kinkcheck.verify("vars x; f = x", at=[0], convention="keras")
    assert str(e.value) == msg
    msg = cli_error("verify", "--expr", "vars x; f = x", "--at", "0", "--gradient", "1,2")
    with pytest.raises(kinkcheck.InputError) as e:
        kinkcheck.verify("vars x; f = x", at=[0], gradient=[1, 2])
    assert str(e.value) == msg
    msg = cli_error("verify", str(FIXTURES / "onnx/unsupported_op.onnx"), "--data",
                    str(FIXTURES / "networks/e12_data.json"))
    with pytest.raises(kinkcheck.InputError) as e:
        kinkcheck.verify(FIXTURES / "onnx/unsupported_op.onnx", data=FIXTURES / "networks/e12_data.json")
    assert str(e.value) == msg


def test_bad_input_raises_input_error():
    bad = [
        lambda: kinkcheck.verify("vars x; f = relu(x)", at=[math.nan]),
        lambda: kinkcheck.verify("vars x; f = relu(x)", at=[math.inf]),
        lambda: kinkcheck.verify("vars x; f = relu(x)", at=[0, 1]),
        lambda: kinkcheck.verify("vars x; f = relu(x)"),
        lambda: kinkcheck.verify("vars x; f = relu(x)", at=[0], gradient=[math.nan]),
        lambda: kinkcheck.verify("vars x; f = relu(x)", at=[0], data={"inputs": [[0]]}),
        lambda: kinkcheck.verify("vars x; f = relu(x)", at=["a"]),
        lambda: kinkcheck.verify({"layers": "dense"}),
        lambda: kinkcheck.verify({"layers": [{"type": "dense", "weights": [[1, 2]], "bias": [0, 0]}],
                                  "data": {"inputs": [[1, 2]]}}),
        lambda: kinkcheck.verify({"layers": [{"type": "conv"}], "data": {"inputs": [[1]]}}),
        lambda: kinkcheck.verify(json.loads((FIXTURES / "networks/e12.json").read_text()),
                                 data={"inputs": [[math.nan]]}),
        lambda: kinkcheck.verify(b"not an onnx model", data={"inputs": [[0]]}),
        lambda: kinkcheck.verify(b"", data={"inputs": [[0]]}),
        lambda: kinkcheck.verify((FIXTURES / "onnx/e12_one_neuron.onnx").read_bytes()),
        lambda: kinkcheck.verify((FIXTURES / "onnx/e12_one_neuron.onnx").read_bytes(),
                                 data={"inputs": [[0, 1, 2]]}),
        lambda: kinkcheck.verify(FIXTURES / "networks" / "missing.json"),
        lambda: kinkcheck.verify(12),
        lambda: kinkcheck.compile("vars x\nf = x +"),
    ]
    for i, f in enumerate(bad):
        with pytest.raises(kinkcheck.InputError):
            f()


def test_random_and_truncated_onnx_bytes_never_crash():
    rng = random.Random(12)
    good = (FIXTURES / "onnx/mlp_small.onnx").read_bytes()
    data = json.loads((FIXTURES / "networks/mlp_data.json").read_text())
    outcomes = {"error": 0, "ok": 0}
    for k in range(300):
        if k % 2:
            blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        else:
            b = bytearray(good[: rng.randrange(1, len(good))])
            for _ in range(rng.randrange(0, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            blob = bytes(b)
        try:
            kinkcheck.verify(blob, data=data)
            outcomes["ok"] += 1
        except kinkcheck.InputError:
            outcomes["error"] += 1
    assert outcomes["error"] > 200


def test_report_object():
    r = kinkcheck.verify("vars x1, x2; u = x1 - x2; f = relu(u) - relu(-u) + abs(x2)", at=[0, 0])
    d = r.to_dict()
    assert r["verdict"] == d["verdict"] and r.reason == d["reason"] and r.lps == d["lps"]
    assert set(d) <= set(r.keys()) and "verdict" in r
    assert not r.gradient.flags.writeable
    with pytest.raises(AttributeError):
        r.no_such_field
    assert "verdict=" in repr(r)
    p = kinkcheck.compile("vars a, b; f = max(a, b)")
    assert p.var_names == ["a", "b"] and p.n_vars == 2 and p.n_switches >= 1 and p.point is None
    assert kinkcheck.verify(p, at=np.array([1.0, 1.0])).verdict == "in"


def test_gil_is_released_during_verify():
    import sys
    import threading
    import time

    from kinkcheck import _kinkcheck

    # With a huge switch interval the GIL only changes hands when its holder releases it. The
    # counting thread releases it at every sleep(0); the main thread, between reading the
    # count and calling the native verify, never does, so the counter can only advance during
    # the native call if that call releases the GIL.
    prog = "vars " + ", ".join(f"x{i}" for i in range(12)) + "; f = " + " + ".join(
        f"abs(x{i} - x{(i + 1) % 12}) - abs(x{(i + 1) % 12} - x{i})" for i in range(12))
    problem = kinkcheck.compile(prog)
    at = np.zeros(12)
    ticks = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0)

    old = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    t = threading.Thread(target=count)
    try:
        t.start()
        while ticks[0] == 0:
            time.sleep(0.001)
        before = ticks[0]
        _kinkcheck.verify(problem, at, "pytorch", None, 4096, 20000, 5.0)
        during = ticks[0] - before
    finally:
        stop.set()
        sys.setswitchinterval(old)
        t.join()
    assert during > 0
