"""OpenVINO backend: runs ``openvino``, ``openvino-fp16`` and ``openvino-int8`` IR artifacts.

The CPU plugin computes in bf16 by default on CPUs with AVX512_BF16/AMX, and it turns an ``f16`` request into
bf16 on CPUs without native fp16 (seen with openvino 2026.4 on an AVX512_BF16 EPYC). Both would silently give
less precision than the artifact promises, so the inference precision is always set explicitly, read back from
the compiled model, and reported in ``details["inference_precision"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ppdeploy.artifacts import artifact_model_file, load_manifest
from ppdeploy.errors import (
    OPENVINO_LOCATION_LINES,
    ArtifactError,
    BackendUnavailableError,
    InputSpecError,
    first_line,
    one_line,
)
from ppdeploy.registry import Backend, Variant, register_backend
from ppdeploy.runtimes.base import Runtime, TensorSpec

if TYPE_CHECKING:
    import numpy as np

DEVICES = {"cpu": "CPU", "gpu": "GPU", "auto": "AUTO"}
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
# Spellings accepted for an inference precision, mapped to OpenVINO's element type names.
_PRECISION_NAMES = {"f32": "f32", "fp32": "f32", "float32": "f32", "f16": "f16", "fp16": "f16", "float16": "f16",
                    "bf16": "bf16", "bfloat16": "bf16"}
# How many significant bits each compute type keeps: a fallback may only go up this ladder.
_MANTISSA_BITS = {"bf16": 8, "f16": 11, "f32": 24}
# The compute precision an artifact gets when its manifest does not say (older artifacts).
_DEFAULT_FOR_ARTIFACT = {"fp32": "f32", "fp16": "f16", "int8": "f32"}


class OpenVinoRuntime(Runtime):
    """OpenVINO compiled model over an artifact's ``model.xml``/``model.bin``, with one reused infer request.

    Args:
        artifact_dir: the artifact folder (``manifest.json`` + IR).
        device: ``cpu``, ``gpu`` or ``auto``.
        threads: ``INFERENCE_NUM_THREADS``; ``None`` lets OpenVINO decide.
        performance_hint: ``LATENCY`` (default), ``THROUGHPUT`` or ``CUMULATIVE_THROUGHPUT``.
        precision_override: compute in this precision (``f32``, ``f16``, ``bf16``) instead of the artifact's,
            without any fallback; meant for experiments and tests, and reported in ``details``.
    """

    name = "openvino"

    def __init__(self, artifact_dir: str | Path, *, device: str = "cpu", threads: int | None = None,
                 mode: str = "latency", requests: int | None = None, performance_hint: str | None = None,
                 precision_override: str | None = None) -> None:
        default_hint = "THROUGHPUT" if mode == "throughput" else "LATENCY"
        self.performance_hint = _check_performance_hint(performance_hint or default_hint)
        self.precision_override = normalize_precision(precision_override) if precision_override else None
        super().__init__(artifact_dir, device=device, threads=threads, mode=mode, requests=requests)

    def _load(self) -> None:
        import openvino as ov

        manifest = load_manifest(self.artifact_dir)
        xml = artifact_model_file(self.artifact_dir, manifest)
        core = ov.Core()
        ov_device = device_name(core, self.device)
        model = read_ir(core, xml, manifest)
        wanted = self.precision_override or artifact_inference_precision(manifest)
        hint = wanted if self.precision_override else resolve_precision(core, ov_device, wanted)
        self._compiled, actual = self._compile(core, model, ov_device, hint, xml, manifest)
        if not self.precision_override and actual != "unknown" and _less_precise(actual, hint):
            # The plugin substituted a cheaper type (e.g. f16 → bf16): go up to f32, never down.
            hint = "f32"
            self._compiled, actual = self._compile(core, model, ov_device, hint, xml, manifest)
            _refuse_if_less_precise(actual, wanted, xml)
        self._request = self._compiled.create_infer_request()
        if self.mode == "throughput":
            self.requests = self.requests or int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            # infer() from several threads (a server's batches): one infer request per thread at a time.
            self._lanes = [_request_lane(self._compiled.create_infer_request()) for _ in range(self.requests)]
        self.inputs = tuple(_spec(port) for port in self._compiled.inputs)
        self.outputs = tuple(_spec(port) for port in self._compiled.outputs)
        self.details = self._details(manifest, ov_device, wanted, actual, ov.get_version())

    def _compile(self, core, model, ov_device: str, hint: str, xml: Path, manifest: dict[str, Any]):
        config = compile_config(hint, self.threads, self.performance_hint, ov_device)
        try:
            compiled = core.compile_model(model, ov_device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with multi-line C++ text
            reason = first_line(exc, skip=OPENVINO_LOCATION_LINES)
            raise ArtifactError(one_line(str(xml), f"OpenVINO cannot compile it on {ov_device} ({reason})",
                                         _reconvert_fix(xml, manifest))) from exc
        return compiled, compiled_precision(compiled)

    def _details(self, manifest: dict[str, Any], ov_device: str, wanted: str, actual: str,
                 version: str) -> dict[str, str]:
        details = {"device": _execution_devices(self._compiled, ov_device),
                   "precision": str(manifest.get("precision", "unknown")), "inference_precision": actual,
                   "performance_hint": self.performance_hint, "threads": str(self.threads or "auto"),
                   "openvino": version.split("-")[0]}
        if self.precision_override:
            artifact_wants = artifact_inference_precision(manifest)
            details["precision_override"] = f"{self.precision_override} (artifact wants {artifact_wants})"
        elif actual == "unknown":
            details["precision_note"] = f"{ov_device} does not report its inference precision; {wanted} was requested"
        elif actual != wanted:
            details["precision_note"] = (f"artifact wants {wanted}; {ov_device} has no native {wanted}, so {actual} "
                                         "is used (never a less precise type)")
        return details

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return _request_lane(self._request)(batch)

    def infer_stream(self, batches):
        """Throughput mode: an ``AsyncInferQueue`` of ``requests`` infer requests (the THROUGHPUT hint's optimal
        number by default); outputs in input order."""
        if self.requests <= 1:
            yield from super().infer_stream(batches)
            return
        from collections import deque

        import numpy as np
        import openvino as ov

        done: dict[int, np.ndarray] = {}
        jobs = ov.AsyncInferQueue(self._compiled, self.requests)
        jobs.set_callback(lambda request, index: done.__setitem__(
            index, np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)))
        order: deque[int] = deque()
        for index, batch in enumerate(batches):
            jobs.start_async({0: self.infer_checked(batch)}, index)  # waits while every request is busy
            order.append(index)
            while order and order[0] in done:
                yield done.pop(order.popleft())
        jobs.wait_all()
        while order:
            yield done.pop(order.popleft())

    def close(self) -> None:
        self._request = None
        self._compiled = None
        super().close()


def _request_lane(request):
    """One synchronous call of an infer request; its output buffer is reused by the next call, so hand out a copy."""
    import numpy as np

    def run(batch):
        request.infer({0: batch})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    return run


# --------------------------------------------------------------------------- precision


def normalize_precision(name: str) -> str:
    """``fp16``/``float16``/``f16`` → ``f16`` (likewise f32, bf16); raise ``InputSpecError`` otherwise."""
    key = str(name).strip().lower()
    if key not in _PRECISION_NAMES:
        raise InputSpecError(one_line(f"inference precision '{name}'", "unknown",
                                      "choose one of: f32, f16, bf16"))
    return _PRECISION_NAMES[key]


def artifact_inference_precision(manifest: dict[str, Any]) -> str:
    """The compute precision an artifact asks for (``info["inference_precision"]``, else by its precision)."""
    recorded = manifest.get("inference_precision")
    if recorded:
        return normalize_precision(recorded)
    return _DEFAULT_FOR_ARTIFACT.get(str(manifest.get("precision")), "f32")


def native_precisions(core, ov_device: str) -> set[str]:
    """Compute types ``ov_device`` runs natively (from ``OPTIMIZATION_CAPABILITIES``); f32 always counts."""
    try:
        capabilities = {str(cap).upper() for cap in core.get_property(ov_device, "OPTIMIZATION_CAPABILITIES")}
    except Exception:  # AUTO and some plugins do not report capabilities
        capabilities = set()
    found = {"f32"}
    if "FP16" in capabilities:
        found.add("f16")
    if "BF16" in capabilities:
        found.add("bf16")
    return found


def resolve_precision(core, ov_device: str, wanted: str) -> str:
    """The hint that gives at least ``wanted``'s precision on ``ov_device``: ``wanted`` if native, else f32."""
    wanted = normalize_precision(wanted)
    return wanted if wanted in native_precisions(core, ov_device) else "f32"


