"""Check every backend against native Paddle Inference (fp32, CPU) on the same preprocessed real images.

Metrics are computed on the softmax outputs and are classification-aware: besides element-wise differences,
top-1 agreement, top-5 overlap and the list of images whose top-1 class flipped (with the reference's
top-1/top-2 margin, which tells a near-tie from a real error).
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

from ppdeploy.errors import DeployError

Log = Callable[[str], None]
Transform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Profile:
    """Pass criteria for one precision. ``None`` disables a criterion.

    Attributes:
        name: profile name (``fp32``, ``fp16``, ``bf16``, ``int8``).
        max_abs: largest allowed absolute difference of any probability.
        min_cosine: smallest allowed per-image cosine similarity of the probability vectors.
        min_top1: smallest allowed fraction of images whose top-1 class agrees with the reference.
        min_images: fewest images the verdict may rest on.
    """

    name: str
    max_abs: float | None
    min_cosine: float | None
    min_top1: float
    min_images: int = 1


# What each profile rests on is in docs/parity.md (measured on synthetic and sample-photo runs).
PROFILES: dict[str, Profile] = {
    "fp32": Profile("fp32", max_abs=2e-5, min_cosine=None, min_top1=1.0),
    "fp16": Profile("fp16", max_abs=None, min_cosine=0.999, min_top1=0.99),
    "bf16": Profile("bf16", max_abs=None, min_cosine=0.999, min_top1=0.99),
    "int8": Profile("int8", max_abs=None, min_cosine=0.99, min_top1=0.97, min_images=100),
}


@dataclass
class Metrics:
    """How one backend's outputs compare with the reference's."""

    images: int
    max_abs: float
    max_rel: float
    mean_abs: float
    min_cosine: float
    top1_agreement: float
    top5_overlap: float
    non_finite: int
    flipped: list[dict] = field(default_factory=list)

    def required(self) -> dict[str, float]:
        """The loosest tolerances this result would have needed to pass (as Polygraphy prints them)."""
        return {"atol": self.max_abs, "min_cosine": self.min_cosine, "min_top1": self.top1_agreement}


@dataclass
class BackendResult:
    """One row of the parity matrix."""

    backend: str
    status: str  # "pass", "fail", "skipped" or "error"
    profile: str | None = None
    metrics: Metrics | None = None
    reasons: list[str] = field(default_factory=list)
    details: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "pass"


@dataclass
class ParityReport:
    """The whole matrix, reference description included."""

    model: str
    reference: str
    images: int
    results: list[BackendResult]
    requested: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every run backend passed and every explicitly requested one ran."""
        ran_ok = all(r.status in ("pass", "skipped") for r in self.results)
        requested_skipped = [r for r in self.results if r.status == "skipped" and r.backend in self.requested]
        return ran_ok and not requested_skipped

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "reference": self.reference, "images": self.images, "passed": self.passed,
                "results": [dataclasses.asdict(r) for r in self.results]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_junit(self) -> str:
        """JUnit XML: one testcase per backend (skipped ones marked skipped, failures carry the reasons)."""
        suite = ElementTree.Element("testsuite", name=f"parity.{self.model}", tests=str(len(self.results)),
                                    failures=str(sum(r.status == "fail" for r in self.results)),
                                    errors=str(sum(r.status == "error" for r in self.results)),
                                    skipped=str(sum(r.status == "skipped" for r in self.results)))
        for result in self.results:
            case = ElementTree.SubElement(suite, "testcase", classname=f"parity.{self.model}", name=result.backend,
                                          time=f"{result.seconds:.3f}")
            tag = {"fail": "failure", "error": "error", "skipped": "skipped"}.get(result.status)
            if tag:
                ElementTree.SubElement(case, tag, message="; ".join(result.reasons))
        return ElementTree.tostring(suite, encoding="unicode")

    def render(self) -> str:
        """The matrix as a text table (rows = backend/precision, columns = metrics, pass/fail marks)."""
        head = ["backend", "verdict", "profile", "runs as", "max abs", "max rel", "mean abs", "min cos", "top-1",
                "top-5", "flips", "time s"]
        rows = [head] + [_row(r) for r in self.results]
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = [f"Parity of {self.model} against {self.reference} on {self.images} images"]
        lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        for result in self.results:
            for reason in result.reasons:
                lines.append(f"  {result.backend}: {reason}")
            for flip in (result.metrics.flipped if result.metrics else [])[:5]:
                lines.append(f"  {result.backend}: top-1 flipped on {flip['filename']}: {flip['reference']} -> "
                             f"{flip['backend']} (reference margin {flip['reference_margin']:.4f})")
        lines.append("PASS" if self.passed else "FAIL")
        return "\n".join(lines)


