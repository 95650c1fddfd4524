"""Audit a shallow ReLU network trained by plain gradient descent (issue 12).

One hidden layer of 16 ReLU units, 1-D input, fitted to the affine target y = 2x + 1 on a
uniform grid of [0, 1] that contains 0, hidden biases initialised to zero, in float64 and in
float32. At the grid point x = 0 every hidden pre-activation is w·0 + b = b, so each unit whose
bias is still exactly 0 sits on its kink for that sample. kinkcheck.torch.Audit records at every
step how many exact kinks the step hit and whether the gradient PyTorch computed (relu'(0) = 0)
was a Clarke generalized gradient of the batch loss.

Run:  python3 examples/shallow_relu_training.py [--steps 200] [--out DIR]
(needs the package: pip install ./python, and torch, onnx, matplotlib)
"""

import argparse
import os

import torch
from torch import nn

import kinkcheck.torch as kt


def run(dtype, steps, out_dir, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1)).to(dtype)
    with torch.no_grad():
        model[0].bias.zero_()
        model[2].bias.zero_()
    x = torch.linspace(0.0, 1.0, 21, dtype=dtype).reshape(-1, 1)  # contains 0 exactly
    y = 2.0 * x + 1.0
    loss_fn = nn.MSELoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    audit = kt.Audit(model, loss_fn)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        audit.step(x, y)  # after backward(), before the update
        opt.step()
    name = str(dtype).replace("torch.", "")
    print(f"== {name}: {steps} steps of gradient descent, final loss {loss.item():.3e}")
    print(audit.summary())
    dead = int((model[0].bias == 0).sum())
    print(f"hidden units whose bias is still exactly 0: {dead} of 16\n")
    png = os.path.join(out_dir, f"shallow_relu_audit_{name}.png")
    audit.plot(png, title=f"Shallow ReLU net (16 units), gradient descent, {name}")
    audit.save(os.path.join(out_dir, f"shallow_relu_run_{name}.jsonl"))
    print(f"wrote {png}")
    return audit


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default="target")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for dtype in (torch.float64, torch.float32):
        run(dtype, a.steps, a.out)


if __name__ == "__main__":
    main()
