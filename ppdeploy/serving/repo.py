"""``deploy export-repo``: model repositories that Triton Inference Server and OpenVINO Model Server load as written.

Triton (``--format triton``), for each artifact (``--targets``, default ``onnx``)::

    DIR/<model>_<target>/config.pbtxt      backend per artifact (onnxruntime, openvino, tensorrt), max_batch_size,
                                           dynamic_batching, instance_group, input/output names and dims read
                                           from the loaded artifact
    DIR/<model>_<target>/1/model.onnx|model.xml+model.bin|model.plan
    DIR/<model>_preprocess/                a Python-backend model (our code, 1/model.py): BYTES "image" (encoded
                                           files) -> the model's FP32 input, decoded and preprocessed by
                                           ppdeploy's own functions with the model's preprocessing (1/preprocess.json)
    DIR/<model>_<target>_image/            an ensemble: "image" -> preprocess -> the artifact -> "probabilities"

The ensemble's input and output names are those of ``deploy serve``'s Open Inference Protocol endpoint (``image``,
``probabilities``), so a client works against both. The preprocessing model needs ``pip install ppdeploy`` (core
only, no backend) in Triton's Python environment.

OVMS (``--format ovms``, OpenVINO IR targets only, default ``openvino``)::

    DIR/<model>_<target>/1/model.xml, model.bin
    DIR/config.json                        model_config_list, base paths relative to it

The repository is written to a temporary folder beside ``DIR`` and renamed into place when complete.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppdeploy.errors import DeployError, InputSpecError, one_line

FORMATS = ("triton", "ovms")
DEFAULT_TARGETS = {"triton": "onnx", "ovms": "openvino"}
# Triton backend and the file name it loads, by ppdeploy backend.
TRITON_BACKENDS = {"onnx": ("onnxruntime", "model.onnx"), "openvino": ("openvino", "model.xml"),
                   "tensorrt": ("tensorrt", "model.plan")}
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                "uint8": "TYPE_UINT8", "int8": "TYPE_INT8"}
IMAGE_INPUT, PROBABILITIES = "image", "probabilities"
PREPROCESS_FILE = "preprocess.json"
QUEUE_DELAY_US = 5000

Log = Callable[[str], None]


@dataclass(frozen=True)
class ArtifactIO:
    """What a repository entry needs from one converted artifact."""

    target: str
    backend: str
    directory: Path
    model_file: Path
    input_name: str
    input_dtype: str
    input_dims: tuple[int, ...]  # without the batch dim; -1 for a dynamic one
    output_name: str
    output_dtype: str
    output_dims: tuple[int, ...]
    max_batch: int | None  # the artifact's own largest batch (an engine's profile), None when dynamic


def check_request(fmt: str, targets: list[str], max_batch: int, output: Path) -> list[str]:
    """Validate everything that needs no model, before any slow step; returns the targets to build.

    Raises:
        DeployError: unknown format or target, a target the format cannot serve or this machine cannot build,
            a bad ``--max-batch``, or an output folder that exists and is not empty.
    """
    from ppdeploy.registry import BackendUnavailableError, get_target

    if fmt not in FORMATS:
        raise InputSpecError(one_line(f"--format {fmt}", "unknown", f"use one of: {', '.join(FORMATS)}"))
    targets = targets or [DEFAULT_TARGETS[fmt]]
    if len(set(targets)) != len(targets):
        raise InputSpecError(one_line(f"--targets {','.join(targets)}", "names a target twice", "name each once"))
    if max_batch < 1:
        raise InputSpecError(one_line(f"--max-batch {max_batch}", "must be at least 1", "pass 1 or more"))
    for name in targets:
        spec = get_target(name)  # unknown names list the valid ones
        if fmt == "ovms" and spec.backend != "openvino":
            raise InputSpecError(one_line(f"--targets {name}", "is not OpenVINO IR, which OVMS serves here",
                                          "use openvino, openvino-fp16 or openvino-int8 with --format ovms"))
        if fmt == "triton" and spec.backend not in TRITON_BACKENDS:
            raise InputSpecError(one_line(f"--targets {name}", "has no Triton backend",
                                          f"use a target of: {', '.join(TRITON_BACKENDS)}"))
        ok, reason = spec.availability()
        if not ok:
            raise BackendUnavailableError(f"target '{name}' | {reason}")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise DeployError(one_line(f"-o {output}", "exists and is not an empty folder",
                                   "choose a new folder, or remove it first"))
    return targets


def export_repo(model: Any, fmt: str, targets: list[str], *, max_batch: int = 8, output: Path,
                log: Log | None = None) -> Path:
    """Convert (or reuse) each target's artifact and write the repository to ``output``.

    Args:
        model: a resolved model (``ppdeploy.models.resolve.resolve_model``).
        fmt: ``triton`` or ``ovms``.
        targets: target names (checked by :func:`check_request` first).
        max_batch: the largest batch the server may form (and the artifacts are built for).
        output: the repository folder (must not exist, or be empty).
        log: progress lines.

    Returns:
        ``output``.
    """
    from ppdeploy.fsutil import staging_dir

    artifacts = [read_artifact(model, target, max_batch, log) for target in targets]
    base = model_name(model.name)
    with staging_dir(output) as staging:
        if fmt == "triton":
            _write_triton(staging, base, artifacts, max_batch, model)
        else:
            _write_ovms(staging, base, artifacts)
    if log:
        log(f"Wrote a {fmt} repository with {len(artifacts)} artifact(s) to {output}")
    return output


def model_name(name: str) -> str:
    """A repository name: letters, digits, ``_``, ``.`` and ``-`` kept, anything else ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def entry_name(base: str, target: str) -> str:
    return f"{base}_{target.replace('-', '_')}"


