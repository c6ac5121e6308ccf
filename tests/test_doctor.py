"""`deploy doctor` reports this machine as it is."""

from __future__ import annotations

from pathlib import Path

from ppdeploy.doctor import cpu_info, diagnose
from ppdeploy.registry import backends


def test_cpu_flags_match_proc_cpuinfo():
    _, isa = cpu_info()
    text = Path("/proc/cpuinfo").read_text()
    flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
    assert isa["avx512f"] == ("avx512f" in flags)
    assert isa["amx_bf16"] == ("amx_bf16" in flags)


def test_every_backend_is_listed_with_truthful_state():
    diagnosis = diagnose()
    rows = {row["name"]: row for row in diagnosis.backends}
    assert set(rows) == set(backends())
    for name, record in backends().items():
        ok, _ = record.availability()
        assert rows[name]["available"] == ("yes" if ok else "no")
        if not ok:
            assert "install" in rows[name]["reason"]
    if rows["openvino"]["available"] == "yes":
        import openvino as ov

        default = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
        assert f"default inference precision on CPU is {default}" in rows["openvino"]["precision"]
    text = diagnosis.render()
    assert "CPU:" in text and "Backends:" in text
