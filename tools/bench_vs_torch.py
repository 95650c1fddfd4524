#!/usr/bin/env python3
"""kinkcheck `verify` against one PyTorch forward+backward pass of the same model.

Usage: python3 tools/bench_vs_torch.py [--binary target/release/kinkcheck] [--out DIR]

Builds (float64, one thread: torch.set_num_threads(1)) with dyadic weights and planted
exact kinks
  * LeNet-5: 1x28x28, conv 6@5x5, max-pool 2, conv 16@5x5, max-pool 2, 120-84-10, relu;
    batch 64, mse against dyadic targets, --wrt params;
  * a residual CNN: 3x32x32, a 3->16 stem conv, three residual blocks of two 16-channel
    3x3 convs, global average pool, linear head 16->10; batch 32, --wrt params;
exports each with torch.onnx.export (dynamo=False, opset 17), then times
  * torch: the median of 20 forward+backward passes (after 3 warm-ups);
  * kinkcheck: the median of 3 runs of `kinkcheck verify MODEL --data DATA --json` (the
    whole command: reading, lowering, analysis, LP checker, report, stdout to a file), and
    its peak resident memory. Both are measured by a small fresh Python process that starts
    the binary: ru_maxrss of a child forked from this process (torch loaded) would report
    this process's size, not kinkcheck's, and forking it costs wall time kinkcheck does not;
and prints the ratio kinkcheck / torch. Run it on an otherwise idle machine.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

warnings.filterwarnings("ignore")
torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5)
        self.c2 = nn.Conv2d(6, 16, 5)
        self.f1 = nn.Linear(16 * 4 * 4, 120)
        self.f2 = nn.Linear(120, 84)
        self.f3 = nn.Linear(84, 10)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.c1(x)), 2)
        h = F.max_pool2d(F.relu(self.c2(h)), 2)
        h = torch.flatten(h, 1)
        return self.f3(F.relu(self.f2(F.relu(self.f1(h)))))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1)
        self.b = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return F.relu(x + self.b(F.relu(self.a(x))))


class ResNetSmall(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.blocks = nn.Sequential(Block(16), Block(16), Block(16))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        h = self.blocks(F.relu(self.stem(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def dyadic(shape, denom, lo, hi, g):
    return torch.randint(lo, hi + 1, shape, generator=g).double() / denom


def setup(m, x_shape, batch, g, scale):
    with torch.no_grad():
        for p in m.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 16
            # fine dyadic grids (integers in [-256, 256] over a power of two), so that
            # exact zeros are the planted ones, not coincidences of a coarse lattice
            d = 2 ** (max(3, int(fan_in ** 0.5).bit_length() + scale) + 5)
            p.copy_(dyadic(p.shape, d, -256, 256, g))
    x = dyadic((batch,) + x_shape, 256, -256, 256, g)
    first = m.stem if isinstance(m, ResNetSmall) else m.c1
    # LeNet: tied max-pool candidates: a zero 6x6 patch makes a 2x2 block of first-layer
    # outputs equal to the bias in every channel of sample 1
    if isinstance(m, LeNet5):
        x[1, :, 0:6, 0:6] = 0.0
    # exact relu kinks: the bias of channel c cancels the dot product of sample 2 + c at
    # position (c + 8, c + 8) (dyadic values: the sum is exact in float64)
    with torch.no_grad():
        for c in range(first.out_channels):
            s = (2 + c) % batch
            first.bias[c] = 0.0
            z = first(x[s : s + 1])[0, c, c % 8 + 8, c % 8 + 8].item()
            first.bias[c] = -z
            assert first(x[s : s + 1])[0, c, c % 8 + 8, c % 8 + 8].item() == 0.0
    y = dyadic((batch, 10), 4, -4, 4, g)
    return x, y


def torch_time(m, x, y, reps=20):
    def step():
        m.zero_grad()
        loss = 0.5 * ((m(x) - y) ** 2).sum()
        loss.backward()

    for _ in range(3):
        step()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


# Started as `python3 -c RUNNER LIMIT OUT BINARY ARGS...`: runs the binary once with an
# address-space limit and stdout to OUT, and prints "seconds maxrss_kb returncode".
RUNNER = r"""
import resource, subprocess, sys, time
limit, out, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
def cap():
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
with open(out, "wb") as f:
    t = time.perf_counter()
    p = subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE, preexec_fn=cap)
    dt = time.perf_counter() - t
