"""kinkcheck.torch: the AD vector equals torch.autograd's on MLPs with planted exact kinks, and
the audit counts the kink hits a direct check recomputes. torch is required (CI installs it):
a missing torch is an import error, not a skip."""

import json
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

import kinkcheck
import kinkcheck.torch as kt
from conftest import REPO, run_cli


def planted_mlp(act=nn.ReLU, widths=(3, 5, 4, 2), seed=0):
    """An MLP with integer weights and zero biases, so that samples with zero inputs, and
    rows whose integer dot products cancel, sit exactly on kinks."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.randint(-2, 3, (b, a), generator=g).double())
            lin.bias.zero_()
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).double()


def batch(n=4, k=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (n, k), generator=g).double()
    x[0] = 0  # every pre-activation of the first layer is 0 for this sample
    return x


def relu_zeros(model, x):
    """Count inputs of ReLU modules that are exactly 0, by forward hooks."""
    n = [0]
    hooks = [m.register_forward_hook(lambda m, i, o: n.__setitem__(0, n[0] + int((i[0] == 0).sum())))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return n[0]


@pytest.mark.parametrize("loss", ["mse", "l1", "hinge", "cross_entropy", "none"])
@pytest.mark.parametrize("wrt", ["params", "inputs"])
def test_mlp_with_planted_kinks_matches_autograd(loss, wrt):
    m = planted_mlp(widths=(3, 5, 4, 2) if loss != "none" else (3, 5, 4, 1))
    x = batch()
    y = None
    if loss in ("mse", "l1"):
        y = torch.tensor([[0.5, -1.0], [1.0, 2.0], [0.0, 0.0], [3.0, 1.0]], dtype=torch.float64)
    elif loss == "hinge":
        y = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    elif loss == "cross_entropy":
        y = torch.eye(2, dtype=torch.float64)[[0, 1, 1, 0]]
    r = kt.verify(m, x, y, loss=loss, wrt=wrt)
    assert r.matches_framework is True
    assert '"matches_framework":true' in r.to_json()
    zeros = relu_zeros(m, x)
    assert zeros >= 5  # the planted sample
    exact = [a for a in r.active if a["z"] == 0.0 and a["op"] == "relu"]
    assert len(exact) == zeros
    # the independent check: torch.autograd's vector, re-verified explicitly, gets the same verdict
    n = sum(p.numel() for p in m.parameters()) if wrt == "params" else x.numel()
    assert r.gradient.shape == (n,)


def test_variable_order_is_named_parameters_order():
    m = planted_mlp()
    x = batch()
    y = torch.zeros(4, 2, dtype=torch.float64)
    r = kt.verify(m, x, y)
    names = [n for n, _ in m.named_parameters()]
    # ONNX initializers carry the parameter names; variables are named after them
    seen = []
    for v in r.variables:
        t = v.split("[")[0]
        if not seen or seen[-1] != t:
            seen.append(t)
    assert seen == names


class Channels(nn.Module):
    def forward(self, x):
        return x.reshape(-1, 1, 6)


def test_leaky_relu_maxpool_and_float32_modules():
    # slope 0.125: ONNX stores float attributes in float32, so a slope such as 0.1 is exported
    # as 0.10000000149 and the two vectors would differ by about 1e-9 (see kt.verify's docs)
    m = nn.Sequential(nn.Linear(4, 6), nn.LeakyReLU(0.125), Channels(),
                      nn.MaxPool1d(2), nn.Flatten(), nn.Linear(3, 1))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randint(-2, 3, p.shape, generator=g).float())
        m[0].bias.zero_()
    x = batch(3, 4).float()
    r = kt.verify(m, x, torch.ones(3, 1))  # a float32 module: checked at the same point in f64
    assert r.matches_framework
    assert any(a["op"] == "leaky_relu" and a["z"] == 0.0 for a in r.active)


def test_float32_attributes_are_flagged():
    m = nn.Sequential(nn.Linear(2, 3), nn.LeakyReLU(0.1), nn.Linear(3, 1)).double()
    with pytest.warns(UserWarning, match="float32"):
        kt.verify(m, batch(2, 2)[:, :2], torch.zeros(2, 1), tolerance=1e-6)


def test_mismatch_raises_and_bad_arguments():
    m = planted_mlp()
    x = batch()
    with pytest.raises(kinkcheck.InputError):
        kt.verify(m, x)  # mse needs targets
    with pytest.raises(kinkcheck.InputError):
        kt.verify(m, x, torch.zeros(4, 2), loss="huber")
    with pytest.raises(kinkcheck.InputError):
        kt.verify(m, x, torch.zeros(4, 3))  # wrong target length
    x2 = x.clone()
    x2[1, 1] = float("nan")
    with pytest.raises(kinkcheck.InputError):
        kt.verify(m, x2, torch.zeros(4, 2))
    # another convention's vector differs from torch's at these kinks: reported, not raised
    r = kt.verify(m, x, torch.zeros(4, 2), convention="sigma=1")
    assert r.matches_framework is False


def train(model, x, y, steps, audit, lr=0.05, loss_fn=None):
    loss_fn = loss_fn or nn.MSELoss()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    direct = []
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        direct.append(relu_zeros(model, x))
        audit.step(x, y)
        opt.step()
    return direct


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_audit_counts_the_kink_hits_of_a_20_step_run(dtype, tmp_path):
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1)).to(dtype)
    with torch.no_grad():
        m[0].bias.zero_()
        m[2].bias.zero_()
    x = torch.linspace(0, 1, 9, dtype=dtype).reshape(-1, 1)
    y = 2 * x - 0.5
    audit = kt.Audit(m, nn.MSELoss())
    direct = train(m, x, y, 20, audit)
    assert len(audit.records) == 20
    assert [r["kinks"] for r in audit.records] == direct
    assert [r["framework_kinks"] for r in audit.records] == direct
    assert sum(direct) > 0
    assert all(r["matches_framework"] for r in audit.records)
    s = audit.summary()
    assert s["steps"] == 20
    assert s["steps_with_kinks"] == sum(1 for d in direct if d > 0)
    assert s["steps_in"] + s["steps_out"] + s["steps_undecided"] == 20
    assert s["kinks"] == sum(direct)
    assert "steps with kinks" in str(s) and "steps UNDECIDED" in str(s)

    # the CLI gives the same table from the saved run
    run = tmp_path / "run.jsonl"
    audit.save(run)
    cp = run_cli("audit", str(run), "--json")
    assert cp.returncode == s.exit_code, cp.stderr
    out = json.loads(cp.stdout)
    for k in ("steps", "steps_with_kinks", "kinks", "steps_in", "steps_out", "steps_undecided",
              "framework_mismatches"):
        assert out["summary"][k] == s[k], k
    assert [st["kinks"] for st in out["steps"]] == direct
    cp = run_cli("audit", str(run))
    assert "steps audited" in cp.stdout

    png = tmp_path / "audit.png"
    audit.plot(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_audit_every_and_mismatched_framework_vector(tmp_path):
    m = planted_mlp(widths=(3, 4, 1))
    x = batch(4, 3)
    y = torch.ones(4, 1, dtype=torch.float64)
    audit = kt.Audit(m, "mse", every=3)
    for i in range(7):
        m.zero_grad()
        kt.objective(m(x), y, "mse").backward()
        rec = audit.step(x, y)
        assert (rec is None) == (i % 3 != 0)
    assert [r["step"] for r in audit.records] == [0, 3, 6]
    # a gradient that is not PyTorch's: the audit flags it and verifies it itself
    m.zero_grad()
    kt.objective(m(x), y, "mse").backward()
    with torch.no_grad():
        m[0].bias.grad += 100.0
    audit2 = kt.Audit(m, "mse")
    rec = audit2.step(x, y)
    assert rec["matches_framework"] is False
    assert audit2.summary()["framework_mismatches"] == 1
    with pytest.raises(kinkcheck.InputError):
        kt.Audit(m, nn.SmoothL1Loss())
    m.zero_grad(set_to_none=True)
    with pytest.raises(kinkcheck.InputError, match="backward"):
        kt.Audit(m, "mse").step(x, y)


def test_audit_cli_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 0, "network": {"layers": []}, "data": {"inputs": [[0]]}}\n{"step": 1}\n')
    cp = run_cli("audit", str(bad))
    assert cp.returncode == 2 and cp.stdout == "" and "line 2" in cp.stderr
    cp = run_cli("audit", str(tmp_path / "missing.jsonl"))
    assert cp.returncode == 2


class Clamp(nn.Module):
    def forward(self, x):
        return torch.clamp(x, -1.0, 1.0)


def test_clip_rule_hardtanh_default_and_clamp():
    # pre-activations exactly at the bounds ±1: nn.Hardtanh's derivative there is 0 (the default
    # rule for ONNX Clip); with clip="clamp" the rule is the clamp one (derivative 1)
    lin = nn.Linear(1, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        lin.bias.zero_()
    x = torch.tensor([[1.0], [0.5]], dtype=torch.float64)
    y = torch.zeros(2, 2, dtype=torch.float64)
    m = nn.Sequential(lin, nn.Hardtanh())
    r = kt.verify(m, x, y)
    assert r.matches_framework
    assert sum(a["z"] == 0.0 for a in r.active) == 2
    with pytest.raises(kt.MismatchError):
        kt.verify(m, x, y, clip="clamp")  # the clamp rule is not what nn.Hardtanh does
    with pytest.raises(kinkcheck.InputError, match="--clip"):
        kt.verify(m, x, y, clip="relu")


def test_small_cnn_with_planted_kinks_matches_autograd():
    g = torch.Generator().manual_seed(7)
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(8, 2)).double()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randint(-2, 3, p.shape, generator=g).double())
        m[0].bias.zero_()
    x = torch.randint(-2, 3, (3, 1, 6, 6), generator=g).double()
    x[0] = 0  # every conv output of sample 0 is exactly 0: relu kinks and max-pool ties
    y = torch.zeros(3, 2, dtype=torch.float64)
    for wrt in ("params", "inputs"):
        r = kt.verify(m, x, y, wrt=wrt)
        assert r.matches_framework
        assert sum(a["z"] == 0.0 for a in r.active) >= relu_zeros(m, x)
