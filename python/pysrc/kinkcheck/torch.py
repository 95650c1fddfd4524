"""kinkcheck for PyTorch: check a module's gradient on a batch, and audit a training run.

* :func:`verify` exports a module to ONNX in memory (TorchScript exporter, float64), verifies
  the gradient of the batch objective, and checks that kinkcheck's model of PyTorch's backward
  pass gives the vector ``torch.autograd`` really returns (``report.matches_framework``).
* :class:`Audit` is a hook for an ordinary training loop: ``audit.step(inputs, targets)``
  between ``loss.backward()`` and ``optimizer.step()`` records the exact kinks the step hit
  and whether the gradient PyTorch computed was a Clarke gradient.

The objective is CONTRACT §4's: the SUM over the batch of per-sample losses, ``mse`` being
½‖N(x)−y‖². Variables ``wrt="params"`` are the ONNX initializers in file order (the module's
parameters, each row-major), ``wrt="inputs"`` the batch, sample after sample.

Float32 models: kinkcheck evaluates in float64. The parameters and inputs of a float32 model
are exactly representable in float64, so the exported float64 copy sits at exactly the
float32 point; the audit checks PyTorch's float32 gradient (cast to float64) at that point,
compares it with kinkcheck's float64 AD vector with a relative tolerance of 1e-4 (1e-8 for
float64 models), and also counts the exact zeros the float32 forward pass itself saw at the
inputs of ``ReLU``-family modules (``framework_kinks``): kink hits of the float32 arithmetic
that the float64 evaluation may not reproduce (and vice versa) are visible that way.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import time
import warnings
from typing import Any, Callable, List, Optional, Tuple, Union

import numpy as np
import torch

from . import InputError, Report, _kinkcheck
from . import verify as _verify

__all__ = ["verify", "export_onnx", "Audit", "AuditSummary", "MismatchError", "objective"]

_LOSSES = ("mse", "l1", "hinge", "cross_entropy", "none")


class MismatchError(AssertionError):
    """kinkcheck's AD vector under the PyTorch convention differs from torch.autograd's."""


def objective(out: torch.Tensor, targets: Optional[torch.Tensor], loss: str) -> torch.Tensor:
    """CONTRACT §4's batch objective in torch: the SUM of per-sample losses."""
    out = out.reshape(out.shape[0], -1)
    if loss == "none":
        return out.sum()
    if targets is None:
        raise InputError(f"loss '{loss}' needs targets")
    y = targets.reshape(targets.shape[0], -1).to(out.dtype)
    if loss == "mse":
        return 0.5 * ((out - y) ** 2).sum()
    if loss == "l1":
        return (out - y).abs().sum()
    if loss == "hinge":
        return torch.relu(1 - y * out).sum()
    if loss == "cross_entropy":
        return -(y * torch.log_softmax(out, dim=1)).sum()
    raise InputError(f"unknown --loss '{loss}' (expected mse, l1, hinge, cross_entropy or none)")


def _check_float_attributes(module: torch.nn.Module) -> None:
    # ONNX stores float attributes (LeakyRelu's alpha, HardSigmoid's alpha/beta) in float32
    for name, m in module.named_modules():
        slope = getattr(m, "negative_slope", None) if isinstance(m, torch.nn.LeakyReLU) else None
        if slope is not None and float(np.float32(slope)) != float(slope):
            warnings.warn(
                f"module '{name}': LeakyReLU slope {slope} is not a float32 number; ONNX stores it "
                f"as {float(np.float32(slope))!r}, so kinkcheck's vector can differ from "
                "torch.autograd's by a relative ~1e-9 (use a float32-exact slope such as 0.125, "
                "or a larger tolerance)",
                UserWarning,
                stacklevel=3,
            )


def export_onnx(module: torch.nn.Module, example: torch.Tensor) -> bytes:
    """Export ``module`` (as it is: call ``.double()`` first for float64) to ONNX bytes with
    the TorchScript exporter, no constant folding (initializers keep the parameter names) and a
    dynamic batch axis. ONNX float attributes are float32: a LeakyReLU slope that is not a
    float32 number is exported rounded (a warning says so)."""
    _check_float_attributes(module)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buf,
            dynamo=False,
            do_constant_folding=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=17,
        )
    return buf.getvalue()


def _float_initializers(model_bytes: bytes) -> List[str]:
    import onnx

    m = onnx.load_from_string(model_bytes)
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
    return [t.name for t in m.graph.initializer if t.data_type in floats and np.prod(t.dims) > 0]


