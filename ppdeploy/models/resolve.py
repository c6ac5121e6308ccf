"""Turn what the user typed (a folder, or a zoo name plus options) into one Paddle model on disk."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ppdeploy import progress
from ppdeploy.errors import DeployError, ModelNotFoundError, one_line
from ppdeploy.fsutil import cache_home, file_lock, sha256_file
from ppdeploy.models.fetch import fetch_model
from ppdeploy.models.paddle_files import PaddleModel, find_paddle_model
from ppdeploy.models.zoo import MODELS, ModelSpec, get_model

if TYPE_CHECKING:
    from ppdeploy.samples import ImageSet

FORMATS = ("json", "pdmodel")
# Files that may name the zoo entry a folder was made from: ours (export, fetch) first.
_RECORDS = ("export.json", "fetch.json")
# The cache folders resolve_model itself creates: <Name>-official, -synthetic-<fmt>, -weights-<hash>-<fmt>.
_CACHE_FOLDER = re.compile(r"^(.+?)-(?:official|synthetic(?:-r\d+)?-\w+|weights-[0-9a-f]+-\w+)$")
_warned_synthetic = False
_HASHES: dict[tuple, str] = {}


@dataclass(frozen=True)
class ResolvedModel:
    """A Paddle inference model ready to convert or run.

    Attributes:
        spec: the zoo entry it is (or was recognised as), or ``None`` for a foreign folder.
        paddle: its files on disk.
        synthetic: True when its weights are seeded random numbers (predictions are meaningless).
        key: a folder-safe name for caches derived from it, e.g. ``ResNet50-synthetic-r2-json``,
            ``ResNet50-official`` or ``dir-<hash of the model files>``.
    """

    spec: ModelSpec | None
    paddle: PaddleModel
    synthetic: bool
    key: str

    @property
    def name(self) -> str:
        """The zoo name when known, else the folder's name."""
        return self.spec.name if self.spec else self.paddle.directory.name


def resolve_model(model: str | Path, *, synthetic: bool = False, fmt: str = "json", weights: str | Path | None = None,
                  progress: bool = True) -> ResolvedModel:
    """Find or make the Paddle inference model that ``model`` names.

    Args:
        model: a folder holding ``inference.json``/``inference.pdmodel`` + ``inference.pdiparams``, or a zoo name.
        synthetic: for a zoo name, export the architecture with seeded random weights instead of downloading.
        fmt: ``"json"`` (Paddle 3 PIR) or ``"pdmodel"`` (legacy) for models this function exports.
        weights: for a zoo name, a ``.pdparams`` file to export the architecture with.
        progress: show a progress bar while downloading.

    Raises:
        ModelNotFoundError: neither a folder nor a zoo name (lists the valid names), or files are missing.
        DownloadError: the official archive cannot be fetched (says what to do offline).
        DeployError: contradictory options.
    """
    if fmt not in FORMATS:
        raise DeployError(one_line(f"format '{fmt}'", "unknown", "choose one of: " + ", ".join(FORMATS)))
    if synthetic and weights is not None:
        raise DeployError(one_line("--synthetic and --weights", "both given", "pass only one of them"))
    directory = _model_folder(model)
    if directory is not None:
        return resolve_directory(directory, synthetic=synthetic, weights=weights)
    spec = _zoo_entry(str(model))
    if synthetic:
        return resolve_synthetic(spec, fmt=fmt)
    if weights is not None:
        return resolve_weights(spec, Path(weights), fmt=fmt)
    directory = fetch_model(spec, progress=progress)
    return ResolvedModel(spec, find_paddle_model(directory), synthetic=False, key=f"{spec.name}-official")


def _model_folder(model: str | Path) -> Path | None:
    """The folder ``model`` points at (a folder, or its ``inference.*`` model file); ``None`` for a bare name.

    Raises:
        ModelNotFoundError: ``model`` is a path but not a model folder.
    """
    path = Path(model)
    if path.is_dir():
        return path
    if path.is_file() and path.name in {f"inference.{ext}" for ext in FORMATS}:
        return path.parent
    if path.exists() or isinstance(model, Path) or "/" in str(model):
        raise ModelNotFoundError(one_line(str(model), "not a model folder",
                                          "give a folder holding inference.json or inference.pdmodel plus "
                                          "inference.pdiparams, or a zoo name such as ResNet50"))
    return None


def resolve_directory(directory: Path, *, synthetic: bool = False, weights: str | Path | None = None) -> ResolvedModel:
    """A model folder given by path; its zoo entry is recognised from its records or its name."""
    if synthetic or weights is not None:
        raise DeployError(one_line(str(directory), "--synthetic/--weights apply to zoo names, not to a folder",
                                   "drop the option, or give a zoo name such as ResNet50"))
    paddle = find_paddle_model(directory)
    record = _read_record(directory)
    spec = spec_for_directory(directory, record)
    synthetic_weights = bool(record.get("synthetic")) or "-synthetic-" in directory.name
    return ResolvedModel(spec, paddle, synthetic=synthetic_weights,
                         key=f"dir-{_content_hash(paddle)[:12]}")


