#!/usr/bin/env python3
"""Export small PyTorch models to ONNX with both exporters and record PyTorch's own gradients.

Usage: python3 tools/gen_torch_models.py [OUT_DIR]      (default: fixtures/torch)
       python3 tools/gen_torch_models.py --check-rules   (print the AD-rule checks only)

Needs torch (2.15 was used), onnx and onnxscript (for the default exporter). Everything runs
in float64 on the CPU with one thread, with dyadic weights and inputs (small integers over a
power of two), so every planted kink is exact: a relu/clip argument that is exactly 0.0 (or a
bound), a zero input, a bias that cancels a dot product exactly, tied max-pool candidates.

For each model NAME it writes
  NAME_classic.onnx                 torch.onnx.export(dynamo=False, opset_version=17)
  NAME_dynamo.onnx (+ .onnx.data)   torch.onnx.export(dynamo=True) (the default exporter; it
                                    stores larger tensors as external data beside the model)
  NAME_data.json                    the batch {"inputs": [...], "targets": [...]}
  NAME_expected.json                PyTorch's gradients of the summed loss (CONTRACT §4):
      "wrt_inputs": [...]           d f / d inputs, sample after sample, row-major
      "params": {"classic"|"dynamo": {"names": [...], "grad": [...], "compare": [...]}}
                                    d f / d every float initializer of that file, in file
                                    order, row-major. An initializer is mapped to a torch
                                    tensor by name and exact value (or by exact value alone,
                                    for renamed or BN-folded tensors); "compare" is false for
                                    the ones that are exporter-made constants with no torch
                                    counterpart (e.g. the bounds of a Clip), whose entry is 0.
      "kinks": [...]                the planted kinks, each confirmed exactly active in
                                    float64 (z == 0.0) by a forward hook, with counts.
      "loss", "clip"                the loss and the --clip rule the model needs.

The AD-rule checks behind kinkcheck's conventions are printed too (and asserted):
  * max-pool ties: torch.nn.functional.max_pool1d/2d backward gives the whole gradient to the
    FIRST maximal element of the window in row-major order;
  * F.hardtanh and nn.ReLU6 have derivative 0 at their bounds; so has torch.clamp with
    number bounds (and clamp(min=)/clamp(max=)) in torch 2.15, while torch.clamp with tensor
    bounds gives 1/2 (a min/max tie). kinkcheck's --clip clamp (derivative 1) is therefore not
    what torch 2.15 computes; the ClampNet model needs the default --clip hardtanh.
"""

import json
import zlib
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

warnings.filterwarnings("ignore")
torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)

HERE = os.path.dirname(os.path.abspath(__file__))


