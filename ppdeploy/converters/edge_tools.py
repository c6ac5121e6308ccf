"""What the edge converters (``onnx_to_mnn``, ``onnx_to_ncnn``) share: running a converter tool in a child process
with one-line errors, and reading the names and sizes of an ONNX model's image input and class output.

The tools run in a child process because they are C++ programs that print to the process's own stdout, abort the
whole process on bad input (MNN's quantizer throws ``std::length_error`` when called the wrong way) and keep their
own thread pools; a child keeps all of that out of ``deploy``'s output and state.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ppdeploy.converters.onnx_graph import verify_onnx
from ppdeploy.errors import ConversionError, one_line

TOOL_TIMEOUT = 1800  # seconds; ResNet200_vd converts in well under a minute, int8 calibration in a few


@dataclass(frozen=True)
class OnnxImageModel:
    """The ONNX model's single image input and first output, as the edge runtimes need them."""

    input_name: str
    output_name: str
    input_size: int
    classes: int


def onnx_image_model(path: Path, input_size: int) -> OnnxImageModel:
    """Check ``path`` with ``onnx.checker`` and read its image input and ``[N, classes]`` output.

    Raises:
        ConversionError: not one ``[N, 3, H, W]`` input, or an output without a static class dimension.
    """
    import onnx

    check = verify_onnx(path, input_size=input_size)
    output = onnx.load(str(path), load_external_data=False).graph.output[0]
    dims = [d.dim_value or None for d in output.type.tensor_type.shape.dim]
    if len(dims) != 2 or not dims[1]:
        raise ConversionError(one_line(f"{path} output '{output.name}'", f"shape {dims}",
                                       "expected [N, classes] probabilities (a PaddleClas classifier)"))
    return OnnxImageModel(check.input_name, check.output_name, int(check.input_size), int(dims[1]))


def run_tool(command: list[str], *, what: str, cwd: Path) -> str:
    """Run a converter tool and return its output (stdout and stderr together).

    Raises:
        ConversionError: the tool exited non-zero, was killed, or timed out; the line quotes its last output line.
    """
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, errors="replace",
                              timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConversionError(one_line(what, f"could not run {command[0]} ({exc})",
                                       "reinstall the extra: pip install 'ppdeploy[edge]'")) from exc
    output = done.stdout + done.stderr
    if done.returncode != 0:
        last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "no output")
        raise ConversionError(one_line(what, f"{Path(command[0]).name} failed (exit {done.returncode}: "
                                       f"{last[:200]})", "run with --verbose and report it with the model"))
    return output


def python_tool(code: str, *args: str, what: str, cwd: Path) -> str:
    """Run ``code`` (with ``args`` as ``sys.argv[1:]``) in a child Python: the tools that ship as extension
    modules, called directly (their console scripts phone home, see ``onnx_to_mnn``)."""
    return run_tool([sys.executable, "-c", code, *args], what=what, cwd=cwd)
