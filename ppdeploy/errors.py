"""One small error hierarchy. Messages read: subject | problem | what to do."""

from __future__ import annotations


class DeployError(Exception):
    """Base of every error ppdeploy raises on purpose; the CLI prints it as one line."""


class BackendUnavailableError(DeployError):
    """A backend's package is missing or its device is absent."""


class ConversionError(DeployError):
    """A conversion step failed or produced an invalid artifact."""


class ArtifactError(DeployError):
    """An artifact on disk is missing, corrupt, stale or foreign to this machine."""


class ModelNotFoundError(DeployError):
    """A model name or directory cannot be resolved."""


class WeightsMismatchError(DeployError):
    """A weights file's parameter names or shapes do not fit the architecture it is loaded into."""


class DownloadError(DeployError):
    """A download failed, was truncated, or its archive is unsafe."""


class InputSpecError(DeployError):
    """An input tensor does not fit the model's input spec."""


class ImageError(DeployError):
    """An image file cannot be read or decoded."""


class ParityError(DeployError):
    """A backend's outputs disagree with the reference beyond tolerance."""


# Where OpenVINO and NNCF errors say where in the C++ sources they were raised; the reason is on a later line.
OPENVINO_LOCATION_LINES = ("Exception from", "Check ")
MAX_LINE = 300  # characters of a library's message kept in ours


def first_line(exc: BaseException, *, skip: tuple[str, ...] = (), max_chars: int = MAX_LINE) -> str:
    """The first meaningful line of an exception's message, or its type's name when it has none.

    Library messages (Paddle's C++ enforce errors, OpenVINO's, paddle2onnx's) run over many lines; blank lines,
    rule lines (``-----``, ``=====``) and ``Traceback`` lines are passed over.

    Args:
        exc: the exception.
        skip: also pass over lines starting with one of these (e.g. :data:`OPENVINO_LOCATION_LINES`), unless
            every line does.
        max_chars: the line is cut to this many characters.
    """
    lines = [line.strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line and not set(line) <= set("-=") and "Traceback" not in line]
    text = next((line for line in lines if not line.startswith(skip)), lines[0] if lines else type(exc).__name__)
    return text[:max_chars]


def one_line(subject: str, problem: str, fix: str | None = None) -> str:
    """Format a message as ``subject | problem | what to do``."""
    parts = [subject, problem] + ([fix] if fix else [])
    return " | ".join(parts)