def check_rules():
    """Run the AD rules kinkcheck relies on in torch and assert them."""
    out = {}
    # max-pool ties: all four tied in a 2x2 window, and a tie between positions 1 and 3
    for name, x in [
        ("2d all tied", torch.zeros(1, 1, 2, 2)),
        ("2d tie at (0,1),(1,0)", torch.tensor([[[[0.0, 1.0], [1.0, 0.5]]]])),
    ]:
        x = x.clone().requires_grad_(True)
        F.max_pool2d(x, 2).sum().backward()
        out["max_pool2d " + name] = x.grad.flatten().tolist()
    x = torch.tensor([[[2.0, 2.0, 2.0]]], requires_grad=True)
    F.max_pool1d(x, 3).sum().backward()
    out["max_pool1d all tied"] = x.grad.flatten().tolist()
    x = torch.tensor([[[[-1.0, 3.0], [3.0, 3.0]]]], requires_grad=True)
    F.max_pool2d(x, 2, padding=0).sum().backward()
    out["max_pool2d tie (0,1),(1,0),(1,1)"] = x.grad.flatten().tolist()
    assert out["max_pool2d 2d all tied"] == [1.0, 0.0, 0.0, 0.0]
    assert out["max_pool2d 2d tie at (0,1),(1,0)"] == [0.0, 1.0, 0.0, 0.0]
    assert out["max_pool1d all tied"] == [1.0, 0.0, 0.0]
    assert out["max_pool2d tie (0,1),(1,0),(1,1)"] == [0.0, 1.0, 0.0, 0.0]
    # clip family at the bounds (torch 2.15: torch.clamp with number bounds, clamp_min and
    # clamp_max give 0 at a bound like F.hardtanh and nn.ReLU6; with tensor bounds clamp
    # splits a tie, 1/2 to x)
    for lo, hi in [(-1.0, 1.0), (0.0, 6.0), (-0.5, 2.25)]:
        for b in (lo, hi):
            fs = [
                ("F.hardtanh", lambda t: F.hardtanh(t, lo, hi), 0.0),
                ("torch.clamp", lambda t: torch.clamp(t, lo, hi), 0.0),
                ("torch.clamp(tensor bounds)",
                 lambda t: torch.clamp(t, torch.tensor(lo), torch.tensor(hi)), 0.5),
            ]
            if b == lo:
                fs.append(("torch.clamp(min=lo)", lambda t: torch.clamp(t, min=lo), 0.0))
            else:
                fs.append(("torch.clamp(max=hi)", lambda t: torch.clamp(t, max=hi), 0.0))
            if (lo, hi) == (0.0, 6.0):
                fs.append(("nn.ReLU6", nn.ReLU6(), 0.0))
            for fname, f, want in fs:
                x = torch.tensor([b], requires_grad=True)
                f(x).sum().backward()
                out[f"{fname} on [{lo}, {hi}] at x = {b}"] = x.grad.item()
                assert x.grad.item() == want, (fname, lo, hi, b, x.grad)
    return out


def dy(shape, denom=8, lo=-8, hi=8, gen=None):
    """A dyadic tensor: integers in [lo, hi] over denom."""
    return torch.randint(lo, hi + 1, shape, generator=gen).double() / denom


def dyadic_params(m, gen):
    with torch.no_grad():
        for _, p in m.named_parameters():
            p.copy_(dy(p.shape, 8, -6, 6, gen))


# ---------------- models ----------------


class LeNet(nn.Module):
    """Conv2d -> ReLU -> MaxPool2d -> Flatten -> Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(2 * 3 * 3, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(F.relu(self.conv(x))), 1))


class Conv1dPool(nn.Module):
    """Conv1d -> MaxPool1d -> Flatten -> Linear (ties from a constant input stretch)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3)
        self.pool = nn.MaxPool1d(2)
        self.fc = nn.Linear(2 * 4, 1)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


class ConvStride(nn.Module):
    """Conv2d with padding 1 and stride 2, ReLU, MaxPool2d with padding 1, Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, stride=2)
        self.pool = nn.MaxPool2d(2, stride=2, padding=1)
        self.fc = nn.Linear(2 * 3 * 3, 1)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(F.relu(self.conv(x))), 1))


class AvgPool(nn.Module):
    """Conv2d -> ReLU -> AvgPool2d (padding, count_include_pad False) -> AvgPool2d -> Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.p1 = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.p2 = nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=True)
        self.fc = nn.Linear(2 * 4 * 4, 1)

    def forward(self, x):
        return self.fc(torch.flatten(self.p2(self.p1(F.relu(self.conv(x)))), 1))


class Residual(nn.Module):
    """A residual conv block: relu(x + conv(relu(conv(x)))), then a linear head."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 2, 3, padding=1)
        self.c2 = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.fc = nn.Linear(2 * 4 * 4, 1)

    def forward(self, x):
        h = F.relu(self.c1(x))
        h = F.relu(self.c2(h) + x)
        return self.fc(torch.flatten(h, 1))


class BNNet(nn.Module):
    """Conv2d -> BatchNorm2d (eval) -> ReLU -> global average pool -> Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2, eps=0.0)
        self.fc = nn.Linear(2, 1)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


class ClipNet(nn.Module):
    """Linear -> ReLU6 -> Linear -> Hardtanh -> Linear (hardtanh rule)."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(3, 4)
        self.l2 = nn.Linear(4, 4)
        self.l3 = nn.Linear(4, 1)

    def forward(self, x):
        return self.l3(F.hardtanh(self.l2(F.relu6(self.l1(x)))))


class ClampNet(nn.Module):
    """Linear -> torch.clamp(-0.5, 0.75) -> Linear (torch 2.15: derivative 0 at a bound)."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(3, 4)
        self.l2 = nn.Linear(4, 1)

    def forward(self, x):
        return self.l2(torch.clamp(self.l1(x), -0.5, 0.75))