def read_artifact(model: Any, target: str, max_batch: int, log: Log | None = None) -> ArtifactIO:
    """Convert (or reuse) the artifact and read its input and output from the artifact itself (loaded)."""
    from ppdeploy.artifacts import artifact_model_file, load_manifest
    from ppdeploy.converters.pipeline import convert_model, default_options
    from ppdeploy.registry import get_backend

    directory = convert_model(model, target, options=default_options(model, target, max_batch=max_batch), log=log)
    manifest = load_manifest(directory)
    record = get_backend(str(manifest["backend"]))
    with record.runtime(directory, device=record.preferred_device) as runtime:
        inputs, outputs = runtime.inputs[0], runtime.outputs[0]
    largest = manifest.get("input_shape_range", {}).get("max", [None])[0] if record.name == "tensorrt" else None
    if largest is not None and largest < max_batch:
        raise DeployError(one_line(str(directory), f"engine takes batches up to {largest}, --max-batch is "
                                   f"{max_batch}", f"lower --max-batch, or reconvert with --max-batch {max_batch}"))
    return ArtifactIO(target, record.name, directory, artifact_model_file(directory, manifest), inputs.name,
                      inputs.dtype, _dims(inputs.shape), outputs.name, outputs.dtype, _dims(outputs.shape), largest)


def _dims(shape: tuple[int | None, ...]) -> tuple[int, ...]:
    return tuple(-1 if dim is None else int(dim) for dim in shape[1:])


def _triton_type(dtype: str) -> str:
    if dtype not in TRITON_TYPES:
        raise DeployError(one_line(f"tensor type {dtype}", "has no Triton equivalent here", "report it"))
    return TRITON_TYPES[dtype]


def _tensor(name: str, dtype: str, dims: tuple[int, ...]) -> str:
    return f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'


def _io(kind: str, name: str, dtype: str, dims: tuple[int, ...]) -> str:
    """An ``input [...]`` or ``output [...]`` block with one tensor."""
    return f"{kind} [\n{_tensor(name, _triton_type(dtype) if not dtype.startswith('TYPE_') else dtype, dims)}\n]"


