"""Paddle inference model (``.json`` or ``.pdmodel``) → ONNX fp32, via paddle2onnx in a child process.

paddle2onnx is run in a subprocess on purpose: on bad input it calls ``sys.exit(-1)``, an opset outside 7-21
aborts the whole process with SIGABRT, and its default optimizer sets ``POLYGRAPHY_AUTOINSTALL_DEPS=1`` for
the rest of the process (BACKEND_FACTS §5). The child keeps the caller alive and its environment clean whatever
paddle2onnx does, for about 1.2 s per conversion (ResNet50: 1.4 s in a child, 0.2-0.3 s in-process once paddle
is imported).

The raw paddle2onnx graph is then cleaned up (constants to initializers, BatchNorm folded into Conv) and checked
by the passes in :mod:`ppdeploy.converters.onnx_graph`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ppdeploy.converters.base import SUPPORTED_OPSETS, ConvertOptions, ConvertResult
from ppdeploy.converters.onnx_graph import BATCH_DIM, MODEL_FILE, set_batch_dim, simplify, verify_onnx
from ppdeploy.errors import ConversionError, first_line, one_line
from ppdeploy.fsutil import atomic_write_bytes
from ppdeploy.models.paddle_files import check_params_file
from ppdeploy.registry import Target, register_target

if TYPE_CHECKING:
    import onnx

OPTIMIZE_TOOL = "none"  # never "polygraphy": it pip-installs onnx-graphsurgeon at run time
AUTOINSTALL_ENV = "POLYGRAPHY_AUTOINSTALL_DEPS"
_TIMEOUT_S = 1800  # ResNet50 takes ~1.5 s; this only stops a hung child
_CHILD_MODULE = "ppdeploy.converters.paddle_to_onnx"  # not __name__: that is "__main__" inside the child
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def convert(src: Path, dst: Path, options: ConvertOptions) -> ConvertResult:
    """Convert a Paddle inference model to ``dst/model.onnx`` (fp32, dynamic batch ``N``, BatchNorm folded).

    Args:
        src: ``inference.json`` or ``inference.pdmodel`` (``inference.pdiparams`` beside it), or their folder.
        dst: an empty folder to write ``model.onnx`` into.
        options: ``opset`` is used; it must lie in ``SUPPORTED_OPSETS``.

    Raises:
        ConversionError: unsupported opset (checked before paddle2onnx runs), paddle2onnx failure, or an
            output that fails ``onnx.checker`` or the ONNX Runtime test run.
        ArtifactError: the params file is truncated.
    """
    opset = check_opset(options.opset)
    model_file, params_file = paddle_files(Path(src))
    check_params_file(params_file)  # paddle2onnx turns a truncated file into a graph missing weights, silently
    raw = run_paddle2onnx(model_file, params_file, opset, work=Path(dst))
    model, counts = simplify(_load_bytes(raw, model_file))
    set_batch_dim(model, BATCH_DIM)
    target = Path(dst) / MODEL_FILE
    atomic_write_bytes(target, model.SerializeToString())
    check = verify_onnx(target, input_size=options.input_size)
    return ConvertResult(MODEL_FILE, "fp32", info={
        "opset": opset,
        "input_name": check.input_name,
        "output_name": check.output_name,
        "input_size": check.input_size,
        "optimize_tool": OPTIMIZE_TOOL,
        "batchnorm_nodes": counts["batchnorm_left"],
        "batchnorm_folded": counts["batchnorm_folded"],
        "paddle_format": model_file.suffix.lstrip("."),
    })


def check_opset(opset: int) -> int:
    """Return ``opset`` if paddle2onnx and our quantizers accept it, else raise ``ConversionError``."""
    if opset not in SUPPORTED_OPSETS:
        raise ConversionError(one_line(f"opset {opset}", "not supported",
                                       f"choose an opset from {SUPPORTED_OPSETS.start} to {SUPPORTED_OPSETS[-1]}"
                                       " (17 recommended)"))
    return opset


def paddle_files(src: Path) -> tuple[Path, Path]:
    """Model and params files for ``src`` (a ``.json``/``.pdmodel`` file, or the folder holding one)."""
    if src.is_dir():
        from ppdeploy.models.paddle_files import find_paddle_model

        found = find_paddle_model(src)
        return found.model_file, found.params_file
    if src.suffix not in (".json", ".pdmodel") or not src.is_file():
        raise ConversionError(one_line(str(src), "not a Paddle inference model file",
                                       "give inference.json or inference.pdmodel"))
    params = src.with_suffix(".pdiparams")
    if not params.is_file():
        raise ConversionError(one_line(str(params), "missing (the model's weights)",
                                       f"copy it next to {src.name}"))
    return src, params


def run_paddle2onnx(model_file: Path, params_file: Path, opset: int, *, work: Path | None = None) -> bytes:
    """Run paddle2onnx in a child process and return the serialized ONNX model.

    Its scratch folder goes inside ``work`` (the pipeline's staging folder): a conversion killed with SIGKILL
    leaves it where the next run's cleanup finds it, never in ``/tmp`` for good.

    Raises:
        ConversionError: one line with paddle2onnx's own error message, exit code or signal.
    """
    check_opset(opset)  # an out-of-range opset would SIGABRT the child; never hand it one
    if work is not None:
        Path(work).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ppdeploy-p2o-", dir=work) as tmp:
        out = Path(tmp) / "raw.onnx"
        cmd = [sys.executable, "-m", _CHILD_MODULE, str(model_file), str(params_file), str(opset), str(out)]
        try:
            proc = subprocess.run(cmd, env=_child_env(), stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, errors="replace", timeout=_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise ConversionError(one_line(str(model_file), f"paddle2onnx did not finish in {_TIMEOUT_S} s",
                                           "check the model; rerun with more time")) from exc
        if proc.returncode != 0 or not out.is_file():
            raise ConversionError(one_line(str(model_file), "paddle2onnx failed: " + _failure_reason(proc),
                                           "check that the model exports with Paddle 3 and that the opset fits"))
        return out.read_bytes()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The child must import this package even when the caller found it through sys.path tweaks.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), env.get("PYTHONPATH")]))
    env[AUTOINSTALL_ENV] = "0"  # polygraphy treats any value but "0" as "install"
    env.pop("P2O_KEEP_TEMP_MODEL", None)
    env.setdefault("GLOG_minloglevel", "2")
    return env


def _failure_reason(proc: subprocess.CompletedProcess) -> str:
    text = _ANSI.sub("", (proc.stdout or "") + "\n" + (proc.stderr or ""))
    errors = [line.split("[ERROR]", 1)[1].strip(" \t]:") for line in text.splitlines() if "[ERROR]" in line]
    ours = [line.split("P2O-ERROR:", 1)[1].strip() for line in text.splitlines() if "P2O-ERROR:" in line]
    reason = next((msg for msg in errors + ours if msg), "")
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        return f"process killed by {sig}" + (f" ({reason})" if reason else "")
    return reason or f"exit code {proc.returncode}"


def _load_bytes(raw: bytes, model_file: Path) -> onnx.ModelProto:
    import onnx

    try:
        return onnx.load_from_string(raw)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ConversionError(one_line(str(model_file), f"paddle2onnx wrote an unreadable model ({exc})",
                                       "report it with the model attached")) from exc


# --------------------------------------------------------------------------- child process


@contextmanager
def autoinstall_guard() -> Iterator[None]:
    """Keep ``POLYGRAPHY_AUTOINSTALL_DEPS`` off around a paddle2onnx call, and restore it afterwards."""
    before = os.environ.get(AUTOINSTALL_ENV)
    os.environ[AUTOINSTALL_ENV] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(AUTOINSTALL_ENV, None)
        else:
            os.environ[AUTOINSTALL_ENV] = before


def _child_main(argv: list[str]) -> int:
    """Child entry point: ``MODEL PARAMS OPSET OUT``; prints ``P2O-ERROR: ...`` and exits 2 on failure."""
    model_file, params_file, opset, out = argv
    try:
        import paddle2onnx

        with autoinstall_guard():
            raw = paddle2onnx.export(model_file, params_file, save_file=None, opset_version=int(opset),
                                     auto_upgrade_opset=True, enable_onnx_checker=True, enable_optimize=True,
                                     optimize_tool=OPTIMIZE_TOOL, verbose=False)
        if not raw:
            raise RuntimeError("paddle2onnx returned an empty model")
        Path(out).write_bytes(raw)
    except BaseException as exc:  # noqa: BLE001 - paddle2onnx reports failure through sys.exit(-1)
        reason = f"exit code {exc.code}" if isinstance(exc, SystemExit) else first_line(exc)
        print(f"P2O-ERROR: {reason}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))


TARGET = register_target(Target(
    "onnx", "onnx", "fp32", __name__, requires=("paddle", "paddle2onnx", "onnx"), extra="onnx",
    tools=("paddlepaddle", "paddle2onnx", "onnx")))