class MaxMin(nn.Module):
    """Elementwise torch.maximum / torch.minimum (ONNX Max/Min), summed."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(3, 3)
        self.l2 = nn.Linear(3, 3)

    def forward(self, x):
        a, b = self.l1(x), self.l2(x)
        return (torch.maximum(a, b) - 2.0 * torch.minimum(a, x)).sum(1, keepdim=True)


class SoftNet(nn.Module):
    """Linear -> ReLU -> Linear -> Softmax -> Linear -> LogSoftmax."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(3, 4)
        self.l2 = nn.Linear(4, 3)
        self.l3 = nn.Linear(3, 2)

    def forward(self, x):
        h = torch.softmax(self.l2(F.relu(self.l1(x))), dim=1)
        return torch.log_softmax(self.l3(h), dim=1)


class GeluElu(nn.Module):
    """Linear -> GELU -> Linear -> ELU -> Dropout (eval) -> Linear."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(3, 4)
        self.l2 = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)
        self.l3 = nn.Linear(4, 1)

    def forward(self, x):
        return self.l3(self.drop(F.elu(self.l2(F.gelu(self.l1(x))))))


class Layout(nn.Module):
    """Pad -> Conv2d -> Concat -> ReLU -> Transpose -> MaxPool2d(ceil_mode) -> global max pool
    -> Squeeze/Unsqueeze -> Linear: the layout operators."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3)
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        h = self.conv(F.pad(x, (1, 0, 0, 1)))
        h = F.relu(torch.cat([h, -h], dim=1)).permute(0, 1, 3, 2)
        h = F.max_pool2d(h, 2, ceil_mode=True)
        h = F.adaptive_max_pool2d(h, 1).squeeze(-1).squeeze(-1).unsqueeze(1)
        return self.fc(h).squeeze(1)


# ---------------- planting ----------------


def plant_bias_cancel(conv_or_lin, x0, index):
    """Set the bias of output `index` (channel, *pos) so the pre-activation of sample x0
    there is exactly 0: bias = -(w . patch), a dyadic sum, exact in float64."""
    with torch.no_grad():
        c = index[0]
        conv_or_lin.bias[c] = 0.0
        z = conv_or_lin(x0.unsqueeze(0))[0]
        conv_or_lin.bias[c] = -z[index].item()
        assert conv_or_lin(x0.unsqueeze(0))[0][index].item() == 0.0


def window_ties(t, k, s, p):
    """Number of pooling windows whose maximum is attained more than once (-inf padding)."""
    if t.dim() == 3:
        t = t.unsqueeze(2)
        k, s, p = (1, k), (1, s), (0, p)
    tp = F.pad(t, (p[1], p[1], p[0], p[0]) if isinstance(p, tuple) else (p, p, p, p), value=float("-inf"))
    u = F.unfold(tp.flatten(0, 1).unsqueeze(1), k, stride=s)
    m = u.max(dim=1, keepdim=True).values
    return int(((u == m).sum(dim=1) > 1).sum())



def relu_zeros(z):
    return int((z == 0).sum())


def rec(what, count):
    assert count > 0, f"planted kink not active: {what}"
    return {"what": what, "count": count}


def spec_lenet(m, x, g):
    x[0, 0, 0:4, 0:4] = 0.0  # a zero patch: conv output = bias there
    with torch.no_grad():
        m.conv.bias[1] = 0.0  # ... so channel 1 is exactly 0 over a 2x2 block: tied windows
    plant_bias_cancel(m.conv, x[1], (0, 3, 3))
    z = m.conv(x)
    r = F.relu(z)
    return [
        rec("conv output (relu argument) == 0", relu_zeros(z)),
        rec("max-pool windows with tied maxima", window_ties(r, (2, 2), (2, 2), (0, 0))),
    ]