def _param_order(module: torch.nn.Module, model_bytes: bytes) -> List[str]:
    names = _float_initializers(model_bytes)
    params = dict(module.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise InputError(
            f"ONNX initializer '{missing[0]}' is not a parameter of the module "
            "(buffers and constants cannot be differentiated against torch.autograd)"
        )
    return names


def _as_tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _batch(x: torch.Tensor, y: Optional[torch.Tensor]) -> dict:
    d = {"inputs": x.detach().to(torch.float64).cpu().numpy().tolist()}
    if y is not None:
        d["targets"] = y.detach().to(torch.float64).reshape(y.shape[0], -1).cpu().numpy().tolist()
    return d


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b), initial=0.0) / (1.0 + np.max(np.abs(b), initial=0.0)))


def verify(
    module: torch.nn.Module,
    inputs: Any,
    targets: Any = None,
    *,
    loss: str = "mse",
    wrt: str = "params",
    convention: str = "pytorch",
    tolerance: float = 1e-9,
    **options: Any,
) -> Report:
    """Verify the gradient of ``module`` on one batch.

    The module is copied, put in eval mode and converted to float64; the copy is exported to
    ONNX in memory and verified with kinkcheck on the batch (``inputs``: the batch, first axis
    the samples; ``targets``: one target per sample). The objective is the SUM of per-sample
    losses (``loss``: ``mse`` = ½‖N(x)−y‖², ``l1``, ``hinge``, ``cross_entropy``, or
    ``none``, which needs no targets). The same objective is differentiated by
    ``torch.autograd`` on the copy; with ``convention="pytorch"`` the two vectors must agree
    (relative ``tolerance``), which the report states as ``matches_framework: true`` (also
    in ``to_json()``); otherwise :class:`MismatchError` is raised. ONNX keeps float attributes
    in float32, so a LeakyReLU slope like 0.1 is exported as 0.10000000149 (a warning says so)
    and may need a larger ``tolerance``. ``**options`` go to
    :func:`kinkcheck.verify` (``max_pieces``, ``max_lps``, ``timeout``).
    """
    if loss not in _LOSSES:
        raise InputError(f"unknown --loss '{loss}' (expected mse, l1, hinge, cross_entropy or none)")
    if wrt not in ("params", "inputs"):
        raise InputError(f"unknown --wrt '{wrt}' (expected params or inputs)")
    if targets is None and loss != "none":
        raise InputError(f"loss '{loss}' needs targets (or pass loss='none')")
    m = copy.deepcopy(module).to(torch.float64).eval()
    x = _as_tensor(inputs, torch.float64)
    y = None if targets is None else _as_tensor(targets, torch.float64)
    if not torch.isfinite(x).all() or (y is not None and not torch.isfinite(y).all()):
        raise InputError("data: NaN or infinity in the batch")
    model_bytes = export_onnx(m, x)
    # kinkcheck first: it checks the batch against the model (target lengths, shapes)
    report = _verify(
        model_bytes, data=_batch(x, y), wrt=wrt, loss=loss, convention=convention, **options
    )

    # torch.autograd on the same objective
    m.zero_grad(set_to_none=True)
    if wrt == "params":
        order = _param_order(m, model_bytes)
        obj = objective(m(x), y, loss)
        params = dict(m.named_parameters())
        obj.backward()
        g_torch = torch.cat(
            [
                (params[n].grad if params[n].grad is not None else torch.zeros_like(params[n])).reshape(-1)
                for n in order
            ]
        )
    else:
        xr = x.clone().requires_grad_(True)
        with torch.no_grad():
            for p in m.parameters():
                p.requires_grad_(False)
        obj = objective(m(xr), y, loss)
        obj.backward()
        g_torch = xr.grad.reshape(-1)
    g_torch_np = g_torch.detach().cpu().numpy().astype(np.float64)

    diff = _difference(g_torch_np, report.gradient)
    matches = diff <= tolerance
    report._set_extra("matches_framework", bool(matches))
    report._set_extra("framework_difference", diff)
    if convention == "pytorch" and not matches:
        raise MismatchError(
            f"kinkcheck's PyTorch AD vector differs from torch.autograd's (relative difference {diff:.3e}); "
            f"torch: {g_torch_np[:8].tolist()}..., kinkcheck: {report.gradient[:8].tolist()}..."
        )
    return report


# -------------------------------------------------------------------------------- the audit

_KINK_MODULES = (torch.nn.ReLU, torch.nn.LeakyReLU, torch.nn.ReLU6, torch.nn.Hardtanh)


