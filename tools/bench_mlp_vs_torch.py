#!/usr/bin/env python3
"""A whole `kinkcheck verify` against one PyTorch training step, measured side by side.

Builds the relu MLP of `benches/common/mod.rs::planted_mlp` (the same LCG stream, so the
same dyadic weights, inputs and planted exact kinks as `benches/mlp.rs`) in PyTorch, float64,
exports it to ONNX (classic exporter, `dynamo=False`, opset 17) and writes the batch JSON into
a temporary directory. Then, in one run:

* times one PyTorch forward+backward (cross-entropy summed over the batch, wrt the
  parameters) on one thread (`torch.set_num_threads(1)`), median of many;
* times the release `kinkcheck verify model.onnx --data batch.json --wrt params
  --loss cross_entropy --json` end to end (process start to JSON written), median of
  several runs, for every binary given (e.g. a copy of the binary before a change), the
  binaries taking turns; `--bin PATH@1` runs one with `KINKCHECK_THREADS=1` (one thread, like
  PyTorch here; by default kinkcheck uses the machine's cores);
* checks that kinkcheck's gradient equals PyTorch's (max |difference| relative to max |g|);
* prints both times and the ratio, and the peak resident memory of one kinkcheck run
  (`/usr/bin/time -f %M`).

Usage:
    python3 tools/bench_mlp_vs_torch.py [--widths 784,256,256,10] [--batch 64] [--single 36]
        [--runs 7] [--torch-runs 200] [--bin target/release/kinkcheck[@THREADS]] [--bin OTHER ...]
        [--keep DIR]

Needs torch and onnx (the exporter). The machine's load matters: run it on a quiet machine and
compare binaries only within one run.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

MASK = (1 << 64) - 1


class Lcg:
    """The 64-bit LCG of benches/common/mod.rs (`Lcg::int`)."""

    def __init__(self, seed):
        self.s = seed

    def int(self, m):
        self.s = (self.s * 6364136223846793005 + 1442695040888963407) & MASK
        return ((self.s >> 33) % (2 * m + 1)) - m


def planted_mlp(widths, batch, single):
    """Inputs, dense layers and targets exactly as `planted_mlp` in benches/common/mod.rs."""
    r = Lcg(7)
    xs = [[(r.int(2) + 2) / 4.0 for _ in range(widths[0])] for _ in range(batch)]
    dense = []
    for k, rr in zip(widths[:-1], widths[1:]):
        w = [[r.int(2) / 64.0 for _ in range(k)] for _ in range(rr)]
        b = [0.25 + r.int(8) / 64.0 for _ in range(rr)]
        dense.append((w, b))
    w1, b1 = dense[0]
    w1[0] = [0.0] * widths[0]
    b1[0] = 0.0
    for u in range(1, single + 1):
        s = u % batch
        b1[u] = -sum(a * c for a, c in zip(w1[u], xs[s]))
    out = widths[-1]
    targets = [[1.0 if c == k % out else 0.0 for c in range(out)] for k in range(batch)]
    return xs, dense, targets


def build_model(dense):
    layers = []
    for i, (w, b) in enumerate(dense):
        lin = torch.nn.Linear(len(w[0]), len(w), dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(w, dtype=torch.float64))
            lin.bias.copy_(torch.tensor(b, dtype=torch.float64))
        layers.append(lin)
        if i + 1 < len(dense):
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def torch_step(model, x, t):
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), t, reduction="sum")
    loss.backward()
    return loss


def time_torch(model, x, t, runs):
    for _ in range(10):
        torch_step(model, x, t)
    ts = []
    for _ in range(runs):
        s = time.perf_counter()
        torch_step(model, x, t)
        ts.append(time.perf_counter() - s)
    return statistics.median(ts)


def split_bin(spec):
    """`PATH` or `PATH@T`: the binary, and the environment to run it in (`KINKCHECK_THREADS=T`)."""
    path, sep, threads = spec.rpartition("@")
    if not sep or not threads.isdigit():
        return spec, dict(os.environ)
    return path, dict(os.environ, KINKCHECK_THREADS=threads)


def time_kinkcheck(specs, args, runs, out_path):
    """Run every binary once per round, `runs` rounds (alternating, so that a slow spell of
    the machine hits all of them alike): {spec: (median, best, exit code)}."""
    ts = {s: [] for s in specs}
    codes = {}
    for _ in range(runs):
        for spec in specs:
            binary, env = split_bin(spec)
            with open(out_path, "wb") as out:
                s = time.perf_counter()
                p = subprocess.run([binary] + args, stdout=out, stderr=subprocess.PIPE, env=env)
                ts[spec].append(time.perf_counter() - s)
            codes[spec] = p.returncode
            if p.returncode not in (0, 1, 3):
                sys.exit(f"{binary} failed (exit {p.returncode}): {p.stderr.decode().strip()}")
    return {s: (statistics.median(ts[s]), min(ts[s]), codes[s]) for s in specs}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", default="784,256,256,10")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--single", type=int, default=36)
    ap.add_argument("--runs", type=int, default=7, help="kinkcheck runs per binary")
    ap.add_argument("--torch-runs", type=int, default=200)
    ap.add_argument(
        "--bin",
        action="append",
        help="kinkcheck binaries (repeatable); PATH@T runs it with KINKCHECK_THREADS=T",
    )
    ap.add_argument("--keep", help="write the model and batch here instead of a temp dir")
    a = ap.parse_args()
    widths = [int(w) for w in a.widths.split(",")]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    bins = a.bin or [os.path.join(root, "target", "release", "kinkcheck")]
    torch.set_num_threads(1)

    xs, dense, targets = planted_mlp(widths, a.batch, a.single)
    model = build_model(dense)
    x = torch.tensor(xs, dtype=torch.float64)
    t = torch.tensor(targets, dtype=torch.float64)

    tmp = None
    if a.keep:
        d = a.keep
        os.makedirs(d, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory()
        d = tmp.name
    onnx_path = os.path.join(d, "model.onnx")
    data_path = os.path.join(d, "batch.json")
    out_path = os.path.join(d, "report.json")
    torch.onnx.export(
        model,
        (x,),
        onnx_path,
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
    )
    with open(data_path, "w") as f:
        json.dump({"inputs": xs, "targets": targets}, f)

    # PyTorch's gradient, in the ONNX initializer order (kinkcheck's variable order).
    import onnx

    inits = [i.name for i in onnx.load(onnx_path).graph.initializer]
    torch_step(model, x, t)
    params = dict(model.named_parameters())
    missing = [n for n in inits if n not in params]
    if missing:
        sys.exit(f"ONNX initializers without a torch parameter: {missing}")
    g_torch = torch.cat([params[n].grad.reshape(-1) for n in inits]).tolist()
    n_params = sum(p.numel() for p in model.parameters())

    t_torch = time_torch(model, x, t, a.torch_runs)
    args = [
        "verify",
        onnx_path,
        "--data",
        data_path,
        "--wrt",
        "params",
        "--loss",
        "cross_entropy",
        "--json",
    ]
    arch = "-".join(map(str, widths))
    print(
        f"MLP {arch}, batch {a.batch}, {n_params} parameters, float64, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"torch forward+backward (1 thread, median of {a.torch_runs}): {t_torch * 1e3:.2f} ms")
    timed = time_kinkcheck(bins, args, a.runs, out_path)
    for b in bins:
        med, best, code = timed[b]
        binary, env = split_bin(b)
        with open(out_path, "wb") as out:
            subprocess.run([binary] + args, stdout=out, stderr=subprocess.PIPE, env=env)
        with open(out_path) as f:
            rep = json.load(f)
        g = rep["gradient"]
        scale = max(abs(v) for v in g_torch) or 1.0
        diff = max(abs(p - q) for p, q in zip(g, g_torch)) / scale
        ok = len(g) == len(g_torch) and diff <= 1e-12
        print(
            f"kinkcheck {b}: median {med * 1e3:.1f} ms (best {best * 1e3:.1f}) of {a.runs} runs, "
            f"ratio {med / t_torch:.1f}x (best {best / t_torch:.1f}x); verdict {rep['verdict']} "
            f"(exit {code}), analyzer {rep['analyzer']['by']}, {len(rep['active'])} active; "
            f"gradient vs torch: max rel diff {diff:.1e} {'OK' if ok else 'MISMATCH'}"
        )
        if not ok:
            sys.exit(1)
    if os.path.exists("/usr/bin/time"):
        for b in bins:
            binary, env = split_bin(b)
            with open(out_path, "wb") as out:
                p = subprocess.run(
                    ["/usr/bin/time", "-f", "%M"] + [binary] + args,
                    stdout=out,
                    stderr=subprocess.PIPE,
                    env=env,
                )
            kb = int(p.stderr.decode().strip().splitlines()[-1])
            print(f"peak resident memory (/usr/bin/time) of {b}: {kb / 1024:.0f} MB")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