def spec_conv1d(m, x, g):
    x[:, 0, 0:4] = 0.5  # constant stretch: equal conv outputs at positions 0 and 1
    z = m.conv(x)
    return [rec("max-pool windows with tied maxima", window_ties(z, 2, 2, 0))]


def spec_stride(m, x, g):
    x[0] = 0.0
    with torch.no_grad():
        m.conv.bias[0] = 0.0
    plant_bias_cancel(m.conv, x[1], (1, 2, 1))
    z = m.conv(x)
    r = F.relu(z)
    return [
        rec("conv output (relu argument) == 0", relu_zeros(z)),
        rec("max-pool windows (padding 1) with tied maxima", window_ties(r, (2, 2), (2, 2), (1, 1))),
    ]


def spec_avg(m, x, g):
    plant_bias_cancel(m.conv, x[0], (0, 2, 2))
    plant_bias_cancel(m.conv, x[1], (1, 0, 3))
    return [rec("conv output (relu argument) == 0", relu_zeros(m.conv(x)))]


def spec_res(m, x, g):
    x[0, :, 0, :] = 0.0
    plant_bias_cancel(m.c1, x[1], (0, 1, 1))
    z1 = m.c1(x)
    z2 = m.c2(F.relu(z1)) + x
    return [
        rec("first conv output == 0", relu_zeros(z1)),
        {"what": "residual sum == 0 (not planted)", "count": relu_zeros(z2)},
    ]


def spec_bn(m, x, g):
    with torch.no_grad():
        m.bn.running_mean.copy_(dy((2,), 8, -4, 4, g))
        m.bn.running_var.copy_(torch.tensor([0.25, 4.0]))  # eps = 0: exact sqrt
        m.bn.weight.copy_(torch.tensor([0.5, -1.5]))
        m.bn.bias.copy_(torch.tensor([0.25, 0.125]))
    # make the BN output of sample 0 at (0, 1, 1) exactly 0: conv output = mean - bias*sd/w
    with torch.no_grad():
        target = m.bn.running_mean[0] - m.bn.bias[0] * 0.5 / m.bn.weight[0]
        m.conv.bias[0] = 0.0
        z = m.conv(x[0:1])[0, 0, 1, 1]
        m.conv.bias[0] = target - z
    h = m.bn(m.conv(x))
    return [rec("batch-norm output (relu argument) == 0", relu_zeros(h))]


def spec_clip(m, x, g):
    x[0] = 0.0
    with torch.no_grad():
        m.l1.bias.copy_(torch.tensor([0.0, 6.0, 0.5, -1.0]))  # sample 0: relu6 args 0 and 6
        m.l2.weight[0] = 0.0
        m.l2.bias[0] = 1.0  # hardtanh argument exactly at its upper bound for every sample
        m.l2.weight[1] = 0.0
        m.l2.bias[1] = -1.0  # ... and at its lower bound
    a = m.l1(x)
    b = m.l2(F.relu6(a))
    return [
        rec("relu6 argument at a bound (0 or 6)", int(((a == 0) | (a == 6)).sum())),
        rec("hardtanh argument at a bound (-1 or 1)", int(((b == -1) | (b == 1)).sum())),
    ]


def spec_clamp(m, x, g):
    with torch.no_grad():
        m.l1.weight[0] = 0.0
        m.l1.bias[0] = -0.5
        m.l1.weight[1] = 0.0
        m.l1.bias[1] = 0.75
    a = m.l1(x)
    return [rec("clamp argument at a bound (-0.5 or 0.75)", int(((a == -0.5) | (a == 0.75)).sum()))]


def spec_maxmin(m, x, g):
    with torch.no_grad():
        m.l2.weight.copy_(m.l1.weight)
        m.l2.bias.copy_(m.l1.bias)  # max(a, a): every Max argument pair tied
        m.l2.bias[2] += 0.25
    x[0] = 0.0
    with torch.no_grad():
        m.l1.bias[0] = 0.0  # min(a, x) tied at sample 0, unit 0
    a, b = m.l1(x), m.l2(x)
    return [
        rec("Max arguments tied", int((a == b).sum())),
        rec("Min arguments tied", int((a == x).sum())),
    ]


