"""Model files made by any tool (paddle2onnx's CLI, PaddleX, trtexec, ...): what they really compute, and a folder
the runtimes can load.

``inspect_artifact`` reads the file itself with its own library (onnx, openvino, tensorrt) and decides the precision
from what the graph computes, never from a file name or a manifest: a model is judged by its least precise part,
so an fp32 graph with fp16 weights inside (onnxconverter-common's ``keep_io_types``) is fp16, and one Q/DQ pair
makes it int8. ``adopt_artifact`` then writes a ``manifest.json`` beside links to the file(s), so that the
existing runtimes, which only load artifact folders, run it unchanged.

This module knows no backend. Which backend runs a file, and who reads it, comes from the registry: the
:class:`ppdeploy.registry.Backend` record whose ``file_suffixes`` holds the file's suffix names its ``inspector``
(``"module:function"``). To support ``deploy parity --artifact``, a backend provides a module here
(``onnx_files``, ``openvino_files``, ``tensorrt_files``) with:

- ``inspect(model_file: Path) -> ForeignArtifact``: read the file with the backend's own library (imported inside
  the function) and say what it computes; raise ``ArtifactError`` for an unreadable file (``unreadable``) or one
  without exactly one input (``one_input``), ``BackendUnavailableError`` where it cannot be read here. Its record
  names it as ``inspector="ppdeploy.foreign.<x>_files:inspect"`` beside ``file_suffixes=(...)``.
- ``manifest_fields(info: ForeignArtifact, inference_precision: str | None) -> dict``: the manifest keys its
  runtime needs beyond the common ones; ``refuse_inference_precision`` where the backend computes in the file's
  own types.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

from ppdeploy.artifacts import MANIFEST, artifact_model_file, load_manifest, tool_versions, write_manifest
from ppdeploy.errors import ArtifactError, InputSpecError, one_line
from ppdeploy.fsutil import staging_dir
from ppdeploy.registry import Backend, backends, get_backend

PADDLE_SUFFIXES = (".pdmodel", ".pdiparams", ".json", ".pdiparams.info")
# Least precise first: a model is judged by its least precise part.
PRECISION_LADDER = ("int8", "bf16", "fp16", "fp32")


@dataclass(frozen=True)
class ForeignArtifact:
    """A model file as found on disk and what it really computes.

    Attributes:
        path: what the caller gave (file or folder), absolute.
        backend: the registered backend that runs it (``onnx``, ``openvino``, ``tensorrt``).
        precision: ``fp32``, ``fp16``, ``bf16`` or ``int8``: the least precise arithmetic or weights inside.
        evidence: how the precision was decided (op type and dtype counts, a ``decided_by`` sentence, notes).
        input_name: the single input's name.
        input_shape: the input's dims, ``None`` where dynamic.
        model_file: the model file itself, absolute.
        data_files: files the model file needs beside it (an IR's ``.bin``, ONNX external data).
    """

    path: Path
    backend: str
    precision: str
    evidence: dict[str, Any]
    input_name: str
    input_shape: list[int | None]
    model_file: Path
    data_files: tuple[Path, ...] = field(default=())


def inspect_artifact(path: str | Path) -> ForeignArtifact:
    """Find the model file at ``path`` and decide what it computes, reading it with its own library.

    Args:
        path: a model file of a backend that declares ``file_suffixes`` (``.onnx``, an OpenVINO ``.xml`` with its
            ``.bin`` beside it, a TensorRT ``.engine``/``.plan``/``.trt``), a folder holding exactly one of those,
            or a ppdeploy artifact folder (its manifest's precision is recorded as evidence but not trusted).

    Raises:
        ArtifactError: missing, empty, unknown or unreadable file, an IR without its ``.bin``, or a model that
            does not have exactly one input.
        BackendUnavailableError: a file whose library or device is missing here (a TensorRT engine without
            TensorRT or an NVIDIA GPU).
    """
    given = Path(path).expanduser().absolute()
    model_file, found_by = _locate(given)
    module, function = _inspector(_file_backend(model_file))
    info = getattr(module, function)(model_file)
    return replace(info, path=given, evidence={**info.evidence, **found_by})


def adopt_artifact(info: ForeignArtifact, workdir: Path, *, inference_precision: str | None = None) -> Path:
    """Make a folder under ``workdir`` that ``runtime_class(info.backend)`` loads: links to the file(s) and a manifest.

    The user's files are linked (copied where links are impossible), never changed. Adopting the same file again
    replaces its folder atomically.

    Args:
        info: what ``inspect_artifact`` found.
        workdir: where the folder goes (``<stem>-<backend>-<digest>``).
        inference_precision: the compute precision, for a backend that chooses one (OpenVINO: ``f32``, ``f16``,
            ``bf16``; default ``f32``, which is what OpenVINO does with f16-compressed weights).

    Returns:
        The adopted folder.

    Raises:
        InputSpecError: ``inference_precision`` for a backend that computes in the file's own types, or an
            unknown one.
        ArtifactError: the file changed or vanished since it was inspected.
    """
    module, _ = _inspector(get_backend(info.backend))
    extra = module.manifest_fields(info, inference_precision)
    files = [info.model_file, *info.data_files]
    for source in files:
        if not source.is_file():
            raise ArtifactError(one_line(str(source), "gone since it was inspected", "give the file again"))
    out_dir = Path(workdir) / _adopted_name(info)
    with staging_dir(out_dir) as tmp:
        methods = {_link_or_copy(source, tmp / source.relative_to(info.model_file.parent)) for source in files}
        write_manifest(tmp, {**_manifest(info, tmp, methods), **extra})
    return out_dir


# --------------------------------------------------------------------------- which backend reads a file


def _file_backends() -> list[Backend]:
    """The registered backends that run model files made by other tools (those declaring ``file_suffixes``)."""
    return [record for record in backends().values() if record.file_suffixes and record.inspector]


def _file_backend(model_file: Path) -> Backend | None:
    """The backend whose ``file_suffixes`` holds ``model_file``'s suffix, else ``None``."""
    name = model_file.name.lower()
    return next((record for record in _file_backends() if name.endswith(record.file_suffixes)), None)


def _inspector(record: Backend) -> tuple[ModuleType, str]:
    """The module a backend's ``inspector`` names (its ``manifest_fields`` too) and the inspecting function's name."""
    module_name, _, function = record.inspector.partition(":")
    return importlib.import_module(module_name), function


def accepted_files() -> str:
    """What ``--artifact`` takes, from the registry: the fix part of an error about the given path."""
    kinds = ", ".join(f"{'/'.join(record.file_suffixes)} for {record.name}" for record in _file_backends())
    return f"give a model file ({kinds}) or a folder holding exactly one"


# --------------------------------------------------------------------------- finding the file


def _locate(given: Path) -> tuple[Path, dict[str, Any]]:
    """The model file ``given`` names, checked cheaply (exists, known kind, not empty)."""
    if given.name == MANIFEST and given.is_file():
        given = given.parent
    if given.is_dir():
        model_file, found_by = _model_in_folder(given)
    elif given.exists():
        model_file, found_by = given, {}
    else:
        raise ArtifactError(one_line(str(given), "no such file or folder", accepted_files()))
    _check_file(model_file)
    return model_file, found_by


def _model_in_folder(folder: Path) -> tuple[Path, dict[str, Any]]:
    if (folder / MANIFEST).is_file():
        manifest = load_manifest(folder)
        return artifact_model_file(folder, manifest), {"manifest_precision": manifest.get("precision"),
                                                       "manifest_backend": manifest.get("backend")}
    found = sorted(p for p in folder.iterdir() if p.is_file() and _file_backend(p) is not None)
    if len(found) != 1:
        suffixes = [suffix for record in _file_backends() for suffix in record.file_suffixes]
        problem = (f"holds {len(found)} model files ({', '.join(p.name for p in found)})" if found
                   else f"holds no {', '.join(suffixes[:-1])} or {suffixes[-1]} file")
        raise ArtifactError(one_line(str(folder), problem,
                                     "give the model file itself" if found else accepted_files()))
    return found[0], {}


def _check_file(model_file: Path) -> None:
    if _file_backend(model_file) is None:
        paddle = model_file.name.endswith(PADDLE_SUFFIXES)
        problem = ("a Paddle model: that is the parity reference, not an artifact" if paddle
                   else f"unknown kind of model file ('{model_file.suffix or model_file.name}')")
        raise ArtifactError(one_line(str(model_file), problem, accepted_files()))
    if not model_file.is_file():
        raise ArtifactError(one_line(str(model_file), "not a file", accepted_files()))
    if model_file.stat().st_size == 0:
        raise ArtifactError(one_line(str(model_file), "empty file", "export or build it again"))


# --------------------------------------------------------------------------- shared by the backends' modules


def least_precise(found: Iterable[str]) -> str | None:
    """The least precise of ``found`` (``int8`` < ``bf16`` < ``fp16`` < ``fp32``); ``None`` when none is known."""
    found = set(found)
    return next((precision for precision in PRECISION_LADDER if precision in found), None)


def note_input_type(evidence: dict[str, Any], input_name: str, dtype: str, float32: str) -> None:
    """Say so when the input is not float32: the runtimes feed float32 batches and will refuse it."""
    if dtype != float32:
        evidence["input_note"] = (f"input '{input_name}' is {dtype}: ppdeploy's runtimes feed float32 batches, "
                                  "so running it fails with an input spec error")


def unreadable(model_file: Path, kind: str, reason: str) -> ArtifactError:
    """The error for a file its own library cannot read (``kind``: ``ONNX model``, ``OpenVINO IR``, ...)."""
    return ArtifactError(one_line(str(model_file), f"not a readable {kind} ({reason})",
                                  "the file is corrupt or truncated: export or build it again"))


def one_input(model_file: Path, names: list[str]) -> str:
    """The single input's name; an ``ArtifactError`` unless there is exactly one."""
    if len(names) != 1:
        raise ArtifactError(one_line(str(model_file), f"has {len(names)} inputs ({', '.join(names)})",
                                     "expected one image input [N, 3, H, W]"))
    return names[0]


def refuse_inference_precision(info: ForeignArtifact, inference_precision: str | None) -> None:
    """For a backend that computes in the file's own types: asking for a compute precision is a usage error."""
    if inference_precision is not None:
        raise InputSpecError(one_line(f"inference precision '{inference_precision}'",
                                      f"{info.backend} computes {info.model_file.name} in the file's own types "
                                      "and takes none", "leave it out"))


# --------------------------------------------------------------------------- adoption


def _adopted_name(info: ForeignArtifact) -> str:
    """``<stem>-<backend>-<digest>``: one folder per source file (path, size and mtime; no slow content hash)."""
    stat = info.model_file.stat()
    key = f"{info.model_file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return f"{info.model_file.stem}-{info.backend}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _link_or_copy(source: Path, target: Path) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(source.resolve(), target)
        return "symlink"
    except OSError:  # filesystems without symlinks (some Windows and network mounts)
        shutil.copy2(source, target)
        return "copy"


def _manifest(info: ForeignArtifact, folder: Path, methods: set[str]) -> dict[str, Any]:
    """The keys every runtime reads, plus where the file came from and why it got its precision."""
    manifest = {
        "foreign": True,
        "source_path": str(info.path),
        "source_model_file": str(info.model_file),
        "backend": info.backend,
        "precision": info.precision,
        "precision_evidence": info.evidence,
        "model_file": info.model_file.name,
        "input_name": info.input_name,
        "input_shape": info.input_shape,
        "files": {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()},
        "linked": "+".join(sorted(methods)),
        "tools": tool_versions(),
        "artifact_id": uuid.uuid4().hex,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    height, width = (info.input_shape + [None, None, None, None])[2:4]
    if height and height == width:
        manifest["input_size"] = height
    return manifest
