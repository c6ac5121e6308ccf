"""Editing an artifact on purpose in a test: a planted fault stands for a converter that wrote a wrong or broken file,
so the manifest records the edited file's hash as that converter would have (otherwise the tamper check, not the
check under test, would refuse it first)."""

from __future__ import annotations

from pathlib import Path

from ppdeploy.artifacts import HASHES, file_hashes, load_manifest, write_manifest


def reseal(artifact_dir: str | Path) -> Path:
    """Record the artifact's current files in its manifest, as if it had been written this way."""
    artifact_dir = Path(artifact_dir)
    manifest = load_manifest(artifact_dir)
    manifest.pop("manifest_version", None)
    write_manifest(artifact_dir, {**manifest, HASHES: file_hashes(artifact_dir)})
    for record in artifact_dir.glob(".verified*"):
        record.unlink()
    return artifact_dir