def spec_soft(m, x, g):
    plant_bias_cancel(m.l1, x[0], (1,))
    return [rec("relu argument == 0", relu_zeros(m.l1(x)))]


def spec_gelu(m, x, g):
    with torch.no_grad():
        m.l2.weight[2] = 0.0
        m.l2.bias[2] = 0.0  # elu argument exactly 0 in every sample
    return [rec("elu argument == 0", relu_zeros(m.l2(F.gelu(m.l1(x)))))]


def spec_layout(m, x, g):
    plant_bias_cancel(m.conv, F.pad(x[0], (1, 0, 0, 1)), (0, 1, 1))
    z = m.conv(F.pad(x, (1, 0, 0, 1)))
    return [rec("conv output (relu argument of both signs) == 0", relu_zeros(z))]


# name, module, per-sample input shape, batch, planting, loss, clip rule, output size
MODELS = [
    ("lenet", LeNet, (1, 8, 8), 3, spec_lenet, "mse", "hardtanh", 2),
    ("conv1d", Conv1dPool, (1, 10), 3, spec_conv1d, "mse", "hardtanh", 1),
    ("stride", ConvStride, (1, 8, 8), 3, spec_stride, "mse", "hardtanh", 1),
    ("avgpool", AvgPool, (1, 8, 8), 3, spec_avg, "mse", "hardtanh", 1),
    ("residual", Residual, (2, 4, 4), 3, spec_res, "mse", "hardtanh", 1),
    ("batchnorm", BNNet, (1, 6, 6), 3, spec_bn, "mse", "hardtanh", 1),
    ("relu6_hardtanh", ClipNet, (3,), 3, spec_clip, "mse", "hardtanh", 1),
    ("clamp", ClampNet, (3,), 3, spec_clamp, "mse", "hardtanh", 1),
    ("maxmin", MaxMin, (3,), 3, spec_maxmin, "mse", "hardtanh", 1),
    ("softmax", SoftNet, (3,), 3, spec_soft, "mse", "hardtanh", 2),
    ("gelu_elu", GeluElu, (3,), 3, spec_gelu, "mse", "hardtanh", 1),
    ("layout", Layout, (2, 5, 5), 3, spec_layout, "mse", "hardtanh", 1),
]