def compiled_precision(compiled) -> str:
    """What a compiled model really computes in (``f32``, ``bf16``, ``f16``), or ``unknown``.

    AUTO does not answer for itself; its ``DEVICE_PROPERTIES`` hold the answer of the device it chose.
    """
    try:
        return _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    except Exception:  # AUTO/MULTI: ask the devices they run on
        pass
    try:
        per_device = compiled.get_property("DEVICE_PROPERTIES")
        names = {_type_name(per_device[device]["INFERENCE_PRECISION_HINT"])
                 for device in compiled.get_property("EXECUTION_DEVICES")}
    except Exception:
        return "unknown"
    return names.pop() if len(names) == 1 else "unknown"


def _type_name(value) -> str:
    name = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    return _PRECISION_NAMES.get(name.lower(), name)


def compile_config(hint: str, threads: int | None, performance_hint: str, ov_device: str) -> dict[str, Any]:
    """``compile_model`` properties: precision always explicit; threads go to the CPU (directly, or via AUTO)."""
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": performance_hint}
    if threads and ov_device == "CPU":
        config["INFERENCE_NUM_THREADS"] = int(threads)
    elif threads and ov_device == "AUTO":
        config["DEVICE_PROPERTIES"] = {"CPU": {"INFERENCE_NUM_THREADS": int(threads)}}
    return config


