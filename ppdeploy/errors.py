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


def first_line(exc: BaseException) -> str:
    """An exception's first line, or its type's name when it has no message (library messages run over many)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def one_line(subject: str, problem: str, fix: str | None = None) -> str:
    """Format a message as ``subject | problem | what to do``."""
    parts = [subject, problem] + ([fix] if fix else [])
    return " | ".join(parts)
