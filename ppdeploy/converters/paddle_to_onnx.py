"""Paddle inference model (``.json`` or ``.pdmodel``) → ONNX fp32, via paddle2onnx in a child process.

paddle2onnx is run in a subprocess on purpose: on bad input it calls ``sys.exit(-1)``, an opset outside 7-21
aborts the whole process with SIGABRT, and its default optimizer sets ``POLYGRAPHY_AUTOINSTALL_DEPS=1`` for
the rest of the process (BACKEND_FACTS §5). The child keeps the caller alive and its environment clean whatever
paddle2onnx does, for about 1.2 s per conversion (ResNet50: 1.4 s in a child, 0.2-0.3 s in-process once paddle
is imported).

The raw paddle2onnx graph keeps every weight in a ``Constant`` node and every BatchNorm as its own node. We
turn the constants into initializers, drop no-op ``Identity`` nodes and fold each BatchNorm into the
convolution before it, because ORT's quantizer and TensorRT's Q/DQ placement want ``Conv`` directly followed
by its consumer. Polygraphy/graphsurgeon constant folding is not used: on these graphs there is nothing else
to fold (the only non-constant subgraph is the dynamic-batch flatten, ``Shape → Slice → Concat``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ppdeploy.converters.base import SUPPORTED_OPSETS, ConvertOptions, ConvertResult
from ppdeploy.errors import ConversionError, one_line
from ppdeploy.fsutil import atomic_write_bytes
from ppdeploy.models.paddle_files import check_params_file

if TYPE_CHECKING:
    import onnx

MODEL_FILE = "model.onnx"
BATCH_DIM = "N"
OPTIMIZE_TOOL = "none"  # never "polygraphy": it pip-installs onnx-graphsurgeon at run time
AUTOINSTALL_ENV = "POLYGRAPHY_AUTOINSTALL_DEPS"
_TIMEOUT_S = 1800  # ResNet50 takes ~1.5 s; this only stops a hung child
_CHILD_MODULE = "ppdeploy.converters.paddle_to_onnx"  # not __name__: that is "__main__" inside the child
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class OnnxCheck:
    """What ``verify_onnx`` saw: the I/O names and the output of a batch-2 test run."""

    input_name: str
    output_name: str
    input_size: int
    output_shape: tuple[int, ...]


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
    raw = run_paddle2onnx(model_file, params_file, opset)
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


def run_paddle2onnx(model_file: Path, params_file: Path, opset: int) -> bytes:
    """Run paddle2onnx in a child process and return the serialized ONNX model.

    Raises:
        ConversionError: one line with paddle2onnx's own error message, exit code or signal.
    """
    check_opset(opset)  # an out-of-range opset would SIGABRT the child; never hand it one
    with tempfile.TemporaryDirectory(prefix="ppdeploy-p2o-") as tmp:
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


# --------------------------------------------------------------------------- graph clean-up


def simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Constants → initializers, drop Identity, fold BatchNorm into Conv. Returns (model, counts)."""
    model = constants_to_initializers(model)
    model = remove_identities(model)
    before = _count_ops(model, "BatchNormalization")
    model = fold_batchnorm(model)
    _drop_unused_initializers(model)  # paddle2onnx leaves the flatten's shape constants behind
    left = _count_ops(model, "BatchNormalization")
    return model, {"batchnorm_folded": before - left, "batchnorm_left": left}


def _count_ops(model: onnx.ModelProto, op_type: str) -> int:
    return Counter(node.op_type for node in model.graph.node)[op_type]


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Move every tensor-valued ``Constant`` node into the graph's initializers (in place; returns ``model``)."""
    keep = []
    for node in model.graph.node:
        attrs = {attr.name: attr for attr in node.attribute}
        if node.op_type == "Constant" and set(attrs) == {"value"} and node.domain in ("", "ai.onnx"):
            tensor = attrs["value"].t
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
        else:
            keep.append(node)
    _replace_nodes(model, keep)
    return model


def remove_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop ``Identity`` nodes whose output is not a graph output, rewiring their consumers (in place)."""
    graph_outputs = {out.name for out in model.graph.output}
    renames: dict[str, str] = {}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.output[0] not in graph_outputs:
            renames[node.output[0]] = renames.get(node.input[0], node.input[0])
        else:
            keep.append(node)
    for node in keep:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    _replace_nodes(model, keep)
    return model


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold every inference-mode ``BatchNormalization`` that directly follows a ``Conv`` into that Conv.

    ``y = scale * (conv(x) - mean) / sqrt(var + eps) + bias`` becomes one Conv with rescaled weights and a new
    bias, computed in float64. Weights held in ``Constant`` nodes are moved to initializers first. A BatchNorm
    is left alone when its Conv output has other consumers or its parameters are computed. Works on a copy;
    returns the new model.
    """
    import onnx

    model = constants_to_initializers(onnx.ModelProto.FromString(model.SerializeToString()))
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers = Counter(name for node in graph.node for name in node.input)
    graph_outputs = {out.name for out in graph.output}
    dropped: set[int] = set()
    for index, bn in enumerate(graph.node):
        conv = producer.get(bn.input[0]) if bn.op_type == "BatchNormalization" else None
        if conv is None or not _foldable(bn, conv, inits, consumers, graph_outputs):
            continue
        _fold_into_conv(graph, inits, bn, conv)
        dropped.add(index)
    if dropped:
        _replace_nodes(model, [node for index, node in enumerate(graph.node) if index not in dropped])
        _drop_unused_initializers(model)
    return model


