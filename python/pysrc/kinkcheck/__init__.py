"""kinkcheck: is the gradient that backward-mode AD returned a Clarke generalized gradient?

The Rust library behind the ``kinkcheck`` command line, from Python::

    >>> import kinkcheck
    >>> r = kinkcheck.verify("vars x; f = relu(x) - relu(-x)", at=[0.0])
    >>> r.verdict, r.gradient.tolist()   # PyTorch's slope 0 at 0 is refuted: f(x) = x
    (<Verdict.OUT: 'out'>, [0.0])

``verify`` accepts program text (the ``.kc`` language), a network description (a dict or a
``.json`` path), an ONNX model (bytes or an ``.onnx`` path) or a compiled :class:`Problem`,
and returns a :class:`Report` wrapping exactly the JSON that ``kinkcheck verify --json``
prints (``Report.to_json()``). Bad input raises :class:`InputError` (a ``ValueError``)
with the command line's message. ``kinkcheck.torch`` checks PyTorch modules and audits
training runs.
"""

from __future__ import annotations

import enum
import json
import os
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from . import _kinkcheck
from ._kinkcheck import InputError, Problem

__all__ = [
    "InputError",
    "Problem",
    "Report",
    "Verdict",
    "compile",
    "load",
    "verify",
    "anf",
    "__version__",
]

__version__: str = _kinkcheck.__version__


class Verdict(str, enum.Enum):
    """The verdict of CONTRACT §3: the vector IS (``IN``), is NOT (``OUT``) a Clarke
    generalized gradient, or ``UNDECIDED``. Compares equal to the JSON strings."""

    IN = "in"
    OUT = "out"
    UNDECIDED = "undecided"

    def __str__(self) -> str:
        return self.value

    @property
    def exit_code(self) -> int:
        """The CLI's exit status: 0 IN, 1 OUT, 3 UNDECIDED."""
        return {"in": 0, "out": 1, "undecided": 3}[self.value]


class Report:
    """The result of :func:`verify`: the CLI's JSON report (CONTRACT §3), parsed.

    Attributes: ``verdict`` (:class:`Verdict`), ``gradient`` (the checked vector, a NumPy
    array in the variable order of the source), ``convention``, ``active``, ``analyzer``
    (dict: ``guaranteed``, ``by``, ``reason``), ``pieces`` (list of dicts), ``certificate``
    (dict or None), ``clarke_gradient`` (dict with ``vector`` as a NumPy array, or None),
    ``variables``, ``value``; every other field of the JSON is an attribute as well
    (``report.reason``, ``report.lps``), and ``report["field"]`` reads the raw JSON value.
    ``to_json()`` is the exact text ``kinkcheck verify --json`` prints (without the newline).
    """

    __slots__ = ("_text", "_data", "_gradient", "_extra")

    def __init__(self, text: str, gradient: Optional[np.ndarray] = None):
        self._text = text
        self._data: dict = json.loads(text)
        if gradient is None:
            gradient = np.asarray(self._data["gradient"], dtype=np.float64)
        gradient.flags.writeable = False
        self._gradient = gradient
        self._extra: dict = {}

    # -- the contract's fields -------------------------------------------------------------
    @property
    def verdict(self) -> Verdict:
        return Verdict(self._data["verdict"])

    @property
    def gradient(self) -> np.ndarray:
        return self._gradient

    @property
    def analyzer(self) -> dict:
        return self._data["analyzer"]

    @property
    def pieces(self) -> list:
        return self._data["pieces"]

    @property
    def certificate(self) -> Optional[dict]:
        return self._data.get("certificate")

    @property
    def clarke_gradient(self) -> Optional[dict]:
        c = self._data.get("clarke_gradient")
        if c is None:
            return None
        c = dict(c)
        if "vector" in c:
            c["vector"] = np.asarray(c["vector"], dtype=np.float64)
        return c

    @property
    def exit_code(self) -> int:
        """The CLI's exit status for this report: 0 IN, 1 OUT, 3 UNDECIDED."""
        return self.verdict.exit_code

    def __getattr__(self, name: str) -> Any:
        # fields added to the report later flow through without a change here
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._extra:
            return self._extra[name]
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(f"the report has no field {name!r}") from None

    def __getitem__(self, key: str) -> Any:
        if key in self._extra:
            return self._extra[key]
        return self._data[key]

    def __contains__(self, key: str) -> bool:
        return key in self._data or key in self._extra

    def keys(self):
        return list(self._data) + [k for k in self._extra if k not in self._data]

    def _set_extra(self, key: str, value: Any) -> None:
        """Add a field of the Python layer (e.g. ``matches_framework``); it is appended to
        the JSON object by :meth:`to_json`."""
        self._extra[key] = value

    def to_json(self) -> str:
        """The JSON report, exactly as ``kinkcheck verify --json`` prints it (fields added by
        the Python layer, such as ``matches_framework``, are appended at the end)."""
        if not self._extra:
            return self._text
        tail = "".join(f",{json.dumps(k)}:{json.dumps(v)}" for k, v in self._extra.items())
        return self._text[:-1] + tail + "}"

    def to_dict(self) -> dict:
        """The JSON report as a dict (a fresh copy)."""
        d = json.loads(self._text)
        d.update(self._extra)
        return d

    def __repr__(self) -> str:
        a = self.analyzer
        by = f" by {a['by']}" if a.get("guaranteed") else ""
        return (
            f"<kinkcheck.Report verdict={self.verdict.value} n={len(self._gradient)} "
            f"active={len(self._data.get('active', []))} analyzer={'guaranteed' if a.get('guaranteed') else 'not guaranteed'}{by}>"
        )


