"""Artifact folders and their ``manifest.json``: what was converted, from what, with which tools."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from ppdeploy.errors import ArtifactError, DeployError, one_line
from ppdeploy.fsutil import atomic_write_text, file_stamp, sha256_file

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
TEST_BATCH = 2  # images in the test run every new artifact gets before it is trusted
HASHES = "sha256"  # manifest key: {file name: sha256} of every artifact file, taken when it was written
# Beside the manifest: {file name: [device, inode, size, mtime ns, ctime ns, sha256]} of files already verified,
# so a load re-hashes only files whose stamp changed (a read-only cache keeps the record in memory only).
VERIFIED = ".verified.json"


class TamperedArtifactError(ArtifactError):
    """An artifact file's content differs from the sha256 its manifest recorded when it was written."""


def tool_versions() -> dict[str, str | None]:
    """Installed versions of every tool that can shape an artifact (``None`` when absent): ppdeploy, each
    backend's distributions and each target's tools, as the registry declares them."""
    from importlib import metadata

    from ppdeploy.registry import tool_distributions

    versions: dict[str, str | None] = {}
    for tool, dists in {"ppdeploy": ("ppdeploy",), **tool_distributions()}.items():
        versions[tool] = None
        for dist in dists:
            try:
                versions[tool] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def write_manifest(artifact_dir: Path, manifest: dict[str, Any]) -> Path:
    data = {"manifest_version": MANIFEST_VERSION, **manifest}
    return atomic_write_text(Path(artifact_dir) / MANIFEST, json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_manifest(artifact_dir: str | Path) -> dict[str, Any]:
    """Read an artifact's manifest, or raise ``ArtifactError`` saying how to recreate it."""
    path = Path(artifact_dir) / MANIFEST
    if not path.is_file():
        raise ArtifactError(one_line(str(path), "missing: not a ppdeploy artifact folder",
                                     "convert the model again with 'deploy convert'"))
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(one_line(str(path), f"unreadable ({exc})", "delete the folder and reconvert")) from exc
    if not isinstance(data, dict) or "model_file" not in data:
        raise ArtifactError(one_line(str(path), "not a ppdeploy manifest", "delete the folder and reconvert"))
    return data


def artifact_model_file(artifact_dir: str | Path, manifest: dict[str, Any] | None = None) -> Path:
    """The artifact's main file (plus, for OpenVINO IR, its ``.bin``), checked to exist and, when the manifest
    records content hashes, to hold the bytes it was written with (:func:`verify_files`).

    Raises:
        ArtifactError: a file is missing.
        TamperedArtifactError: a file's content changed since it was written.
    """
    artifact_dir = Path(artifact_dir)
    manifest = manifest or load_manifest(artifact_dir)
    model_file = artifact_dir / manifest["model_file"]
    needed = [model_file] + ([model_file.with_suffix(".bin")] if model_file.suffix == ".xml" else [])
    for path in needed:
        if not path.is_file():
            raise ArtifactError(one_line(str(path), "missing from the artifact",
                                         "delete the folder and reconvert with 'deploy convert'"))
    verify_files(artifact_dir, manifest)
    return model_file


def file_hashes(artifact_dir: Path) -> dict[str, str]:
    """sha256 of every file of a freshly written artifact (not the manifest, not dot-files), for its manifest."""
    return {path.name: sha256_file(path) for path in sorted(Path(artifact_dir).iterdir())
            if path.is_file() and path.name != MANIFEST and not path.name.startswith(".")}


def verify_files(artifact_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Check every file against the sha256 the manifest recorded (manifests without hashes are not checked).

    Cheap when nothing changed: a file whose (device, inode, size, mtime, ctime) stamp was verified before, in
    this process or by an earlier one (``.verified.json``), is not read again; any other is hashed in full.

    Raises:
        ArtifactError: a listed file is missing.
        TamperedArtifactError: a file's content differs; the message names the file and how to rebuild it.
    """
    hashes = manifest.get(HASHES)
    if not isinstance(hashes, dict):
        return
    artifact_dir = Path(artifact_dir)
    record = _read_verified(artifact_dir)
    verified = {}
    for name, expected in sorted(hashes.items()):
        path = artifact_dir / name
        try:
            stamp = file_stamp(path)
        except OSError:
            raise ArtifactError(one_line(str(path), "missing from the artifact",
                                         "delete the folder and reconvert with 'deploy convert'")) from None
        verified[name] = [*stamp, expected]
        if record.get(name) == verified[name]:
            continue
        actual = sha256_file(path)  # memoised per stamp: a second load in this process reads nothing
        if actual != expected:
            raise TamperedArtifactError(one_line(
                str(path), f"content changed since it was written (sha256 {actual[:12]}..., the manifest "
                f"recorded {expected[:12]}...)", f"rebuild it: deploy convert {manifest.get('model_name', 'MODEL')} "
                f"--to {manifest.get('target', 'TARGET')} --force, or delete {artifact_dir} (the next run "
                "rebuilds it)"))
    if verified != record:
        with contextlib.suppress(OSError, DeployError):  # a read-only cache: remembered in this process only
            atomic_write_text(artifact_dir / VERIFIED, json.dumps(verified) + "\n")


def _read_verified(artifact_dir: Path) -> dict[str, list]:
    try:
        data = json.loads((artifact_dir / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_compatible(manifest: dict[str, Any], *, source_hash: str | None = None,
                     gpu: dict[str, str] | None = None) -> None:
    """Refuse an artifact that does not fit this machine or its source model.

    Args:
        manifest: the artifact's manifest.
        source_hash: the current hash of the source Paddle model, when known.
        gpu: ``{"name":..., "compute_capability":...}`` of the device an engine will run on.

    Raises:
        ArtifactError: one line naming what differs and telling to reconvert.
    """
    where = manifest.get("artifact_dir", "artifact")
    fix = f"reconvert: deploy convert {manifest.get('model_name', 'MODEL')} --to {manifest.get('target', 'TARGET')}"
    if source_hash and manifest.get("source_hash") and manifest["source_hash"] != source_hash:
        raise ArtifactError(one_line(where, "source model changed since conversion", fix))
    if manifest.get("backend") == "tensorrt":
        built_with = (manifest.get("tools") or {}).get("tensorrt")
        installed = tool_versions()["tensorrt"]
        if built_with != installed:
            raise ArtifactError(one_line(where, f"engine built with TensorRT {built_with}, installed {installed}",
                                         fix))
        if gpu is not None and manifest.get("gpu") != gpu:
            raise ArtifactError(one_line(where, f"engine built for {manifest.get('gpu')}, this GPU is {gpu}", fix))


def test_run(artifact_dir: str | Path, manifest: dict[str, Any]) -> tuple[int, ...]:
    """The neutral check every new artifact passes before it is trusted: load it with its backend's runtime (found
    in the registry, so no converter imports a runtime) and run a batch of random images; return the output shape.

    Raises:
        ConversionError: the artifact does not load or run, or the output is not finite ``[batch, classes]``
            probabilities.
    """
    import numpy as np

    from ppdeploy.errors import ConversionError, DeployError, first_line
    from ppdeploy.registry import get_backend

    record = get_backend(str(manifest["backend"]))
    where = str(artifact_model_file(artifact_dir, manifest))
    try:
        with record.runtime(artifact_dir, device=record.preferred_device) as runtime:
            # The model's own static dims win over the options' input size (a yaml may ask for another crop).
            wanted = [TEST_BATCH, *manifest["input_shape_range"]["max"][1:]]
            dims = [want if dim is None else dim for dim, want in zip(runtime.inputs[0].shape, wanted)]
            batch = np.random.default_rng(0).standard_normal([TEST_BATCH, *dims[1:]]).astype(np.float32)
            result = runtime.infer(batch)
    except DeployError as exc:
        raise ConversionError(one_line(where, f"test run failed ({exc})", "report it with the source model")) from exc
    except Exception as exc:  # a library failure becomes one actionable line
        raise ConversionError(one_line(where, f"test run failed ({first_line(exc)})",
                                       "report it with the source model attached")) from exc
    if result.ndim != 2 or result.shape[0] != TEST_BATCH or not np.isfinite(result).all():
        raise ConversionError(one_line(where, f"test run gave shape {result.shape}, finite="
                                       f"{bool(np.isfinite(result).all())}", f"expected finite [{TEST_BATCH}, classes]"))
    return tuple(int(d) for d in result.shape)