def _row(result: BackendResult) -> list[str]:
    mark = {"pass": "PASS", "fail": "FAIL", "skipped": "skip", "error": "ERROR"}[result.status]
    runs_as = result.details.get("inference_precision") or result.details.get("precision") or ""
    m = result.metrics
    if m is None:
        return [result.backend, mark, result.profile or "-", runs_as] + ["-"] * 7 + [f"{result.seconds:.1f}"]
    return [result.backend, mark, result.profile or "-", runs_as, f"{m.max_abs:.2e}", f"{m.max_rel:.2e}",
            f"{m.mean_abs:.2e}", f"{m.min_cosine:.6f}", f"{m.top1_agreement:.2%}", f"{m.top5_overlap:.2%}",
            str(len(m.flipped)), f"{result.seconds:.1f}"]


def compare(reference: np.ndarray, output: np.ndarray, filenames: Sequence[str]) -> Metrics:
    """Compare two [N, C] probability arrays image by image."""
    reference = reference.astype(np.float64)
    output = output.astype(np.float64)
    non_finite = int((~np.isfinite(output)).sum())
    output = np.nan_to_num(output, nan=0.0, posinf=0.0, neginf=0.0)
    diff = np.abs(output - reference)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(output, axis=1)
    cosine = np.where(norms > 0, (reference * output).sum(axis=1) / np.maximum(norms, 1e-30), 0.0)
    ref_order = np.argsort(-reference, axis=1)
    out_order = np.argsort(-output, axis=1)
    top5 = [len(set(a[:5]) & set(b[:5])) / 5 for a, b in zip(ref_order, out_order)]
    flipped = []
    for i in np.nonzero(ref_order[:, 0] != out_order[:, 0])[0]:
        margin = reference[i, ref_order[i, 0]] - reference[i, ref_order[i, 1]]
        flipped.append({"filename": filenames[i], "reference": int(ref_order[i, 0]), "backend": int(out_order[i, 0]),
                        "reference_margin": float(margin)})
    return Metrics(images=len(reference), max_abs=float(diff.max()),
                   max_rel=float((diff / np.maximum(np.abs(reference), 1e-12)).max()), mean_abs=float(diff.mean()),
                   min_cosine=float(cosine.min()), top1_agreement=float(np.mean(ref_order[:, 0] == out_order[:, 0])),
                   top5_overlap=float(np.mean(top5)), non_finite=non_finite, flipped=flipped)


def judge(metrics: Metrics, profile: Profile) -> list[str]:
    """Reasons the metrics fail the profile (empty: pass)."""
    reasons = []
    if metrics.non_finite:
        reasons.append(f"{metrics.non_finite} NaN/Inf values in the outputs")
    if profile.max_abs is not None and metrics.max_abs > profile.max_abs:
        reasons.append(f"max abs diff {metrics.max_abs:.3e} > {profile.max_abs:.0e}")
    if profile.min_cosine is not None and metrics.min_cosine < profile.min_cosine:
        reasons.append(f"min cosine {metrics.min_cosine:.6f} < {profile.min_cosine}")
    if metrics.top1_agreement < profile.min_top1:
        reasons.append(f"top-1 agreement {metrics.top1_agreement:.2%} < {profile.min_top1:.0%}")
    if metrics.images < profile.min_images:
        reasons.append(f"only {metrics.images} images; the {profile.name} profile needs >= {profile.min_images}")
    return reasons


def run_batches(runtime: Any, batches: Sequence[np.ndarray], transform: Transform | None = None) -> np.ndarray:
    """Run every batch through ``runtime`` (optionally transformed first) and stack the outputs."""
    outputs = [runtime.infer(np.ascontiguousarray(transform(b) if transform else b)) for b in batches]
    return np.concatenate(outputs, axis=0)