def _foldable(bn: onnx.NodeProto, conv: onnx.NodeProto, inits: dict, consumers: Counter,
              graph_outputs: set[str]) -> bool:
    training = any(attr.name == "training_mode" and attr.i for attr in bn.attribute)
    params = list(bn.input[1:5]) + [name for name in conv.input[1:] if name]
    return (conv.op_type == "Conv" and len(bn.output) == 1 and not training
            and consumers[conv.output[0]] == 1 and conv.output[0] not in graph_outputs
            and all(name in inits for name in params))


def _fold_into_conv(graph: onnx.GraphProto, inits: dict, bn: onnx.NodeProto, conv: onnx.NodeProto) -> None:
    from onnx import numpy_helper

    scale, offset, mean, var = (numpy_helper.to_array(inits[name]).astype(np.float64) for name in bn.input[1:5])
    eps = next((attr.f for attr in bn.attribute if attr.name == "epsilon"), 1e-5)
    weight = numpy_helper.to_array(inits[conv.input[1]])
    has_bias = len(conv.input) > 2 and bool(conv.input[2])
    bias = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if has_bias
            else np.zeros(weight.shape[0], np.float64))
    factor = scale / np.sqrt(var + eps)
    new_weight = weight.astype(np.float64) * factor.reshape(-1, *([1] * (weight.ndim - 1)))
    new_bias = (bias - mean) * factor + offset
    # New names: a weight shared by two Convs must not be rescaled for both.
    conv.input[1] = _add_initializer(graph, inits, numpy_helper.from_array(new_weight.astype(weight.dtype),
                                                                           conv.input[1] + "_bnfold"))
    bias_name = _add_initializer(graph, inits, numpy_helper.from_array(new_bias.astype(weight.dtype),
                                                                       bn.output[0] + "_bias"))
    if len(conv.input) > 2:
        conv.input[2] = bias_name
    else:
        conv.input.append(bias_name)
    conv.output[0] = bn.output[0]


def _add_initializer(graph: onnx.GraphProto, inits: dict, tensor: onnx.TensorProto) -> str:
    base, name, i = tensor.name, tensor.name, 0
    while name in inits:
        i += 1
        name = f"{base}_{i}"
    tensor.name = name
    graph.initializer.append(tensor)
    inits[name] = tensor
    return name


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input} | {out.name for out in model.graph.output}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def _replace_nodes(model: onnx.ModelProto, nodes: list) -> None:
    kept = list(nodes)
    del model.graph.node[:]
    model.graph.node.extend(kept)


def set_batch_dim(model: onnx.ModelProto, name: str = BATCH_DIM) -> None:
    """Make dim 0 of every graph input and output the symbolic ``name`` (in place)."""
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dims[0].dim_param = name  # also clears a fixed dim_value (oneof)


# --------------------------------------------------------------------------- verification


def verify_onnx(path: Path, *, input_size: int = 224) -> OnnxCheck:
    """Check an ONNX file with ``onnx.checker`` and a batch-2 ONNX Runtime run on CPU.

    Used by every ONNX converter before it reports success. The input's own static H/W win over
    ``input_size``.

    Raises:
        ConversionError: the checker rejects the model, the run fails, or the output is not ``[2, C]``
            and finite.
    """
    import onnx
    import onnxruntime as ort

    path = Path(path)
    try:
        onnx.checker.check_model(str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ConversionError(one_line(str(path), f"invalid ONNX model ({_first_line(exc)})",
                                       "report it with the source model attached")) from exc
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    dims = [d if isinstance(d, int) else None for d in inp.shape]
    height, width = (dims[2] or input_size, dims[3] or input_size) if len(dims) == 4 else (input_size, input_size)
    batch = np.random.default_rng(0).standard_normal((2, dims[1] or 3, height, width)).astype(np.float32)
    try:
        result = session.run([out.name], {inp.name: batch})[0]
    except Exception as exc:
        raise ConversionError(one_line(str(path), f"test run failed ({_first_line(exc)})",
                                       "the model may not support a dynamic batch; re-export it with batch None"))
    if result.ndim != 2 or result.shape[0] != 2 or not np.isfinite(result).all():
        raise ConversionError(one_line(str(path), f"test run gave shape {result.shape}, finite="
                                       f"{bool(np.isfinite(result).all())}", "expected finite [2, classes]"))
    return OnnxCheck(inp.name, out.name, height, tuple(result.shape))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


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
        reason = f"exit code {exc.code}" if isinstance(exc, SystemExit) else _first_line(exc)
        print(f"P2O-ERROR: {reason}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
