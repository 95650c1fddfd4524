"""Type stubs of the native module (PyO3). Use the wrappers in ``kinkcheck`` instead."""

from typing import Optional, Tuple

import numpy as np
import numpy.typing as npt

__version__: str

class InputError(ValueError):
    """Bad input; the message is the one the CLI prints."""

class Problem:
    """A compiled objective."""

    @property
    def var_names(self) -> list[str]: ...
    @property
    def n_vars(self) -> int: ...
    @property
    def n_switches(self) -> int: ...
    @property
    def point(self) -> Optional[npt.NDArray[np.float64]]: ...

def compile(text: str) -> Problem: ...
def load_path(
    path: str,
    data_path: Optional[str] = None,
    data_json: Optional[str] = None,
    wrt: Optional[str] = None,
    loss: Optional[str] = None,
    clip: Optional[str] = None,
) -> Problem: ...
def load_network(
    text: str, data_json: Optional[str] = None, wrt: Optional[str] = None, loss: Optional[str] = None
) -> Problem: ...
def load_onnx_bytes(
    model: bytes,
    data_json: str,
    wrt: Optional[str] = None,
    loss: Optional[str] = None,
    clip: Optional[str] = None,
    base_dir: Optional[str] = None,
) -> Problem: ...
def verify(
    problem: Problem,
    at: Optional[npt.NDArray[np.float64]] = None,
    convention: str = "pytorch",
    gradient: Optional[npt.NDArray[np.float64]] = None,
    max_pieces: int = 4096,
    max_lps: int = 20000,
    timeout: float = 10.0,
) -> Tuple[str, npt.NDArray[np.float64]]: ...
def anf(problem: Problem, at: Optional[npt.NDArray[np.float64]] = None) -> str: ...
def audit_step(line: str, timeout: float = 10.0) -> str: ...
def audit_summary(records_json: str) -> Tuple[str, str, int]: ...