def _loss_spec(loss_fn: Any) -> Tuple[str, Callable[[int], float]]:
    """kinkcheck's loss name and the factor c(n_elements) with ∇(loss_fn) = c·∇(objective)."""
    if isinstance(loss_fn, str):
        if loss_fn not in _LOSSES:
            raise InputError(f"unknown --loss '{loss_fn}' (expected mse, l1, hinge, cross_entropy or none)")
        return loss_fn, lambda n: 1.0
    if isinstance(loss_fn, torch.nn.MSELoss):
        if loss_fn.reduction == "mean":
            return "mse", lambda n: 2.0 / n
        if loss_fn.reduction == "sum":
            return "mse", lambda n: 2.0
    if isinstance(loss_fn, torch.nn.L1Loss):
        if loss_fn.reduction == "mean":
            return "l1", lambda n: 1.0 / n
        if loss_fn.reduction == "sum":
            return "l1", lambda n: 1.0
    raise InputError(
        "loss_fn must be nn.MSELoss or nn.L1Loss (reduction 'mean' or 'sum') or one of "
        "'mse', 'l1', 'hinge', 'cross_entropy', 'none' (the SUM of per-sample losses of CONTRACT §4)"
    )


class AuditSummary:
    """The audit table: ``str(summary)`` is the table the CLI prints (``kinkcheck audit``);
    ``summary["steps_in"]`` etc. read its fields; ``exit_code`` is the CLI's (0 every step IN,
    1 some step OUT, 3 some UNDECIDED and none OUT)."""

    def __init__(self, table: str, data: dict, exit_code: int):
        self.table = table
        self.data = data
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.table

    def __repr__(self) -> str:
        return self.table

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def to_dict(self) -> dict:
        return dict(self.data)


