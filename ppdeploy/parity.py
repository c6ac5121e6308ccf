"""Check every backend against native Paddle Inference (fp32, CPU) on the same preprocessed held-out photos.

The judge photos (``ppdeploy.samples``, role ``judge``, or the user's ``--images``) never shaped synthetic weights
nor calibrated int8; every report names each set it rests on and whether any of them overlap. Metrics are computed
on the softmax outputs and are classification-aware: the largest probability difference, the total variation
distance per image (meaningful for peaked and flat outputs alike), the shift of the reference's top-1/top-2
log-margin, and top-1 agreement on the images whose margin exceeds what the precision's error can explain, with
near-tie flips listed apart. The profiles live in ``ppdeploy.profiles`` (docs/parity.md says what they rest on).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np

from ppdeploy.errors import DeployError, one_line
from ppdeploy.profiles import LOG_FLOOR, PROFILES, Profile  # noqa: F401  (re-exported)
from ppdeploy.runtimes.base import runs_as as describe_runtime

Log = Callable[[str], None]
Transform = Callable[[np.ndarray], np.ndarray]


@dataclass
class Metrics:
    """How one backend's outputs compare with the reference's.

    ``flipped`` lists top-1 changes on decisive images (errors); ``near_ties`` those on images whose reference
    margin is within the profile's ``tie_margin`` (benign: the precision's own error explains them).
    """

    images: int
    max_abs: float
    mean_abs: float
    max_tv: float
    mean_tv: float
    max_margin_shift: float
    min_cosine: float
    top1_agreement: float
    decisive: int
    decisive_top1: float
    top5_overlap: float
    non_finite: int
    tie_margin: float = 0.0
    flipped: list[dict] = field(default_factory=list)
    near_ties: list[dict] = field(default_factory=list)

    def required(self) -> dict[str, float]:
        """The loosest tolerances this result would have needed to pass (as Polygraphy prints them)."""
        return {"atol": self.max_abs, "max_tv": self.max_tv, "tie_margin": self.max_margin_shift,
                "min_top1": self.decisive_top1}


@dataclass
class BackendResult:
    """One row of the parity matrix.

    ``calibration_overlap`` is True when the artifact's calibration images share a source picture with the judge
    images (then the verdict is marked, and ``--strict`` fails it); ``None`` when the artifact was not calibrated
    or does not say on what.
    """

    backend: str
    status: str  # "pass", "fail", "skipped" or "error"
    profile: str | None = None
    metrics: Metrics | None = None
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    calibration_set: dict[str, Any] | None = None
    calibration_overlap: bool | None = None

    @property
    def passed(self) -> bool:
        return self.status == "pass"


@dataclass
class ParityReport:
    """The whole matrix, with the provenance of every image set it rests on.

    ``image_sets`` holds the judge set and what shaped the model (``shape``); ``shape_overlap`` says whether those
    two share a source picture (``None``: unknown, e.g. trained weights).
    """

    model: str
    reference: str
    images: int
    results: list[BackendResult]
    requested: list[str] = field(default_factory=list)
    image_sets: dict[str, Any] = field(default_factory=dict)
    shape_overlap: bool | None = None
    strict: bool = False

    @property
    def any_overlap(self) -> bool:
        return bool(self.shape_overlap) or any(r.calibration_overlap for r in self.results)

    @property
    def passed(self) -> bool:
        """True when every run backend passed and every explicitly requested one ran (and, strict, no overlap)."""
        ran_ok = all(r.status in ("pass", "skipped") for r in self.results)
        requested_skipped = [r for r in self.results if r.status == "skipped" and r.backend in self.requested]
        return ran_ok and not requested_skipped and not (self.strict and self.any_overlap)

    def to_dict(self) -> dict[str, Any]:
        sets = {role: _summary(record) for role, record in self.image_sets.items()}
        results = []
        for result in self.results:
            row = dataclasses.asdict(result)
            row["calibration_set"] = _summary(result.calibration_set) if result.calibration_set else None
            results.append(row)
        return {"model": self.model, "reference": self.reference, "images": self.images, "passed": self.passed,
                "strict": self.strict, "image_sets": sets, "shape_overlap": self.shape_overlap,
                "any_overlap": self.any_overlap, "results": results}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_junit(self) -> str:
        """JUnit XML: one testcase per backend (skipped ones marked skipped, failures carry the reasons), the
        image sets' provenance and overlap as suite properties."""
        suite = ElementTree.Element("testsuite", name=f"parity.{self.model}", tests=str(len(self.results)),
                                    failures=str(sum(r.status == "fail" for r in self.results)),
                                    errors=str(sum(r.status == "error" for r in self.results)),
                                    skipped=str(sum(r.status == "skipped" for r in self.results)))
        properties = ElementTree.SubElement(suite, "properties")
        for role, record in self.image_sets.items():
            ElementTree.SubElement(properties, "property", name=f"{role}_set",
                                   value=f"{record.get('provenance')} sha256={record.get('sha256')}")
        ElementTree.SubElement(properties, "property", name="shape_overlap", value=str(self.shape_overlap).lower())
        for result in self.results:
            case = ElementTree.SubElement(suite, "testcase", classname=f"parity.{self.model}", name=result.backend,
                                          time=f"{result.seconds:.3f}")
            if result.calibration_set:
                props = ElementTree.SubElement(case, "properties")
                ElementTree.SubElement(props, "property", name="calibration_set",
                                       value=f"{result.calibration_set.get('provenance')} "
                                             f"sha256={result.calibration_set.get('sha256')}")
                ElementTree.SubElement(props, "property", name="calibration_overlap",
                                       value=str(result.calibration_overlap).lower())
            tag = {"fail": "failure", "error": "error", "skipped": "skipped"}.get(result.status)
            if tag:
                ElementTree.SubElement(case, tag, message="; ".join(result.reasons))
        return ElementTree.tostring(suite, encoding="unicode")

    def render(self) -> str:
        """The matrix as a text table (rows = backend/precision, columns = metrics, pass/fail marks)."""
        head = ["backend", "verdict", "profile", "runs as", "max abs", "max TV", "mean TV", "margin shift",
                "min cos", "top-1 decisive", "flips", "ties", "time s"]
        rows = [head] + [_row(r) for r in self.results]
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = [f"Parity of {self.model} against {self.reference} on {self.images} images"]
        for role, record in self.image_sets.items():
            lines.append(f"  {role} set: {record.get('provenance')} (sha256 {str(record.get('sha256'))[:12]})")
        if self.shape_overlap:
            lines.append("  WARNING: the judge images overlap the images that shaped the model")
        lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        for result in self.results:
            for reason in result.reasons:
                lines.append(f"  {result.backend}: {reason}")
            for note in result.notes:
                lines.append(f"  {result.backend}: note: {note}")
            for flip in (result.metrics.flipped if result.metrics else [])[:5]:
                lines.append(f"  {result.backend}: top-1 flipped on {flip['filename']}: {flip['reference']} -> "
                             f"{flip['backend']} (reference log-margin {flip['reference_margin']:.3f})")
            if result.metrics and result.metrics.near_ties:
                margins = ", ".join(f"{t['reference_margin']:.3f}" for t in result.metrics.near_ties[:5])
                lines.append(f"  {result.backend}: {len(result.metrics.near_ties)} near-tie flips (reference "
                             f"log-margin <= {result.metrics.tie_margin:g}: {margins})")
        verdict = "PASS" if self.passed else "FAIL"
        if self.any_overlap and self.passed:
            verdict += " (on overlapping data: not evidence; --strict fails it)"
        lines.append(verdict)
        return "\n".join(lines)