Source = Union[str, bytes, "os.PathLike[str]", Mapping[str, Any], Problem]
_EXTENSIONS = (".kc", ".json", ".onnx")


def _data_json(data: Any) -> Optional[str]:
    if data is None:
        return None
    if isinstance(data, Mapping):
        out = {}
        for k, v in data.items():
            if v is None:
                continue
            out[k] = _plain(v)
        try:
            return json.dumps(out, allow_nan=False)
        except ValueError:
            raise InputError("data: NaN or infinity in the batch") from None
    raise InputError("data must be a dict {'inputs': ..., 'targets': ...} or a path to a JSON file")


def _plain(v: Any) -> Any:
    if hasattr(v, "detach") and hasattr(v, "cpu"):  # a torch tensor
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        return v.astype(np.float64).tolist()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _is_path(source: Any) -> bool:
    if isinstance(source, os.PathLike):
        return True
    if isinstance(source, str) and "\n" not in source and ";" not in source:
        return source.lower().endswith(_EXTENSIONS) or os.path.isfile(source)
    return False


def compile(text: str) -> Problem:
    """Compile ``.kc`` program text (CONTRACT §1) into a :class:`Problem`.

    Raises :class:`InputError` with ``line:column`` and a one-line reason.
    """
    if not isinstance(text, str):
        raise InputError("compile() takes program text (a str)")
    return _kinkcheck.compile(text)