def _execution_devices(compiled, ov_device: str) -> str:
    """``CPU``, or for AUTO the device(s) it picked: ``AUTO (CPU)``."""
    if ov_device != "AUTO":
        return ov_device
    try:
        return f"AUTO ({', '.join(compiled.get_property('EXECUTION_DEVICES'))})"
    except Exception:
        return ov_device


def _less_precise(actual: str, wanted: str) -> bool:
    return _MANTISSA_BITS.get(actual, 0) < _MANTISSA_BITS.get(wanted, 0)


def _refuse_if_less_precise(actual: str, wanted: str, xml: Path) -> None:
    if actual != "unknown" and _less_precise(actual, wanted):
        raise BackendUnavailableError(one_line(f"backend 'openvino' for {xml}",
                                               f"OpenVINO runs it in {actual} although {wanted} was required",
                                               "use device 'cpu' or another backend"))


# --------------------------------------------------------------------------- loading


def device_name(core, device: str) -> str:
    """Our device name → OpenVINO's; raise ``BackendUnavailableError`` when that device is absent."""
    ov_device = DEVICES[device]
    available = list(core.available_devices)
    if ov_device != "AUTO" and not any(name.split(".")[0] == ov_device for name in available):
        raise BackendUnavailableError(one_line(f"backend 'openvino' on {device}",
                                               f"no OpenVINO {ov_device} device (available: {', '.join(available)})",
                                               "use device 'cpu', or install the Intel GPU driver"))
    return ov_device


def read_ir(core, xml: Path, manifest: dict[str, Any] | None = None):
    """``core.read_model`` with a one-line ``ArtifactError`` for a corrupt or truncated IR."""
    try:
        return core.read_model(str(xml), str(xml.with_suffix(".bin")))
    except Exception as exc:
        reason = first_line(exc, skip=OPENVINO_LOCATION_LINES)
        raise ArtifactError(one_line(str(xml), f"not a readable OpenVINO IR ({reason})",
                                     _reconvert_fix(xml, manifest or {}))) from exc


def _reconvert_fix(xml: Path, manifest: dict[str, Any]) -> str:
    return (f"delete {xml.parent} and reconvert: deploy convert {manifest.get('model_name', 'MODEL')} "
            f"--to {manifest.get('target', 'openvino')}")


def _check_performance_hint(value: str) -> str:
    hint = str(value).upper()
    if hint not in PERFORMANCE_HINTS:
        raise InputSpecError(one_line(f"performance hint '{value}'", "unknown",
                                      "choose one of: " + ", ".join(PERFORMANCE_HINTS)))
    return hint


def _spec(port) -> TensorSpec:
    import numpy as np

    shape = tuple(dim.get_length() if dim.is_static else None for dim in port.get_partial_shape())
    return TensorSpec(port.get_any_name(), shape, np.dtype(port.get_element_type().to_dtype()).name)


# --------------------------------------------------------------------------- registry record


def precision_probe() -> str:
    """``deploy doctor``: OpenVINO's own default compute precision on this CPU, and what ppdeploy asks for."""
    import openvino as ov

    core = ov.Core()
    default = _type_name(core.get_property("CPU", "INFERENCE_PRECISION_HINT"))
    return (f"default inference precision on CPU is {default}; ppdeploy pins f32 for fp32 IR "
            f"(capabilities: {', '.join(core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))})")


def raw_call(runtime: OpenVinoRuntime, artifact_dir: str, threads: int):
    """The same IR compiled with the same properties, called through one InferRequest (bench overhead)."""

    import openvino as ov

    core = ov.Core()
    precision = runtime.details.get("inference_precision", "f32")
    hint = runtime.details.get("performance_hint", "LATENCY")
    compiled = core.compile_model(core.read_model(str(artifact_model_file(artifact_dir))), "CPU",
                                  compile_config(precision, threads, hint, "CPU"))
    request = compiled.create_infer_request()

    def infer(batch: np.ndarray):
        request.infer({0: batch})
        return request.get_output_tensor(0).data

    return "openvino InferRequest.infer", infer


def bf16_check() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively (OpenVINO lists BF16 among the CPU's optimization capabilities)."""
    import openvino as ov

    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in capabilities:
        return True, ""
    return False, one_line("openvino-bf16", f"this CPU does not compute bf16 (capabilities: {', '.join(capabilities)})",
                           "run it on a CPU with AVX512_BF16 or AMX")


BACKEND = register_backend(Backend(
    name="openvino", runtime=OpenVinoRuntime, imports=("openvino",), extra="openvino", distributions=("openvino",),
    devices=("cpu", "gpu", "auto"), default_target="openvino", aliases=("ov",), auto={"cpu": (10, "openvino")},
    precision_probe=precision_probe, raw_call=raw_call, file_suffixes=(".xml",),
    inspector="ppdeploy.foreign.openvino_files:inspect",
    variants=(Variant("openvino-bf16", "openvino", {"precision_override": "bf16"}, "bf16",
                      "the fp32 IR computed in bf16 (OpenVINO's own default on CPUs with AVX512_BF16/AMX)",
                      check=bf16_check),)))
