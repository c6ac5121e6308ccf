"""Run a conversion target end to end: resolve its source, reuse a valid cached artifact, or build one atomically."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ppdeploy.artifacts import (
    HASHES,
    MANIFEST,
    TamperedArtifactError,
    artifact_model_file,
    file_hashes,
    load_manifest,
    test_run,
    tool_versions,
    write_manifest,
)
from ppdeploy.converters.base import SUPPORTED_OPSETS, ConvertOptions
from ppdeploy.errors import (
    ArtifactError,
    BackendUnavailableError,
    ConversionError,
    DeployError,
    WeightsMismatchError,
    one_line,
)
from ppdeploy.fsutil import cache_home, file_lock, no_space_message, staging_dir, sweep_scratch
from ppdeploy.models.identify import swapped_entry
from ppdeploy.models.paddle_files import PaddleModel
from ppdeploy.registry import Target, get_target

Log = Callable[[str], None]
_HASHES: dict[tuple, str] = {}
_FULL_DISK_BYTES = 1 << 20  # less free space than this after a failed write: the disk is full


def artifact_root() -> Path:
    return cache_home() / "artifacts"


def default_artifact_dir(model: Any, target: str) -> Path:
    """Where the cache keeps ``target`` built from ``model`` (a PaddleModel or a resolved model)."""
    return artifact_root() / model_key(model) / target


def model_key(model: Any) -> str:
    key = getattr(model, "key", None)
    if key:
        return key
    paddle = _paddle(model)
    return f"{paddle.directory.name}-{source_hash(paddle)[:12]}"


def source_hash(paddle: PaddleModel) -> str:
    """Content hash of a Paddle model, memoised per (path, size, mtime) within the process."""
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in (paddle.model_file, paddle.params_file))
    if stamp not in _HASHES:
        _HASHES[stamp] = paddle.content_hash()
    return _HASHES[stamp]


def default_options(model: Any, target: str, **overrides: Any) -> ConvertOptions:
    """Options for ``target`` whose input size and preprocessing come from the model (yaml, else zoo record)."""
    from ppdeploy.preprocess import PreprocessConfig

    spec = getattr(model, "spec", None)
    default = spec.preprocess_config() if spec is not None else PreprocessConfig()
    cfg = PreprocessConfig.for_model_dir(_paddle(model).directory, default)
    values = {"input_size": cfg.crop_size, "preprocess": cfg.to_dict(), **overrides, "target": target}
    return ConvertOptions(**values)


def convert_model(model: Any, target: str, *, options: ConvertOptions | None = None, out_dir: Path | None = None,
                  force: bool = False, log: Log | None = None) -> Path:
    """Build (or reuse) the artifact for ``target`` and return its folder.

    Args:
        model: a ``PaddleModel`` or a resolved zoo model (anything with ``.paddle``).
        target: a registered target's name (``ppdeploy.registry.targets()``).
        options: conversion options; defaults come from the model's preprocessing.
        out_dir: artifact folder; default ``$PPDEPLOY_HOME/artifacts/<model>/<target>``. Source artifacts of a
            chained target go beside it.
        force: rebuild even when a valid artifact exists.
        log: called with one line per step (``Converting ...``, ``Reusing ...``).

    Raises:
        ConversionError: the conversion failed; nothing is left at ``out_dir``.
        BackendUnavailableError: a package or device the target needs is missing.
    """
    spec = get_target(target)
    ok, reason = spec.availability()
    if not ok:
        raise BackendUnavailableError(one_line(f"target '{target}'", reason))
    options = dataclasses.replace(options or default_options(model, target), target=target, log=log)
    if options.opset not in SUPPORTED_OPSETS:
        raise ConversionError(one_line(f"--opset {options.opset}", "unsupported",
                                       f"use {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1} (default 17)"))
    out_dir = Path(out_dir) if out_dir else default_artifact_dir(model, target)
    paddle = _paddle(model)
    src_file, src_manifest = _source(model, spec, options, out_dir, log)
    wanted = _fingerprint(paddle, spec, options, src_manifest)
    if not force and _is_valid(out_dir, wanted):  # before the lock: a read-only cache serves what it holds
        _say(log, f"Reusing {target} artifact at {out_dir}")
        return out_dir
    _check_not_swapped(model, paddle)
    sweep_scratch()
    with file_lock(artifact_root() / ".locks" / f"{model_key(model)}-{out_dir.name}.lock"):
        if not force and _is_valid(out_dir, wanted):  # another process built it while we waited
            _say(log, f"Reusing {target} artifact at {out_dir}")
            return out_dir
        _remove_leftovers(out_dir)
        _say(log, f"Converting {getattr(model, 'name', paddle.directory.name)} to {target} ...")
        started = time.perf_counter()
        with staging_dir(out_dir) as tmp:
            result = _run_converter(spec, src_file, tmp, options)
            seconds = round(time.perf_counter() - started, 3)
            manifest = _manifest(model, paddle, spec, options, result, wanted, seconds, tmp)
            write_manifest(tmp, manifest)
            artifact_model_file(tmp)  # the converter must have written what it claims
            _say(log, f"Test-running the {target} artifact ...")
            write_manifest(tmp, {**manifest, "output_shape": list(test_run(tmp, manifest))})
        _say(log, f"Wrote {target} artifact to {out_dir} in {seconds:.1f} s")
    return out_dir


def _remove_leftovers(out_dir: Path) -> None:
    """Delete staging folders a killed conversion left beside ``out_dir`` (safe: we hold its lock)."""
    import shutil

    for leftover in out_dir.parent.glob(f".{out_dir.name}.*.partial"):
        shutil.rmtree(leftover, ignore_errors=True)


def _check_not_swapped(model: Any, paddle: PaddleModel) -> None:
    """Refuse weights of another zoo architecture than the model's own (say, ResNet34's in a ResNet18 folder):
    the converter would fail on them with an error about something else."""
    spec = getattr(model, "spec", None)
    other = swapped_entry(paddle.params_file, spec) if spec is not None else None
    if other:
        raise WeightsMismatchError(one_line(str(paddle.params_file), f"holds the parameters of {other}, but this "
                                            f"model is {spec.name} (from its folder's name or record)",
                                            f"copy {spec.name}'s inference.pdiparams here, or use the {other} "
                                            "model folder"))


def _paddle(model: Any) -> PaddleModel:
    return model if isinstance(model, PaddleModel) else model.paddle


def _say(log: Log | None, line: str) -> None:
    if log is not None:
        log(line)


def _source(model: Any, spec: Target, options: ConvertOptions, out_dir: Path,
            log: Log | None) -> tuple[Path, dict | None]:
    """The file the converter reads, and the manifest of the artifact it comes from (None for the Paddle model)."""
    paddle = _paddle(model)
    source = spec.source
    if source is None and paddle.fmt in spec.paddle_formats:
        return paddle.model_file, None
    source = source or spec.fallback
    src_dir = convert_model(model, source, options=options, out_dir=out_dir.parent / source, log=log)
    manifest = load_manifest(src_dir)
    return artifact_model_file(src_dir, manifest), manifest


def _fingerprint(paddle: PaddleModel, spec: Target, options: ConvertOptions, src_manifest: dict | None) -> dict:
    """Everything that, when changed, makes a cached artifact stale."""
    calib = validation = max_drop = None
    if spec.calibrated:
        from ppdeploy.samples import set_hash

        calib = set_hash("calibration", options.calib_images, options.calib_count)
        validation, max_drop = set_hash("validation", options.val_images, options.val_count), options.max_drop
    return {
        "target": spec.name,
        **({"recipe": spec.recipe} if spec.recipe else {}),
        "source_hash": source_hash(paddle),
        "source_artifact_id": src_manifest.get("artifact_id") if src_manifest else None,
        "options": {"opset": options.opset, "max_batch": options.max_batch, "input_size": options.input_size,
                    "workspace_mb": options.workspace_mb, "preprocess": options.preprocess},
        "calibration_hash": calib,
        "validation_hash": validation,
        "max_drop": max_drop,
        "tools": tool_versions(),
        "gpu": _gpu() if spec.needs_gpu else None,  # an engine only runs on the GPU model it was built for
    }


def _gpu() -> dict[str, str]:
    from ppdeploy.gpu import current_gpu

    return current_gpu()


def _is_valid(out_dir: Path, wanted: dict) -> bool:
    if not (out_dir / MANIFEST).is_file():
        return False
    try:
        manifest = load_manifest(out_dir)
        artifact_model_file(out_dir, manifest)
    except TamperedArtifactError:
        raise  # changed content is refused, never silently rebuilt: someone should look at it
    except ArtifactError:
        return False
    return all(manifest.get(key) == value for key, value in wanted.items())


def _run_converter(spec: Target, src_file: Path, dst: Path, options: ConvertOptions):
    try:
        return spec.converter().convert(src_file, dst, options)
    except Exception as exc:
        _check_space(dst, exc)
        if isinstance(exc, DeployError):
            raise
        # a library failure becomes one actionable line
        raise ConversionError(one_line(f"{spec.name} from {src_file}", f"{type(exc).__name__}: {exc}",
                                       "run with --verbose for the traceback")) from exc


def _check_space(dst: Path, exc: Exception) -> None:
    """A full disk makes libraries fail with odd messages (OpenVINO: ``basic_ios::clear: iostream error``): when
    the staging folder's disk is (nearly) full after a failure, say so instead."""
    import errno
    import shutil

    try:
        free = shutil.disk_usage(dst).free
    except OSError:
        return
    if getattr(exc, "errno", None) == errno.ENOSPC or free < _FULL_DISK_BYTES:
        raise ConversionError(no_space_message(dst.parent, f" while writing {dst.name}")) from exc


def _manifest(model: Any, paddle: PaddleModel, spec: Target, options: ConvertOptions, result, wanted: dict,
              seconds: float, tmp: Path) -> dict:
    size = options.input_size
    info = {key: value for key, value in result.info.items() if key not in wanted}
    return {
        **wanted,
        **info,
        "artifact_id": uuid.uuid4().hex,
        "model_name": getattr(model, "name", paddle.directory.name),
        "source_model": str(paddle.directory),
        "source_format": paddle.fmt,
        "backend": spec.backend,
        "precision": result.precision,
        "opset": options.opset,
        "model_file": result.model_file,
        "input_shape_range": {"min": [1, 3, size, size], "max": [options.max_batch, 3, size, size]},
        "preprocess": options.preprocess,
        "conversion_seconds": seconds,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()},
        HASHES: file_hashes(tmp),
    }