def resolve_synthetic(spec: ModelSpec, *, fmt: str = "json") -> ResolvedModel:
    """The architecture of ``spec`` with seeded random weights, exported once into the cache."""
    warn_synthetic()
    from ppdeploy.models.export import SYNTHETIC_RECIPE

    key = f"{spec.name}-synthetic-{SYNTHETIC_RECIPE}-{fmt}"
    paddle = _export_cached(spec, key, fmt=fmt, synthetic=True)
    return ResolvedModel(spec, paddle, synthetic=True, key=key)


def resolve_weights(spec: ModelSpec, weights: Path, *, fmt: str = "json") -> ResolvedModel:
    """The architecture of ``spec`` with the weights in ``weights``, exported once per weights file content."""
    if not weights.is_file():
        raise ModelNotFoundError(one_line(str(weights), "weights file not found",
                                          f"give the path of a {spec.name} .pdparams file"))
    key = f"{spec.name}-weights-{sha256_file(weights)[:12]}-{fmt}"
    paddle = _export_cached(spec, key, fmt=fmt, weights=weights)
    return ResolvedModel(spec, paddle, synthetic=False, key=key)


def spec_for_directory(directory: Path, record: dict | None = None) -> ModelSpec | None:
    """The zoo entry a folder holds, from its ``export.json``/``fetch.json`` or its name, else ``None``.

    Names tried: the record's model name, the folder name, the folder name without ``_infer`` (official
    archive layout), and our own cache folder names (``ResNet50-synthetic-r2-json``); official archive stems
    (``Fix_ResNet50_vd_ssld_v2``) count too. Other suffixes are not guessed at: a fine-tuned
    ``ResNet50-flowers`` must not pass for the ImageNet model.
    """
    record = _read_record(directory) if record is None else record
    cache_name = _CACHE_FOLDER.match(directory.name)
    candidates = [_record_name(record), directory.name, directory.name.removesuffix("_infer"),
                  cache_name.group(1) if cache_name else None]
    lookup = _zoo_lookup()
    for candidate in filter(None, candidates):
        if spec := lookup.get(candidate.lower()):
            return spec
    return None


def default_shape_set() -> ImageSet:
    """The photos synthetic weights are shaped by unless the caller picks others: the built-in ``shape`` set.

    Part of what a synthetic export's cache key stands for, with the recipe: change it only with the recipe.
    """
    from ppdeploy.models.synthetic import SHAPE_IMAGES
    from ppdeploy.samples import builtin_set

    return builtin_set("shape", SHAPE_IMAGES)


def warn_synthetic() -> None:
    """Say once per process, on stderr, that synthetic weights give meaningless predictions."""
    global _warned_synthetic
    if _warned_synthetic:
        return
    _warned_synthetic = True
    progress.warn("synthetic weights (seeded random numbers): predictions are meaningless. Use them to test "
                  "conversion and backend parity only.")


def _zoo_lookup() -> dict[str, ModelSpec]:
    """Lower-cased zoo names and official archive stems, each to its entry."""
    lookup: dict[str, ModelSpec] = {}
    for spec in MODELS.values():
        lookup[spec.name.lower()] = spec
        lookup.setdefault((spec.archive or spec.name).lower(), spec)
    return lookup


def _zoo_entry(name: str) -> ModelSpec:
    try:
        return get_model(name)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(one_line(f"model '{name}'", "neither a folder nor a zoo name",
                                          "give a folder holding inference.json or inference.pdmodel plus "
                                          "inference.pdiparams, or one of: " + ", ".join(MODELS))) from exc


def _export_cached(spec: ModelSpec, key: str, *, fmt: str, synthetic: bool = False,
                   weights: Path | None = None) -> PaddleModel:
    """Export ``spec`` into ``cache_home()/models/<key>`` unless a previous run already did."""
    out_dir = cache_home() / "models" / key
    existing = _find_or_none(out_dir)
    if existing:
        return existing
    with file_lock(cache_home() / "locks" / f"{key}.lock"):
        existing = _find_or_none(out_dir)  # another process may have exported it meanwhile
        if existing:
            return existing
        import time

        from ppdeploy.models.export import export_model

        what = "synthetic weights" if synthetic else f"weights {weights}"
        progress.say(f"Exporting {spec.name} with {what} ({fmt}) to the cache (once; 10-60 s) ...")
        started = time.perf_counter()
        export_model(spec, out_dir, weights=weights, synthetic=synthetic, fmt=fmt,
                     shape_images=default_shape_set() if synthetic else None)
        progress.say(f"Exported {spec.name} in {time.perf_counter() - started:.1f} s")
    return find_paddle_model(out_dir)


def _content_hash(paddle: PaddleModel) -> str:
    """``paddle.content_hash()``, memoised per (path, size, mtime) so resolving twice does not rehash."""
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in (paddle.model_file, paddle.params_file))
    if stamp not in _HASHES:
        _HASHES[stamp] = paddle.content_hash()
    return _HASHES[stamp]


def _find_or_none(directory: Path) -> PaddleModel | None:
    try:
        return find_paddle_model(directory)
    except ModelNotFoundError:
        return None


def _read_record(directory: Path) -> dict:
    for name in _RECORDS:
        path = directory / name
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                return data
    return {}


def _record_name(record: dict) -> str | None:
    nested = record.get("spec")
    candidates = [record.get("model"), record.get("model_name"), record.get("name"),
                  nested.get("name") if isinstance(nested, dict) else None]
    return next((value for value in candidates if isinstance(value, str) and value), None)
