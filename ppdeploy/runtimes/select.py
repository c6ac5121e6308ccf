"""Map what a user types after ``--backend`` to a runtime and the artifact target it runs."""

from __future__ import annotations

from dataclasses import dataclass

from ppdeploy.converters.base import TARGETS
from ppdeploy.errors import BackendUnavailableError, one_line
from ppdeploy.runtimes.base import RUNTIMES

PADDLE = "paddle"  # the native reference: runs the Paddle model itself, no artifact
DEFAULT_TARGET = {"onnx": "onnx", "openvino": "openvino", "tensorrt": "trt-fp32"}
# Fastest first, measured on CPU (docs/benchmarks.md); GPU order follows the seed's TensorRT figures.
AUTO_ORDER = {"cpu": ("openvino", "onnx", "paddle"), "gpu": ("trt-fp16", "onnx", "paddle")}


@dataclass(frozen=True)
class Choice:
    """A runnable configuration: the runtime's registry key and the target it needs (None: the Paddle model)."""

    backend: str
    target: str | None

    @property
    def label(self) -> str:
        return self.target or self.backend


def all_choices() -> list[str]:
    """Every value ``--backend`` accepts: the reference, each backend name and each target."""
    return list(dict.fromkeys([PADDLE, *DEFAULT_TARGET, *TARGETS]))  # 'onnx' is a backend and a target


def resolve_backend(name: str, device: str = "cpu") -> Choice:
    """Turn ``paddle``, a backend name (``onnx``) or a target (``openvino-int8``) into a Choice; ``auto`` picks."""
    if name == "auto":
        return auto_backend(device)
    if name == PADDLE:
        return Choice(PADDLE, None)
    if name in DEFAULT_TARGET:
        return Choice(name, DEFAULT_TARGET[name])
    if name in TARGETS:
        return Choice(TARGETS[name].backend, name)
    raise BackendUnavailableError(one_line(f"backend '{name}'", "unknown",
                                           "choose one of: auto, " + ", ".join(all_choices())))


def availability(choice: Choice) -> tuple[bool, str]:
    """Whether the runtime and (if any) the conversion target can run here, and why not."""
    ok, reason = RUNTIMES[choice.backend].availability()
    if ok and choice.target:
        ok, reason = TARGETS[choice.target].availability()
    return ok, reason


def auto_backend(device: str = "cpu") -> Choice:
    """The fastest configuration available for ``device``."""
    for name in AUTO_ORDER.get(device, AUTO_ORDER["cpu"]):
        choice = resolve_backend(name)
        if availability(choice)[0] and device in RUNTIMES[choice.backend].devices:
            return choice
    raise BackendUnavailableError(one_line("--backend auto", f"no backend available for device '{device}'",
                                           "pip install ppdeploy (CPU stack) or 'ppdeploy[gpu]'"))
