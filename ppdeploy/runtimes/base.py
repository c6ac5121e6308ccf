"""The Runtime contract every backend implements; each runtime module registers a ``Backend`` record for it
(``ppdeploy.registry``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ppdeploy.errors import BackendUnavailableError, InputSpecError, one_line
from ppdeploy.registry import Backend, get_backend

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (``None`` for a dynamic dim) and numpy dtype name of one model input or output."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def check(self, array: np.ndarray) -> None:
        """Raise ``InputSpecError`` unless ``array`` fits this spec."""
        import numpy as np

        fits = array.ndim == len(self.shape) and all(
            want is None or want == got for want, got in zip(self.shape, array.shape))
        if not fits or array.dtype != np.dtype(self.dtype):
            want = "(" + ", ".join("N" if d is None else str(d) for d in self.shape) + ")"
            raise InputSpecError(one_line(f"input '{self.name}'", f"got {array.dtype} shape {tuple(array.shape)}",
                                          f"expected {self.dtype} {want}"))


class Runtime:
    """Loads one artifact directory and runs batches on it.

    Subclasses set ``name`` (their ``Backend`` record's name: packages, extra and devices are declared there)
    and implement ``_load`` and ``_infer``. Use as a context manager, or call ``close()``.
    """

    name: ClassVar[str] = ""

    def __init__(self, artifact_dir: str | Path, *, device: str = "cpu", threads: int | None = None) -> None:
        ok, reason = self.availability()
        if not ok:
            raise BackendUnavailableError(one_line(f"backend '{self.name}'", reason))
        devices = self.record().devices
        if device not in devices:
            raise BackendUnavailableError(one_line(f"backend '{self.name}'", f"no device '{device}'",
                                                   "choose one of: " + ", ".join(devices)))
        self.artifact_dir = Path(artifact_dir)
        self.device = device
        self.threads = threads
        self.inputs: tuple[TensorSpec, ...] = ()
        self.outputs: tuple[TensorSpec, ...] = ()
        self.details: dict[str, str] = {}  # what really runs (provider, precision, ...) for reports
        self._load()

    @classmethod
    def record(cls) -> Backend:
        """This backend's registry record."""
        return get_backend(cls.name)

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """(available, reason) without importing the backend."""
        return cls.record().availability()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one float32 NCHW batch and return the model's first output (probabilities)."""
        import numpy as np

        if not self.inputs:
            raise InputSpecError(one_line(f"backend '{self.name}'", "runtime is closed"))
        self.inputs[0].check(batch)
        return self._infer(np.ascontiguousarray(batch))

    def close(self) -> None:
        """Release the backend's resources; the runtime cannot be used afterwards."""
        self.inputs = ()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _load(self) -> None:
        raise NotImplementedError

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError


_SAME = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}  # artifact precision → the compute type that is no change


def runs_as(details: dict[str, str], *, full: bool = False) -> str:
    """What a runtime computes in, for reports, from its ``details``.

    ``fp32``; ``fp16 weights, f32 compute`` (decompressed on a CPU without native fp16); ``fp32 weights, bf16
    compute``; ``int8 (f32 for unquantized layers)``. ``full`` adds the provider and oneDNN (bench tables).
    """
    precision, compute = details.get("precision", "?"), details.get("inference_precision")
    if precision == "int8":
        text = "int8" + (f" ({compute} for unquantized layers)" if compute and compute != "int8" else "")
    elif compute and compute != _SAME.get(precision):
        text = f"{precision} weights, {compute} compute"
    else:
        text = precision
    parts = [text]
    if full and details.get("provider"):
        parts.append(details["provider"].removesuffix("ExecutionProvider"))
    if full and details.get("onednn") == "on":
        parts.append("oneDNN")
    return ", ".join(parts)