def _summary(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """A set record without its per-image fingerprints (they stay in the manifests)."""
    if record is None:
        return None
    return {key: value for key, value in record.items() if key != "fingerprints"}


def _row(result: BackendResult) -> list[str]:
    mark = {"pass": "PASS", "fail": "FAIL", "skipped": "skip", "error": "ERROR"}[result.status]
    if result.status == "pass" and result.calibration_overlap:
        mark = "PASS*"
    runs_as = describe_runtime(result.details) if result.details else ""
    m = result.metrics
    if m is None:
        return [result.backend, mark, result.profile or "-", runs_as] + ["-"] * 8 + [f"{result.seconds:.1f}"]
    return [result.backend, mark, result.profile or "-", runs_as, f"{m.max_abs:.2e}", f"{m.max_tv:.2e}",
            f"{m.mean_tv:.2e}", f"{m.max_margin_shift:.2e}", f"{m.min_cosine:.6f}",
            f"{m.decisive_top1:.2%} of {m.decisive}", str(len(m.flipped)), str(len(m.near_ties)),
            f"{result.seconds:.1f}"]


def compare(reference: np.ndarray, output: np.ndarray, filenames: Sequence[str], tie_margin: float = 0.0) -> Metrics:
    """Compare two [N, C] probability arrays image by image; flips within ``tie_margin`` count as near-ties."""
    reference = reference.astype(np.float64)
    output = output.astype(np.float64)
    non_finite = int((~np.isfinite(output)).sum())
    output = np.nan_to_num(output, nan=0.0, posinf=0.0, neginf=0.0)
    diff = np.abs(output - reference)
    tv = 0.5 * diff.sum(axis=1)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(output, axis=1)
    cosine = np.where(norms > 0, (reference * output).sum(axis=1) / np.maximum(norms, 1e-30), 0.0)
    ref_order = np.argsort(-reference, axis=1)
    out_order = np.argsort(-output, axis=1)
    rows = np.arange(len(reference))
    first, second = ref_order[:, 0], ref_order[:, 1]
    margin = _log_ratio(reference, rows, first, second)
    shift = np.abs(_log_ratio(output, rows, first, second) - margin)
    decisive = margin > tie_margin
    agree = first == out_order[:, 0]
    top5 = [len(set(a[:5]) & set(b[:5])) / 5 for a, b in zip(ref_order, out_order)]
    flipped, near_ties = [], []
    for i in np.nonzero(~agree)[0]:
        flip = {"filename": filenames[i], "reference": int(first[i]), "backend": int(out_order[i, 0]),
                "reference_margin": float(margin[i]), "reference_top1": float(reference[i, first[i]])}
        (flipped if decisive[i] else near_ties).append(flip)
    return Metrics(images=len(reference), max_abs=float(diff.max()), mean_abs=float(diff.mean()),
                   max_tv=float(tv.max()), mean_tv=float(tv.mean()), max_margin_shift=float(shift.max()),
                   min_cosine=float(cosine.min()), top1_agreement=float(agree.mean()), decisive=int(decisive.sum()),
                   decisive_top1=float(agree[decisive].mean()) if decisive.any() else 1.0,
                   top5_overlap=float(np.mean(top5)), non_finite=non_finite, tie_margin=tie_margin,
                   flipped=flipped, near_ties=near_ties)


def _log_ratio(probs: np.ndarray, rows: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """log(p[first] / p[second]) per row, with probabilities floored at :data:`LOG_FLOOR`."""
    return np.log(np.maximum(probs[rows, first], LOG_FLOOR)) - np.log(np.maximum(probs[rows, second], LOG_FLOOR))


def judge(metrics: Metrics, profile: Profile) -> tuple[list[str], list[str]]:
    """(reasons the metrics fail the profile, notes on what the verdict rests on); no reasons: pass."""
    reasons, notes = [], []
    if metrics.non_finite:
        reasons.append(f"{metrics.non_finite} NaN/Inf values in the outputs")
    if profile.max_abs is not None and metrics.max_abs > profile.max_abs:
        reasons.append(f"max abs diff {metrics.max_abs:.3e} > {profile.max_abs:.0e}")
    if profile.max_tv is not None and metrics.max_tv > profile.max_tv:
        reasons.append(f"max total variation {metrics.max_tv:.3e} > {profile.max_tv:g}")
    if profile.max_mean_tv is not None and metrics.mean_tv > profile.max_mean_tv:
        reasons.append(f"mean total variation {metrics.mean_tv:.3e} > {profile.max_mean_tv:g}")
    if metrics.decisive >= profile.min_decisive:
        if metrics.decisive_top1 < profile.min_top1:
            reasons.append(f"top-1 agreement on decisive images {metrics.decisive_top1:.2%} < {profile.min_top1:.0%}"
                           f" ({len(metrics.flipped)} flips with reference margin > {profile.tie_margin:g})")
    else:
        notes.append(f"only {metrics.decisive} of {metrics.images} images are decisive (reference margin > "
                     f"{profile.tie_margin:g}): top-1 not judged, the verdict rests on the output-error criteria")
    if metrics.images < profile.min_images:
        reasons.append(f"only {metrics.images} images; the {profile.name} profile needs >= {profile.min_images}")
    return reasons, notes


def run_batches(runtime: Any, batches: Sequence[np.ndarray], transform: Transform | None = None) -> np.ndarray:
    """Run every batch through ``runtime`` (optionally transformed first) and stack the outputs."""
    outputs = [runtime.infer(np.ascontiguousarray(transform(b) if transform else b)) for b in batches]
    return np.concatenate(outputs, axis=0)


def rebatch(batches: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
    """The same images in batches of exactly ``size`` (the last one padded by repeating its last image)."""
    tensor = np.concatenate(batches, axis=0)
    pad = (-len(tensor)) % size
    if pad:
        tensor = np.concatenate([tensor, np.repeat(tensor[-1:], pad, axis=0)], axis=0)
    return [tensor[i:i + size] for i in range(0, len(tensor), size)]


FAST_DECODE = "paddle+fast-decode"  # the reference model fed reduced-size JPEG decoding


class ParityChecker:
    """Holds the reference outputs of one model on one judge set; checks any runtime against them.

    Args:
        model: a resolved model (``ppdeploy.models.resolve.resolve_model``).
        judge: the judge images (``ppdeploy.samples.ImageSet``), never the ones that shaped or calibrated.
        batch_size: images per batch (every backend sees the same batches).
        threads: threads for every backend.
    """

    def __init__(self, model: Any, judge: Any, *, batch_size: int = 8, threads: int | None = None) -> None:
        from ppdeploy.preprocess import PreprocessConfig, preprocess_batch
        from ppdeploy.registry import PADDLE, runtime_class

        self.model = model
        self.judge = judge
        self.judge_record = judge.record()
        self.filenames = list(judge.names)
        self.threads = threads
        default = model.spec.preprocess_config() if model.spec else PreprocessConfig()
        self.preprocess = PreprocessConfig.for_model_dir(model.paddle.directory, default)
        tensor = preprocess_batch(list(judge.images), self.preprocess)
        self.batches = [tensor[i:i + batch_size] for i in range(0, len(tensor), batch_size)]
        with runtime_class(PADDLE)(model.paddle.directory, threads=threads) as reference:
            self.reference = run_batches(reference, self.batches)
        self.reference_name = f"Paddle Inference fp32 CPU ({model.paddle.fmt})"
        self.shape_set = shape_record(model)
        self.outputs: dict[str, np.ndarray] = {}  # each checked row's raw outputs, for further analysis

    def image_sets(self) -> tuple[dict[str, Any], bool | None]:
        """The set records a report names, and whether the judge set overlaps the shape set (None: unknown)."""
        from ppdeploy.samples import overlap

        sets = {"judge": self.judge_record, "shape": self.shape_set}
        if "sources" not in self.shape_set:
            return sets, None
        return sets, overlap(self.judge_record, self.shape_set)["overlap"]

    def check(self, label: str, runtime: Any, profile: Profile, *, transform: Transform | None = None,
              calibration: dict[str, Any] | None = None, batch: int | None = None,
              inputs: list[np.ndarray] | None = None) -> BackendResult:
        """Run ``runtime`` on the reference batches and judge it against ``profile``.

        Args:
            calibration: the set record the artifact was calibrated on (its manifest's ``calibration_set``).
            batch: the runtime's fixed batch size, if it has one (the images are re-batched to fit).
            inputs: other batches of the same images to run instead (another way of decoding them).
        """
        from ppdeploy.samples import overlap

        started = time.perf_counter()
        batches = inputs or self.batches
        batches = batches if batch is None else rebatch(batches, batch)
        output = run_batches(runtime, batches, transform)[:len(self.reference)]
        self.outputs[label] = output
        metrics = compare(self.reference, output, self.filenames, profile.tie_margin)
        reasons, notes = judge(metrics, profile)
        shared = overlap(self.judge_record, calibration)["overlap"] if calibration else None
        if shared:
            notes.append("the judge images overlap the calibration images: this verdict is not evidence")
        return BackendResult(label, "fail" if reasons else "pass", profile.name, metrics, reasons,
                             dict(runtime.details), round(time.perf_counter() - started, 3), notes, calibration,
                             shared)

    def check_backend(self, name: str, *, profile: Profile | None = None, log: Log | None = None) -> BackendResult:
        """Convert (cached), load and check one backend/target; unavailable ones come back ``skipped``."""
        from ppdeploy.artifacts import load_manifest
        from ppdeploy.converters.pipeline import convert_model, default_options
        from ppdeploy.registry import resolve

        started = time.perf_counter()
        choice = resolve(name)
        ok, reason = choice.availability()
        if not ok:
            return BackendResult(name, "skipped", reasons=[reason])
        calibration = None
        if choice.target is None:
            artifact = self.model.paddle.directory
        else:
            try:
                artifact = convert_model(self.model, choice.target, options=default_options(self.model, choice.target),
                                         log=log)
            except DeployError as exc:
                return BackendResult(name, "error", reasons=[str(exc)], seconds=time.perf_counter() - started)
            calibration = load_manifest(artifact).get("calibration_set")
        chosen = profile or PROFILES[choice.profile]
        try:
            with choice.runtime(artifact, threads=self.threads) as runtime:
                result = self.check(name, runtime, chosen, calibration=calibration)
        except DeployError as exc:
            return BackendResult(name, "error", chosen.name, reasons=[str(exc)], seconds=time.perf_counter() - started)
        result.seconds = round(time.perf_counter() - started, 3)
        return result


    def check_fast_decode(self, profile: Profile | None = None) -> BackendResult:
        """What ``--fast-decode`` costs: the reference model on the judge files decoded at reduced size (libjpeg DCT
        scaling, then PaddleClas's resize and crop) against the same model on exact decoding, judged by the int8
        profile (agreement-based) unless another is given. Needs judge photos that are files (``--images``)."""
        from ppdeploy.classifier import load_input
        from ppdeploy.registry import PADDLE, runtime_class

        if not all(Path(name).is_file() for name in self.filenames):
            raise DeployError(one_line("--fast-decode", "needs judge photos that are files",
                                       "give --images DIR (e.g. 'deploy samples --corpus phone -o DIR')"))
        items = [load_input(Path(name), self.preprocess, self.preprocess.resize_short) for name in self.filenames]
        failed = next((item.error for item in items if item.error), None)
        if failed:
            raise DeployError(failed)
        tensor = np.stack([item.tensor for item in items])
        size = len(self.batches[0])
        inputs = [tensor[i:i + size] for i in range(0, len(tensor), size)]
        with runtime_class(PADDLE)(self.model.paddle.directory, threads=self.threads) as reference:
            result = self.check(FAST_DECODE, reference, profile or PROFILES["int8"], inputs=inputs)
        result.details = {**result.details, "decode": f"reduced-size JPEG decoding (resize_short "
                                                      f"{self.preprocess.resize_short})"}
        return result

    def check_server(self, url: str, *, backend: str | None = None,
                     profiles: dict[str, Profile] | None = None) -> BackendResult:
        """Judge a running server (Open Inference Protocol): the reference batches go through ``POST
        /v2/models/M/infer`` as FP32 tensors; the answers are judged by the profile of the backend it serves."""
        from ppdeploy.serving.remote import RemoteRuntime

        with RemoteRuntime(url, backend=backend) as remote:
            profile = profile_for(remote.backend, profiles or PROFILES)
            return self.check(f"server {remote.backend} @ {url}", remote, profile)

    def check_artifact(self, path: str | Path, *, profile: Profile | None = None) -> BackendResult:
        """Judge a model file made by any tool (ONNX, OpenVINO IR, TensorRT engine), no manifest needed.

        The profile follows what the file really computes (``ppdeploy.foreign.inspect_artifact``), unless given.
        """
        import tempfile

        from ppdeploy.foreign import adopt_artifact, inspect_artifact
        from ppdeploy.registry import runtime_class

        started = time.perf_counter()
        info = inspect_artifact(path)  # a bad file raises here, before any run
        label = f"{info.backend} file {info.model_file.name}"
        ok, reason = runtime_class(info.backend).availability()
        if not ok:
            return BackendResult(label, "skipped", reasons=[reason])
        chosen = profile or PROFILES[info.precision]
        with tempfile.TemporaryDirectory(prefix="ppdeploy-artifact-") as work:
            folder = adopt_artifact(info, Path(work))
            with runtime_class(info.backend)(folder, threads=self.threads) as runtime:
                result = self.check(label, runtime, chosen, batch=info.input_shape[0] if info.input_shape else None)
        result.details["file_precision"] = info.precision
        result.details["precision_evidence"] = str(info.evidence.get("decided_by", ""))
        if info.precision == "int8":
            result.notes.append("calibration images unknown (a file made elsewhere): overlap with the judge images "
                                "cannot be checked")
        result.seconds = round(time.perf_counter() - started, 3)
        return result


def shape_record(model: Any) -> dict[str, Any]:
    """What shaped the model's weights: the synthetic export's shape set, or what is known of trained weights."""
    record_file = Path(model.paddle.directory) / "export.json"
    if record_file.is_file():
        try:
            record = json.loads(record_file.read_text())
        except (OSError, ValueError):
            record = {}
        if record.get("shape_set"):
            return record["shape_set"]
        if record.get("synthetic"):
            return {"role": "shape", "provenance": "synthetic weights of an older recipe (shaping photos not "
                    "recorded)"}
    return {"role": "shape", "provenance": "trained weights: their training data (ImageNet for PaddleClas) is "
            "not known to ppdeploy"}


def expand_backends(spec: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """``all`` or a comma list → (backends to run, backends the user named explicitly)."""
    from ppdeploy.registry import matrix_names

    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if names == ["all"]:
        return matrix_names(), []
    return names, names


def parity(model: str | Path = "ResNet50", backends: str | Sequence[str] = "all", *, synthetic: bool = False,
           fmt: str = "json", images: str | Path | None = None, count: int | None = None, batch_size: int = 8,
           threads: int | None = None, overrides: dict[str, Profile] | None = None, strict: bool = False,
           artifact: str | Path | None = None, profile: str | None = None, fast_decode: bool = False,
           server: str | None = None, server_backend: str | None = None, log: Log | None = None) -> ParityReport:
    """Check ``backends`` of ``model`` against Paddle Inference and return the report.

    Args:
        model: zoo name or Paddle model folder.
        backends: ``all`` or names (``paddle``, ``onnx``, ``openvino-int8``, ...).
        synthetic: use seeded synthetic weights for a zoo name.
        fmt: Paddle format of a synthetic export.
        images: a folder/glob of the user's judge images; default: the built-in judge photos.
        count: how many built-in judge images (default 120), or at most how many of the user's.
        batch_size: images per batch.
        threads: threads for every backend.
        overrides: profile per precision name replacing the defaults (``--atol`` and friends).
        strict: a verdict on judge images that overlap the shaping or calibration images fails.
        artifact: a model file made by any tool (ONNX, OpenVINO IR, TensorRT engine) to judge, alone unless
            ``backends`` names others too.
        profile: judge ``artifact`` by this profile instead of the one its arithmetic calls for.
        fast_decode: add a row for ``--fast-decode`` (reduced-size JPEG decoding) on the reference model.
        server: judge a running server at this URL through the Open Inference Protocol (``server_backend``: the
            backend it serves, when it is not ``deploy serve``, which says so itself).
        log: progress lines.
    """
    from ppdeploy.models.resolve import resolve_model
    from ppdeploy.samples import image_set

    if profile is not None and profile not in PROFILES:
        raise DeployError(one_line(f"--profile {profile}", "unknown", "choose one of: " + ", ".join(PROFILES)))
    names, requested = expand_backends(backends) if backends else ([], [])
    if artifact is not None:
        from ppdeploy.foreign import inspect_artifact

        inspect_artifact(artifact)  # a bad file fails before the reference runs
    judge_set = image_set("judge", images, count)  # cheap checks (the user's folder decodes) before any export
    resolved = resolve_model(model, synthetic=synthetic, fmt=fmt)
    checker = ParityChecker(resolved, judge_set, batch_size=batch_size, threads=threads)
    profiles = {**PROFILES, **(overrides or {})}
    results = []
    if artifact is not None:
        if log:
            log(f"parity: {artifact} ...")
        chosen = profiles[profile] if profile else None
        if chosen is None:
            from ppdeploy.foreign import inspect_artifact

            chosen = profiles[inspect_artifact(artifact).precision]
        results.append(checker.check_artifact(artifact, profile=chosen))
        requested = [results[-1].backend, *requested]
    for name in names:
        if log:
            log(f"parity: {name} ...")
        results.append(checker.check_backend(name, profile=profile_for(name, profiles), log=log))
    if server:
        if log:
            log(f"parity: the server at {server} ...")
        results.append(checker.check_server(server, backend=server_backend, profiles=profiles))
        requested = [results[-1].backend, *requested]
    if fast_decode:
        if log:
            log(f"parity: {FAST_DECODE} ...")
        results.append(checker.check_fast_decode(profiles["int8"]))
        requested = [FAST_DECODE, *requested]
    return finish_report(checker, results, requested, strict)


def finish_report(checker: ParityChecker, results: list[BackendResult], requested: list[str],
                  strict: bool) -> ParityReport:
    """The report over ``results``; with ``strict``, a verdict on overlapping data becomes a failure."""
    sets, shape_overlap = checker.image_sets()
    if strict:
        for result in results:
            if result.calibration_overlap and result.status == "pass":
                result.status = "fail"
                result.reasons.append("--strict: judged on images that overlap its calibration images")
    return ParityReport(checker.model.name, checker.reference_name, len(checker.filenames), results, requested,
                        sets, shape_overlap, strict)


def profile_for(name: str, profiles: dict[str, Profile]) -> Profile:
    """The tolerance profile a backend, target or variant ``name`` is judged by: the one of what it computes in."""
    from ppdeploy.registry import resolve

    return profiles[resolve(name).profile]