sys.stderr.write(p.stderr.decode()[-500:])
print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode)
"""


def kinkcheck_time(binary, model, data, reps=3, mem_gb=8.0, timeout=600.0):
    """Median wall time, peak RSS (MB) and the report; None when the run exceeded the
    address-space limit `mem_gb` or `timeout` seconds (the machine is shared: a runaway
    verify must not take it down)."""
    ts, rss, rep = [], 0, None
    limit = int(mem_gb * 2**30)
    out_file = model + ".report.json"
    for _ in range(reps):
        cmd = [sys.executable, "-c", RUNNER, str(limit), out_file, binary, "verify", model,
               "--data", data, "--json"]
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        fields = r.stdout.decode().split()
        if r.returncode != 0 or len(fields) != 3:
            sys.stderr.write(r.stderr.decode()[-500:])
            return None
        dt, maxrss, code = float(fields[0]), int(fields[1]), int(fields[2])
        if code == 2 or code < 0:
            sys.stderr.write(r.stderr.decode()[-500:])
            return None
        ts.append(dt)
        rss = max(rss, maxrss)
        with open(out_file) as f:
            rep = json.load(f)
    return statistics.median(ts), rss / 1024.0, rep


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--binary", default=os.path.join(here, "..", "target", "release", "kinkcheck"))
    ap.add_argument("--out", default=os.path.join(here, "..", "target", "bench_vs_torch"))
    ap.add_argument("--models", default="lenet5,resnet_small")
    ap.add_argument("--lenet-batch", type=int, default=64)
    ap.add_argument("--resnet-batch", type=int, default=32)
    ap.add_argument("--kinkcheck-runs", type=int, default=3)
    ap.add_argument("--mem-limit-gb", type=float, default=8.0)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    g = torch.Generator().manual_seed(2026)
    for name, cls, shape, batch, scale in [
        ("lenet5", LeNet5, (1, 28, 28), args.lenet_batch, 0),
        ("resnet_small", ResNetSmall, (3, 32, 32), args.resnet_batch, 1),
    ]:
        if name not in args.models.split(","):
            continue
        m = cls().eval()
        x, y = setup(m, shape, batch, g, scale)
        path = os.path.join(args.out, f"{name}.onnx")
        torch.onnx.export(m, (x,), path, dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
        data = os.path.join(args.out, f"{name}_data.json")
        with open(data, "w") as f:
            json.dump({"inputs": x.tolist(), "targets": y.tolist()}, f)
        t_torch = torch_time(m, x, y)
        res = kinkcheck_time(args.binary, path, data, args.kinkcheck_runs, args.mem_limit_gb, args.timeout)
        if res is None:
            print(f"{name}: batch {batch}: torch fwd+bwd {t_torch * 1e3:.2f} ms; kinkcheck verify "
                  f"did not finish within {args.mem_limit_gb} GB / {args.timeout:.0f} s")
            continue
        t_kc, rss, rep = res
        n_params = sum(p.numel() for p in m.parameters())
        active = sum(1 for a in rep["active"] if a["status"] != "near")
        print(
            f"{name}: batch {batch}, {n_params} params, {rep['switches']} switches, {active} active, "
            f"verdict {rep['verdict']}; torch fwd+bwd {t_torch * 1e3:.2f} ms, "
            f"kinkcheck verify {t_kc * 1e3:.0f} ms (peak RSS {rss:.0f} MB); "
            f"ratio {t_kc / t_torch:.1f}x"
        )


if __name__ == "__main__":
    main()
