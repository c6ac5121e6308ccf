"""What this machine can run: backends and versions, CPU ISA, GPUs, and the precision each backend really uses."""

from __future__ import annotations

import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
# Why the seed's phone runtime is not a backend (docs/edge.md); MNN and ncnn are the edge targets instead.
PADDLE_LITE = ("Paddle Lite: not a target (its PyPI wheels stop at Python 3.7 and its opt tool reads legacy .pdmodel, "
               "not Paddle 3's inference.json); for phones and ARM boards use mnn or ncnn (docs/edge.md)")


@dataclass
class Diagnosis:
    cpu: str
    isa: dict[str, bool]
    gpus: list[dict[str, str]]
    backends: list[dict[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # e.g. a mixed CPU/GPU install, with the command that fixes it
    auto: dict[str, list[str]] = field(default_factory=dict)  # what --backend auto tries, per device
    decisions: list[str] = field(default_factory=list)  # measured decisions (deploy optimize) in the cache

    def render(self) -> str:
        isa = ", ".join(f"{name}={'yes' if ok else 'no'}" for name, ok in self.isa.items())
        lines = [f"CPU: {self.cpu}", f"  ISA: {isa}"]
        lines += [f"GPU: {g['name']} (compute capability {g['compute_capability']})" for g in self.gpus] or \
                 ["GPU: none found (TensorRT and CUDA backends unavailable)"]
        lines.append("Backends:")
        for b in self.backends:
            state = f"{b['version']}" if b["available"] == "yes" else f"missing | {b['reason']}"
            lines.append(f"  {b['name']:<9} {state}")
            lines.append(f"            extra: ppdeploy[{b['extra']}]; runs: {b['targets'] or 'the Paddle model'}")
            if b.get("precision"):
                lines.append(f"            precision on this machine: {b['precision']}")
        for device, order in self.auto.items():
            lines.append(f"--backend auto on {device} tries: {', '.join(order) or 'nothing'}")
        lines += ["Measured decisions (used by --backend auto before the static order):",
                  *(f"  {line}" for line in self.decisions)] if self.decisions else \
                 ["Measured decisions: none ('deploy optimize MODEL' makes one; --backend auto uses it)"]
        lines.append(PADDLE_LITE)
        lines += [f"PROBLEM: {problem}" for problem in self.problems]
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


def diagnose() -> Diagnosis:
    """Probe the machine and every registered backend (its record says how: packages, extra, precision probe)."""
    from ppdeploy.registry import auto_order, backends, configurations

    model, isa = cpu_info()
    diagnosis = Diagnosis(model, isa, gpus())
    for name, record in backends().items():
        ok, reason = record.availability()
        installed = record.installed()
        row = {"name": name, "available": "yes" if ok else "no", "reason": reason,
               "version": ", ".join(f"{dist} {version}" for dist, version in installed) or "None",
               "extra": record.extra,
               "targets": ", ".join(configurations(record))}
        mixed = record.mixed_install()
        if mixed:
            row["mixed"] = mixed
            diagnosis.problems.append(mixed)
        if ok and record.precision_probe is not None:
            try:
                row["precision"] = record.precision_probe()
            except Exception as exc:  # a broken install is itself a finding
                row["precision"] = f"probe failed: {type(exc).__name__}: {exc}"
        diagnosis.backends.append(row)
    diagnosis.auto = {device: auto_order(device) for device in ("cpu", "gpu")}
    diagnosis.decisions = measured_decisions()
    return diagnosis


def measured_decisions() -> list[str]:
    """One line per decision in the cache: the model, the choice and whether it was measured on this machine."""
    from ppdeploy.optimize.package import cached_decisions

    lines = []
    for key, decision in cached_decisions():
        elsewhere = decision.mismatch()
        lines.append(f"{key}: {decision.describe()}" + (f" [another machine: {elsewhere}; not used]" if elsewhere
                                                        else " [this machine]"))
    return lines