def export(m, x, path, dynamo):
    for f in (path, path + ".data"):
        if os.path.exists(f):
            os.remove(f)
    if dynamo:
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(m, (x,), path, dynamo=True, input_names=["x"], output_names=["y"],
                          dynamic_shapes=({0: batch},), verbose=False)
    else:
        torch.onnx.export(m, (x,), path, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    data = path + ".data"
    if os.path.exists(data) and os.path.getsize(data) == 0:
        os.remove(data)


def loss_of(out, y):
    return 0.5 * ((out - y) ** 2).sum()


def torch_tensors(m):
    """Candidate torch tensors for ONNX initializers: parameters and buffers, plus the
    parameters of a BN-folded twin (conv weight/bias with the batch norm folded in)."""
    cands = [(n, t, True) for n, t in m.named_parameters()]
    cands += [(n, t, False) for n, t in m.named_buffers() if t.dtype.is_floating_point]
    return cands


def param_grads(m, x, y, onnx_path, fused=None):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(onnx_path)  # loads external data from beside the file
    m.zero_grad()
    x = x.clone()
    loss_of(m(x), y).backward()
    cands = torch_tensors(m)
    if fused is not None:
        fm, fx = fused
        fm.zero_grad()
        loss_of(fm(x), y).backward()
        cands += [("fused:" + n, t, True) for n, t in fm.named_parameters()]
    names, grads, compare, mapped, used, arrays = [], [], [], [], set(), []
    for init in model.graph.initializer:
        a = numpy_helper.to_array(init)
        if not np.issubdtype(a.dtype, np.floating) or a.size == 0:
            continue
        hit = None
        for n, t, is_param in cands:
            tv = t.detach().numpy()
            if tv.shape == a.shape and np.array_equal(tv, a) and (n == init.name or hit is None):
                hit = (n, t, is_param)
                if n == init.name:
                    break
        names.append(init.name)
        arrays.append(a)
        if hit is not None and hit[2] and hit[1].grad is not None:
            grads.append(hit[1].grad.flatten().clone())
            compare += [True] * a.size
            mapped.append(f"{init.name} <- {hit[0]}")
            used.add(hit[0].removeprefix("fused:"))
        else:
            grads.append(torch.zeros(a.size))
            compare += [False] * a.size
            mapped.append(f"{init.name} <- (exporter constant, not compared)")
    # parameters the exporter deduplicated (equal values share one initializer): their
    # gradients add up on the shared tensor
    for n, t, is_param in cands:
        # (the BN-folded twin repeats the other layers of its model under the same names)
        if not is_param or n.removeprefix("fused:") in used or t.grad is None:
            continue
        for i, a in enumerate(arrays):
            if mapped[i].endswith("not compared)"):
                continue
            if t.shape == a.shape and np.array_equal(t.detach().numpy(), a):
                grads[i] += t.grad.flatten()
                mapped[i] += f" + {n} (shared by the exporter)"
                used.add(n.removeprefix("fused:"))
                break
    grad = [v for g_ in grads for v in g_.tolist()]
    return {"names": names, "grad": grad, "compare": compare, "mapping": mapped}


def fused_twin(m):
    """BNNet without its BatchNorm: conv weights and bias with the (exact) folding."""
    t = BNNet()
    t.bn = nn.Identity()
    with torch.no_grad():
        sd = torch.sqrt(m.bn.running_var + m.bn.eps)
        k = m.bn.weight / sd
        t.conv.weight.copy_(m.conv.weight * k[:, None, None, None])
        t.conv.bias.copy_((m.conv.bias - m.bn.running_mean) * k + m.bn.bias)
        t.fc.load_state_dict(m.fc.state_dict())
    return t.eval()


def main(out):
    os.makedirs(out, exist_ok=True)
    rules = check_rules()
    for name, cls, shape, batch, plant, loss, clip, n_out in MODELS:
        g = torch.Generator().manual_seed(zlib.crc32(name.encode()) % 1000 + 7)
        torch.manual_seed(0)
        m = cls().eval()
        dyadic_params(m, g)
        x = dy((batch,) + shape, 4, -6, 6, g)
        kinks = plant(m, x, g)
        y = dy((batch, n_out), 4, -4, 4, g)
        with torch.no_grad():
            out_t = m(x)
        fused = (fused_twin(m), x) if isinstance(m, BNNet) else None
        if fused is not None:
            assert torch.equal(fused[0](x), out_t), "BN folding is not exact"
        # wrt inputs
        xi = x.clone().requires_grad_(True)
        loss_of(m(xi), y).backward()
        expected = {
            "model": cls.__doc__.strip().splitlines()[0],
            "loss": loss,
            "clip": clip,
            "value": loss_of(out_t, y).item(),
            "kinks": kinks,
            "wrt_inputs": xi.grad.flatten().tolist(),
            "params": {},
        }
        for exporter in ("classic", "dynamo"):
            path = os.path.join(out, f"{name}_{exporter}.onnx")
            export(m, x, path, exporter == "dynamo")
            expected["params"][exporter] = param_grads(m, x, y, path, fused)
        with open(os.path.join(out, f"{name}_data.json"), "w") as f:
            json.dump({"inputs": x.tolist(), "targets": y.tolist()}, f)
        with open(os.path.join(out, f"{name}_expected.json"), "w") as f:
            json.dump(expected, f, indent=1)
        ext = os.path.exists(os.path.join(out, f"{name}_dynamo.onnx.data"))
        print(f"{name}: kinks {[(k['what'], k['count']) for k in kinks]}; dynamo external data: {ext}")
    with open(os.path.join(out, "torch_rules.json"), "w") as f:
        json.dump({"torch": torch.__version__, "checks": rules}, f, indent=1)


if __name__ == "__main__":
    if "--check-rules" in sys.argv:
        for k, v in check_rules().items():
            print(f"{k}: {v}")
        sys.exit(0)
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "fixtures", "torch"))