def load(
    source: Source,
    *,
    data: Union[None, Mapping[str, Any], str, "os.PathLike[str]"] = None,
    wrt: Optional[str] = None,
    loss: Optional[str] = None,
    clip: Optional[str] = None,
    base_dir: Union[None, str, "os.PathLike[str]"] = None,
) -> Problem:
    """Load a source into a :class:`Problem`, as the CLI does.

    ``source`` is program text, a path (``.kc``, network ``.json``, ``.onnx``), a network
    description (dict), ONNX model bytes, or a :class:`Problem` (returned as is). ``data``
    (a dict ``{"inputs": ..., "targets": ...}`` of lists, NumPy arrays or tensors, or a path
    to such a JSON file), ``wrt`` (``"params"`` | ``"inputs"``) and ``loss`` (``mse``,
    ``l1``, ``hinge``, ``cross_entropy``, ``none``) apply to networks and ONNX models;
    ``clip`` (``"hardtanh"``, the default, or ``"clamp"``: the AD rule of ONNX ``Clip`` at a
    bound, ``--clip``) to ONNX models, and ``base_dir`` (where external tensor data lives) to
    ONNX bytes.
    """
    if isinstance(source, Problem):
        if data is not None or wrt is not None or loss is not None or clip is not None:
            raise InputError("data, wrt, loss and clip cannot be applied to a compiled Problem")
        return source
    data_path = None
    if isinstance(data, (str, os.PathLike)):
        data_path, data = os.fspath(data), None
    data_text = _data_json(data)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if data_path is not None:
            try:
                with open(data_path, encoding="utf-8") as f:
                    data_text = f.read()
            except OSError as e:
                raise InputError(f"cannot read {data_path}: {e.strerror}") from None
        if data_text is None:
            raise InputError("ONNX models need a batch: give data=")
        bd = None if base_dir is None else os.fspath(base_dir)
        return _kinkcheck.load_onnx_bytes(bytes(source), data_text, wrt, loss, clip, bd)
    if isinstance(source, Mapping):
        if data_path is not None:
            try:
                with open(data_path, encoding="utf-8") as f:
                    data_text = f.read()
            except OSError as e:
                raise InputError(f"cannot read {data_path}: {e.strerror}") from None
        try:
            text = json.dumps(_plain(dict(source)), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise InputError(f"network: {e}") from None
        return _kinkcheck.load_network(text, data_text, wrt, loss)
    if _is_path(source):
        return _kinkcheck.load_path(os.fspath(source), data_path, data_text, wrt, loss, clip)
    if isinstance(source, str):
        if (data is not None or data_path is not None or wrt is not None or loss is not None
                or clip is not None):
            raise InputError(
                "--data, --wrt and --loss apply to network descriptions (.json) and ONNX models "
                "(.onnx) only (and --clip to ONNX models)"
            )
        return _kinkcheck.compile(source)
    raise InputError(
        f"cannot verify a {type(source).__name__}: give program text, a path, a network dict or ONNX bytes"
    )


def _vector(v: Any, what: str) -> Optional[np.ndarray]:
    if v is None:
        return None
    if hasattr(v, "detach") and hasattr(v, "cpu"):
        v = v.detach().cpu().numpy()
    try:
        a = np.ascontiguousarray(v, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a vector of numbers") from None
    return a


def verify(
    source: Source,
    at: Union[None, Sequence[float], np.ndarray] = None,
    *,
    data: Union[None, Mapping[str, Any], str, "os.PathLike[str]"] = None,
    wrt: Optional[str] = None,
    loss: Optional[str] = None,
    convention: str = "pytorch",
    gradient: Union[None, Sequence[float], np.ndarray] = None,
    clip: Optional[str] = None,
    max_pieces: int = 4096,
    max_lps: int = 20000,
    timeout: float = 10.0,
) -> Report:
    """Is the vector backward-mode AD returns at ``at`` a Clarke generalized gradient?

    Parameters
    ----------
    source
        Program text (``"vars x; f = relu(x) - relu(-x)"``), a path to a ``.kc`` program,
        a network description (``.json`` path or dict, CONTRACT §4), an ONNX model (``.onnx``
        path or bytes), or a :class:`Problem` from :func:`compile` / :func:`load`.
    at
        The point, in the order of ``vars`` (required for programs; for networks and ONNX
        models it replaces the weights the source carries).
    data, wrt, loss
        The batch (dict or JSON path), ``"params"`` | ``"inputs"``, and the per-sample loss
        (networks and ONNX models only), as ``--data``, ``--wrt`` and ``--loss``.
    convention
        ``"pytorch"`` (default), ``"jax"``, ``"tensorflow"`` or ``"sigma=S"``: which vector
        AD returns (THEORY.md §3).
    gradient
        Check this vector instead of the convention's (``--gradient``).
    clip
        ONNX models: ``"hardtanh"`` (default: ``nn.Hardtanh``/``nn.ReLU6``, derivative 0 at a
        bound) or ``"clamp"`` (derivative 1), the rule assumed for ``Clip`` (``--clip``).
    max_pieces, max_lps, timeout
        Budgets of the LP checker, as on the command line.

    Returns
    -------
    Report
        ``verdict`` (:class:`Verdict`), ``gradient`` (NumPy), ``analyzer``, ``pieces``,
        ``certificate``, ``clarke_gradient`` (when present); ``to_json()`` is the CLI's JSON.

    Raises
    ------
    InputError
        Malformed source or data, a point or vector of the wrong length, NaN or infinity.
        The message is the one the CLI prints (without its ``kinkcheck:`` prefix).

    The verification runs with the GIL released.
    """
    problem = load(source, data=data, wrt=wrt, loss=loss, clip=clip)
    if not isinstance(convention, str):
        raise InputError("convention must be a str")
    text, g = _kinkcheck.verify(
        problem,
        _vector(at, "at"),
        convention,
        _vector(gradient, "gradient"),
        int(max_pieces),
        int(max_lps),
        float(timeout),
    )
    return Report(text, g)


def anf(
    source: Source,
    at: Union[None, Sequence[float], np.ndarray] = None,
    *,
    data: Union[None, Mapping[str, Any], str, "os.PathLike[str]"] = None,
    wrt: Optional[str] = None,
    loss: Optional[str] = None,
) -> dict:
    """The abs-normal form at the point (``kinkcheck anf --json``, CONTRACT §3), as a dict."""
    problem = load(source, data=data, wrt=wrt, loss=loss)
    return json.loads(_kinkcheck.anf(problem, _vector(at, "at")))