def triton_config(name: str, artifact: ArtifactIO, max_batch: int) -> str:
    """The ``config.pbtxt`` of one artifact."""
    backend, filename = TRITON_BACKENDS[artifact.backend]
    kind = "KIND_GPU" if artifact.backend == "tensorrt" else "KIND_CPU"
    lines = [f'name: "{name}"', f'backend: "{backend}"', f'default_model_filename: "{filename}"',
             f"max_batch_size: {max_batch}",
             _io("input", artifact.input_name, artifact.input_dtype, artifact.input_dims),
             _io("output", artifact.output_name, artifact.output_dtype, artifact.output_dims),
             f"dynamic_batching {{\n  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}",
             f"instance_group [\n  {{\n    count: 1\n    kind: {kind}\n  }}\n]"]
    return "\n".join(lines) + "\n"


def _preprocess_config(name: str, artifact: ArtifactIO, max_batch: int) -> str:
    lines = [f'name: "{name}"', 'backend: "python"', f"max_batch_size: {max_batch}",
             _io("input", IMAGE_INPUT, "TYPE_STRING", (1,)),
             _io("output", artifact.input_name, artifact.input_dtype, artifact.input_dims),
             f"dynamic_batching {{\n  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}",
             "instance_group [\n  {\n    count: 2\n    kind: KIND_CPU\n  }\n]"]
    return "\n".join(lines) + "\n"


def _ensemble_config(name: str, preprocess: str, model: str, artifact: ArtifactIO, max_batch: int) -> str:
    def step(model_name: str, source: tuple[str, str], result: tuple[str, str]) -> str:
        return (f'    {{\n      model_name: "{model_name}"\n      model_version: -1\n'
                f'      input_map {{\n        key: "{source[0]}"\n        value: "{source[1]}"\n      }}\n'
                f'      output_map {{\n        key: "{result[0]}"\n        value: "{result[1]}"\n      }}\n    }}')

    steps = [step(preprocess, (IMAGE_INPUT, IMAGE_INPUT), (artifact.input_name, "preprocessed")),
             step(model, (artifact.input_name, "preprocessed"), (artifact.output_name, PROBABILITIES))]
    lines = [f'name: "{name}"', 'platform: "ensemble"', f"max_batch_size: {max_batch}",
             _io("input", IMAGE_INPUT, "TYPE_STRING", (1,)),
             _io("output", PROBABILITIES, artifact.output_dtype, artifact.output_dims),
             "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}"]
    return "\n".join(lines) + "\n"


def _write_triton(root: Path, base: str, artifacts: list[ArtifactIO], max_batch: int, model: Any) -> None:
    from ppdeploy.converters.pipeline import default_options

    preprocess = f"{base}_preprocess"
    for artifact in artifacts:
        name = entry_name(base, artifact.target)
        _, filename = TRITON_BACKENDS[artifact.backend]
        _copy_model(artifact, root / name / "1", filename)
        (root / name / "config.pbtxt").write_text(triton_config(name, artifact, max_batch))
        ensemble = f"{name}_image"
        (root / ensemble / "1").mkdir(parents=True)  # an ensemble has an empty version folder
        (root / ensemble / "config.pbtxt").write_text(_ensemble_config(ensemble, preprocess, name, artifact,
                                                                       max_batch))
    first = artifacts[0]
    version = root / preprocess / "1"
    version.mkdir(parents=True)
    shutil.copyfile(Path(__file__).with_name("triton_preprocess.py"), version / "model.py")
    settings = {"preprocess": default_options(model, first.target).preprocess, "output": first.input_name}
    (version / PREPROCESS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    (root / preprocess / "config.pbtxt").write_text(_preprocess_config(preprocess, first, max_batch))


def _write_ovms(root: Path, base: str, artifacts: list[ArtifactIO]) -> None:
    models = []
    for artifact in artifacts:
        name = entry_name(base, artifact.target)
        _copy_model(artifact, root / name / "1", "model.xml")
        models.append({"config": {"name": name, "base_path": name, "target_device": "CPU"}})
    (root / "config.json").write_text(json.dumps({"model_config_list": models}, indent=2) + "\n")


def _copy_model(artifact: ArtifactIO, version: Path, filename: str) -> None:
    version.mkdir(parents=True)
    target = version / filename
    shutil.copyfile(artifact.model_file, target)
    if artifact.model_file.suffix == ".xml":
        shutil.copyfile(artifact.model_file.with_suffix(".bin"), target.with_suffix(".bin"))
