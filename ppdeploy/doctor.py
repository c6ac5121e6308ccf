"""What this machine can run: backends and versions, CPU ISA, GPUs, and the precision each backend really uses."""

from __future__ import annotations

import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


@dataclass
class Diagnosis:
    cpu: str
    isa: dict[str, bool]
    gpus: list[dict[str, str]]
    backends: list[dict[str, str]] = field(default_factory=list)

    def render(self) -> str:
        isa = ", ".join(f"{name}={'yes' if ok else 'no'}" for name, ok in self.isa.items())
        lines = [f"CPU: {self.cpu}", f"  ISA: {isa}"]
        lines += [f"GPU: {g['name']} (compute capability {g['compute_capability']})" for g in self.gpus] or \
                 ["GPU: none found (TensorRT and CUDA backends unavailable)"]
        lines.append("Backends:")
        for b in self.backends:
            state = f"{b['version']}" if b["available"] == "yes" else f"missing | {b['reason']}"
            lines.append(f"  {b['name']:<9} {state}")
            if b.get("precision"):
                lines.append(f"            precision on this machine: {b['precision']}")
        return "\n".join(lines)


def cpu_info() -> tuple[str, dict[str, bool]]:
    """CPU model name and which of ``ISA_FLAGS`` it reports (Linux /proc/cpuinfo; other OSes: names only)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    flags_line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    flags = set(flags_line.split(":", 1)[-1].split())
    return model, {name: name in flags for name in ISA_FLAGS}


def gpus() -> list[dict[str, str]]:
    """NVIDIA GPUs as nvidia-smi reports them (empty when there is no driver)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [line.rsplit(",", 1) for line in out.strip().splitlines() if "," in line]
    return [{"name": name.strip(), "compute_capability": cap.strip()} for name, cap in rows]


def _openvino_precision() -> str:
    import openvino as ov

    core = ov.Core()
    hint = core.get_property("CPU", "INFERENCE_PRECISION_HINT")
    default = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    return (f"default inference precision on CPU is {default}; ppdeploy pins f32 for fp32 IR "
            f"(capabilities: {', '.join(core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))})")


def _onnxruntime_precision() -> str:
    import onnxruntime as ort

    return "providers: " + ", ".join(ort.get_available_providers()) + " (fp32 unless the ONNX is fp16/int8)"


def _paddle_precision() -> str:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # paddle warns about ccache at import: noise for a doctor report
        import paddle

    cuda = paddle.device.is_compiled_with_cuda()
    return f"fp32 with oneDNN on CPU; compiled with CUDA: {'yes' if cuda else 'no'}"


PRECISION_PROBES = {"openvino": _openvino_precision, "onnx": _onnxruntime_precision, "paddle": _paddle_precision}


def diagnose() -> Diagnosis:
    """Probe the machine and every registered backend."""
    from ppdeploy.artifacts import tool_versions
    from ppdeploy.runtimes import RUNTIMES

    model, isa = cpu_info()
    versions = tool_versions()
    dist = {"paddle": "paddlepaddle", "onnx": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}
    diagnosis = Diagnosis(model, isa, gpus())
    for name, runtime in RUNTIMES.items():
        ok, reason = runtime.availability()
        row = {"name": name, "available": "yes" if ok else "no", "reason": reason,
               "version": str(versions.get(dist.get(name, name)))}
        if ok and name in PRECISION_PROBES:
            try:
                row["precision"] = PRECISION_PROBES[name]()
            except Exception as exc:  # a broken install is itself a finding
                row["precision"] = f"probe failed: {type(exc).__name__}: {exc}"
        diagnosis.backends.append(row)
    return diagnosis