class Audit:
    """Record kink hits and verdicts along a training run.

    ::

        audit = kinkcheck.torch.Audit(model, nn.MSELoss())
        for step in range(steps):
            opt.zero_grad(); loss = loss_fn(model(x), y); loss.backward()
            audit.step(x, y)          # after backward(), before opt.step()
            opt.step()
        print(audit.summary()); audit.plot("audit.png"); audit.save("run.jsonl")

    Every ``every``-th call of :meth:`step` exports the model at its current parameters (a
    float64 copy), takes the gradient PyTorch left in ``.grad`` (scaled to kinkcheck's
    objective: ``nn.MSELoss()`` is ``2/n`` times ½‖N(x)−y‖² summed, ``n`` the number of
    output elements of the batch), and verifies it: exact kinks hit (switches with z = 0
    exactly, by kind), whether PyTorch's vector matches kinkcheck's PyTorch AD vector, the
    verdict on PyTorch's vector, the analyzer's outcome, and the time taken. ``wrt`` is
    always ``params``. The model is exported in eval mode: with dropout or batch norm in
    training mode the exported function is not the one PyTorch differentiated, and the record
    shows ``matches_framework: false``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: Any,
        every: int = 1,
        *,
        convention: str = "pytorch",
        timeout: float = 10.0,
    ):
        if not isinstance(every, int) or every < 1:
            raise InputError("every must be a positive integer")
        self.model = model
        self.loss, self._scale = _loss_spec(loss_fn)
        self.every = every
        self.convention = convention
        self.timeout = float(timeout)
        self.records: List[dict] = []
        self._lines: List[str] = []
        self._calls = 0

    def _framework_kinks(self, x: torch.Tensor) -> int:
        count = [0]

        def hook(mod: torch.nn.Module, inp: tuple, out: Any) -> None:
            z = inp[0]
            if isinstance(mod, torch.nn.Hardtanh):  # also ReLU6
                count[0] += int(((z == mod.min_val) | (z == mod.max_val)).sum())
            else:
                count[0] += int((z == 0).sum())

        hs = [m.register_forward_hook(hook) for m in self.model.modules() if isinstance(m, _KINK_MODULES)]
        try:
            with torch.no_grad():
                self.model(x)
        finally:
            for h in hs:
                h.remove()
        return count[0]

    def step(self, inputs: Any, targets: Any = None) -> Optional[dict]:
        """Audit the current step (call after ``loss.backward()``, before ``optimizer.step()``).
        Returns the step's record (a dict), or None when the step is skipped by ``every``."""
        index = self._calls
        self._calls += 1
        if index % self.every:
            return None
        t0 = time.perf_counter()
        dtype = next(self.model.parameters()).dtype
        x = _as_tensor(inputs, dtype)
        y = None if targets is None else _as_tensor(targets, dtype)
        m64 = copy.deepcopy(self.model).to(torch.float64)
        was_training = m64.training
        m64.eval()
        x64 = x.to(torch.float64)
        model_bytes = export_onnx(m64, x64)
        m64.train(was_training)
        order = _param_order(m64, model_bytes)
        params = dict(self.model.named_parameters())
        grads = []
        for n in order:
            g = params[n].grad
            if g is None:
                raise InputError(
                    f"parameter '{n}' has no .grad: call audit.step() after loss.backward()"
                )
            grads.append(g.detach().to(torch.float64).reshape(-1))
        n_out = None
        if y is not None:
            n_out = y.numel()
        else:
            with torch.no_grad():
                n_out = self.model(x).numel()
        c = self._scale(n_out)
        fw = (torch.cat(grads) / c).cpu().numpy()
        line = {
            "step": index,
            "onnx_base64": base64.b64encode(model_bytes).decode("ascii"),
            "data": _batch(x64, y),
            "loss": self.loss,
            "wrt": "params",
            "convention": self.convention,
            "framework_gradient": fw.tolist(),
            "tolerance": 1e-8 if dtype == torch.float64 else 1e-4,
            "dtype": str(dtype).replace("torch.", ""),
        }
        text = json.dumps(line, allow_nan=False)
        rec = json.loads(_kinkcheck.audit_step(text, self.timeout))
        rec["framework_kinks"] = self._framework_kinks(x)
        rec["dtype"] = line["dtype"]
        rec["step_seconds"] = time.perf_counter() - t0
        self.records.append(rec)
        self._lines.append(text)
        return rec

    def summary(self) -> AuditSummary:
        """The table: steps audited, steps with kinks, steps IN / OUT / UNDECIDED, …"""
        table, data, code = _kinkcheck.audit_summary(json.dumps(self.records))
        data = json.loads(data)
        fk = sum(r.get("framework_kinks", 0) for r in self.records)
        data["framework_kinks"] = fk
        dtypes = sorted({r.get("dtype", "float64") for r in self.records})
        if dtypes and dtypes != ["float64"]:
            table += f"{'/'.join(dtypes)} forward: {fk} exact zeros at ReLU-family inputs (float64 evaluation: {data['kinks']})\n"
        return AuditSummary(table, data, code)

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write the run file for ``kinkcheck audit RUN.jsonl``: one JSON line per audited
        step (model as base64 ONNX, batch, loss, wrt, convention, PyTorch's vector)."""
        with open(path, "w", encoding="utf-8") as f:
            for line in self._lines:
                f.write(line + "\n")

    def plot(self, path: Union[str, "os.PathLike[str]"], title: Optional[str] = None) -> None:
        """Write a PNG: exact kink hits per audited step (bars, by kind) and the verdict on
        PyTorch's gradient at each step (IN / UNDECIDED / OUT)."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        if not self.records:
            raise InputError("nothing to plot: no step was audited")
        steps = np.array([r["step"] for r in self.records])
        kinds = sorted({k for r in self.records for k in r["kinks_by_op"]})
        fig, (ax1, ax2) = plt.subplots(
            2, 1, sharex=True, figsize=(8, 5), gridspec_kw={"height_ratios": [3, 1.4]}
        )
        bottom = np.zeros(len(steps))
        width = max(0.8 * (steps[1] - steps[0]) if len(steps) > 1 else 0.8, 0.2)
        for k in kinds or ["none"]:
            h = np.array([r["kinks_by_op"].get(k, 0) for r in self.records], dtype=float)
            ax1.bar(steps, h, width=width, bottom=bottom, label=f"{k} (z = 0 exactly)")
            bottom += h
        near = np.array([r.get("near", 0) for r in self.records], dtype=float)
        if near.any():
            ax1.plot(steps, near, "k.", label="near a kink (inside τ)")
        ax1.set_ylabel("exact kink hits")
        ax1.legend(loc="upper right", fontsize=8)
        ax1.grid(axis="y", alpha=0.3)
        ax1.set_title(title or "kinkcheck audit: kink hits and the verdict on PyTorch's gradient")
        level = {"out": 0, "undecided": 1, "in": 2}
        colour = {"out": "tab:red", "undecided": "tab:orange", "in": "tab:green"}
        for v in ("in", "undecided", "out"):
            sel = [i for i, r in enumerate(self.records) if r["verdict"] == v]
            if sel:
                ax2.scatter(steps[sel], [level[v]] * len(sel), c=colour[v], s=18, label=v.upper())
        ax2.set_yticks([0, 1, 2], ["OUT", "UNDEC.", "IN"])
        ax2.set_ylim(-0.5, 2.5)
        ax2.set_xlabel("training step")
        ax2.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