class ParityChecker:
    """Holds the reference outputs of one model on one image set; checks any runtime against them.

    Args:
        model: a resolved model (``ppdeploy.models.resolve.resolve_model``).
        images: RGB uint8 arrays; default: the built-in sample photos.
        filenames: display names of the images.
        batch_size: images per batch (every backend sees the same batches).
        threads: threads for every backend.
    """

    def __init__(self, model: Any, images: Sequence[np.ndarray], filenames: Sequence[str], *, batch_size: int = 8,
                 threads: int | None = None) -> None:
        from ppdeploy.preprocess import PreprocessConfig, preprocess_batch
        from ppdeploy.runtimes import RUNTIMES

        self.model = model
        self.filenames = list(filenames)
        self.threads = threads
        default = PreprocessConfig.from_spec(model.spec) if model.spec else PreprocessConfig()
        self.preprocess = PreprocessConfig.for_model_dir(model.paddle.directory, default)
        tensor = preprocess_batch(list(images), self.preprocess)
        self.batches = [tensor[i:i + batch_size] for i in range(0, len(tensor), batch_size)]
        with RUNTIMES["paddle"](model.paddle.directory, threads=threads) as reference:
            self.reference = run_batches(reference, self.batches)
        self.reference_name = f"Paddle Inference fp32 CPU ({model.paddle.fmt})"

    def check(self, label: str, runtime: Any, profile: Profile, *, transform: Transform | None = None) -> BackendResult:
        """Run ``runtime`` on the reference batches and judge it against ``profile``."""
        started = time.perf_counter()
        output = run_batches(runtime, self.batches, transform)
        metrics = compare(self.reference, output, self.filenames)
        reasons = judge(metrics, profile)
        return BackendResult(label, "fail" if reasons else "pass", profile.name, metrics, reasons,
                             dict(runtime.details), round(time.perf_counter() - started, 3))

    def check_backend(self, name: str, *, profile: Profile | None = None, log: Log | None = None) -> BackendResult:
        """Convert (cached), load and check one backend/target; unavailable ones come back ``skipped``."""
        from ppdeploy.converters.pipeline import convert_model, default_options
        from ppdeploy.runtimes import RUNTIMES
        from ppdeploy.runtimes.select import availability, resolve_backend

        started = time.perf_counter()
        choice = resolve_backend(name)
        ok, reason = availability(choice)
        if not ok:
            return BackendResult(name, "skipped", reasons=[reason])
        if choice.target is None:
            artifact, precision = self.model.paddle.directory, "fp32"
        else:
            from ppdeploy.converters.base import TARGETS

            try:
                artifact = convert_model(self.model, choice.target, options=default_options(self.model, choice.target),
                                         log=log)
            except DeployError as exc:
                return BackendResult(name, "error", reasons=[str(exc)], seconds=time.perf_counter() - started)
            precision = TARGETS[choice.target].precision
        chosen = profile or PROFILES[precision]
        try:
            with RUNTIMES[choice.backend](artifact, threads=self.threads) as runtime:
                result = self.check(name, runtime, chosen)
        except DeployError as exc:
            return BackendResult(name, "error", chosen.name, reasons=[str(exc)], seconds=time.perf_counter() - started)
        result.seconds = round(time.perf_counter() - started, 3)
        return result


def expand_backends(spec: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """``all`` or a comma list → (backends to run, backends the user named explicitly)."""
    from ppdeploy.converters.base import TARGETS
    from ppdeploy.runtimes.select import PADDLE

    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if names == ["all"]:
        return [PADDLE, *TARGETS], []
    return names, names


def parity(model: str | Path = "ResNet50", backends: str | Sequence[str] = "all", *, synthetic: bool = False,
           fmt: str = "json", images: str | Path | None = None, count: int = 100, batch_size: int = 8,
           threads: int | None = None, overrides: dict[str, Profile] | None = None,
           log: Log | None = None) -> ParityReport:
    """Check ``backends`` of ``model`` against Paddle Inference and return the report.

    Args:
        model: zoo name or Paddle model folder.
        backends: ``all`` or names (``paddle``, ``onnx``, ``openvino-int8``, ...).
        synthetic: use seeded synthetic weights for a zoo name.
        fmt: Paddle format of a synthetic export.
        images: a folder/glob of the user's images; default: ``count`` built-in sample photos.
        count: how many sample images when ``images`` is None.
        batch_size: images per batch.
        threads: threads for every backend.
        overrides: profile per precision name replacing the defaults (``--atol`` and friends).
        log: progress lines.
    """
    from ppdeploy.models.resolve import resolve_model

    names, requested = expand_backends(backends)
    resolved = resolve_model(model, synthetic=synthetic, fmt=fmt)
    pictures, filenames = load_images(images, count)
    checker = ParityChecker(resolved, pictures, filenames, batch_size=batch_size, threads=threads)
    profiles = {**PROFILES, **(overrides or {})}
    results = []
    for name in names:
        if log:
            log(f"parity: {name} ...")
        results.append(checker.check_backend(name, profile=_profile_for(name, profiles), log=log))
    return ParityReport(resolved.name, checker.reference_name, len(filenames), results, requested)


def _profile_for(name: str, profiles: dict[str, Profile]) -> Profile:
    from ppdeploy.converters.base import TARGETS
    from ppdeploy.runtimes.select import resolve_backend

    target = resolve_backend(name).target
    return profiles[TARGETS[target].precision if target else "fp32"]


def load_images(images: str | Path | None, count: int) -> tuple[list[np.ndarray], list[str]]:
    """The user's images (every file must decode), or ``count`` built-in sample photos."""
    if images is None:
        from ppdeploy.samples import sample_images

        pictures = sample_images(count)
        return pictures, [f"sample_{i:03d}" for i in range(len(pictures))]
    from ppdeploy.images import decode_image, list_images

    paths = list_images(images)
    return [decode_image(p) for p in paths], [str(p) for p in paths]
