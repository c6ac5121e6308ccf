"""Export a zoo ResNet as a Paddle inference model, the way PaddleClas's ``tools/export_model.py`` does.

The exported program takes ``x`` float32 ``[N, 3, H, W]`` (dynamic batch) and ends with a softmax over the
classes. Beside it go ``inference_cls.yaml`` (PaddleClas's deploy config layout) and ``export.json`` (what was
exported, how, and how long it took). Two formats:

- ``json``: Paddle 3 PIR, ``inference.json`` + ``inference.pdiparams`` (Paddle's default);
- ``pdmodel``: the legacy ProgramDesc, ``inference.pdmodel`` + ``inference.pdiparams`` (+ ``.info``), which
  OpenVINO reads. Paddle writes it only when ``FLAGS_enable_pir_api=0`` is in the environment before it is
  imported.

A process exports its own format (:func:`native_format`) in-process; the other one runs in a child process
(``python -m ppdeploy.models.export``) started with the flag set accordingly.

The weights are either a PaddleClas ``.pdparams`` or seeded random numbers (``ppdeploy.models.synthetic``) whose
BatchNorm statistics are measured on the shape photos the caller passes in and whose classifier is scaled so that
predictions look like a trained model's.
Everything is written into a staging folder first: a failed or killed export leaves nothing at ``out_dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ppdeploy import errors
from ppdeploy.errors import ConversionError, DeployError, ModelNotFoundError, first_line, one_line
from ppdeploy.fsutil import atomic_write_text, scratch_dir, staging_dir
from ppdeploy.models.paddle_files import PREFIX
from ppdeploy.models.synthetic import SYNTHETIC_RECIPE, synthesize_from_images
from ppdeploy.models.weights import load_weights
from ppdeploy.models.zoo import ModelSpec, get_model

if TYPE_CHECKING:
    import paddle

    from ppdeploy.samples import ImageSet

FORMATS = ("json", "pdmodel")
MODEL_FILES = {"json": ("inference.json", "inference.pdiparams"),
               "pdmodel": ("inference.pdmodel", "inference.pdiparams")}
PIR_FLAG = "FLAGS_enable_pir_api"

_ERROR_LINE = re.compile(r"^(\w+Error): (.*)$")


def export_model(spec: ModelSpec, out_dir: str | os.PathLike, *, weights: str | os.PathLike | None = None,
                 synthetic: bool = False, fmt: str = "json", seed: int = 0,
                 shape_images: ImageSet | None = None) -> Path:
    """Write ``spec`` as a Paddle inference model into ``out_dir`` (replacing what is there, atomically).

    Args:
        spec: the zoo entry to export.
        out_dir: the folder to create; an existing one is replaced only once the export has succeeded.
        weights: a PaddleClas ``.pdparams`` for ``spec``. It is a pickle, and unpickling runs code: pass only
            files you trust. Its names and shapes must match the architecture exactly.
        synthetic: use seeded random weights instead (predictions are meaningless, but look realistic).
        fmt: ``"json"`` (Paddle 3 PIR) or ``"pdmodel"`` (legacy ProgramDesc); a format other than this
            process's :func:`native_format` is exported in a child process.
        seed: seeds the synthetic weights; the same seed gives the same weights.
        shape_images: with ``synthetic``, the photos that shape the weights (BatchNorm statistics, classifier);
            required then, and recorded in ``export.json``. ``ppdeploy.models.resolve.default_shape_set`` gives
            the built-in ``shape`` photos, which never judge anything.

    Returns:
        ``out_dir``.

    Raises:
        DeployError: bad options (unknown format, neither or both of ``weights`` and ``synthetic``, ``synthetic``
            without ``shape_images``).
        ModelNotFoundError: the weights file does not exist.
        WeightsMismatchError: the weights file is unreadable, or its names or shapes do not fit ``spec``.
        ConversionError: Paddle failed to save the model (or the child process failed).
    """
    _check_options(spec, weights=weights, synthetic=synthetic, fmt=fmt)
    if synthetic and shape_images is None:
        raise _no_shape_images(spec)
    weights = Path(weights) if weights is not None else None
    out_dir = Path(out_dir)
    started = time.perf_counter()
    photos = list(shape_images.images) if synthetic else None
    shape_set = shape_images.record() if synthetic else None
    with staging_dir(out_dir) as staging:
        if fmt == native_format():
            export_into(spec, staging, weights=weights, fmt=fmt, seed=seed, shape_images=photos)
        else:
            _export_in_child(spec, staging, weights=weights, fmt=fmt, seed=seed, shape_images=photos)
        write_deploy_yaml(spec, staging)
        record = {"model": spec.name, "synthetic": weights is None, "seed": seed if weights is None else None,
                  "format": fmt, "weights": str(weights.resolve()) if weights else None,
                  "recipe": SYNTHETIC_RECIPE if weights is None else None, "shape_set": shape_set,
                  "input_shape": [None, 3, spec.input_size, spec.input_size], "paddle": _paddle_version(),
                  "seconds": round(time.perf_counter() - started, 3)}
        atomic_write_text(staging / "export.json", json.dumps(record, indent=2) + "\n")
    return out_dir


def _check_options(spec: ModelSpec, *, weights: str | os.PathLike | None, synthetic: bool, fmt: str) -> None:
    if fmt not in FORMATS:
        raise DeployError(one_line(f"format '{fmt}'", "unknown", "choose one of: " + ", ".join(FORMATS)))
    if synthetic and weights is not None:
        raise DeployError(one_line(f"export {spec.name}", "both weights and synthetic given", "pass only one"))
    if not synthetic and weights is None:
        raise DeployError(one_line(f"export {spec.name}", "no weights to export",
                                   "pass weights=<PaddleClas .pdparams> (--weights) or synthetic=True "
                                   "(--synthetic) for seeded random weights"))
    if weights is not None and not Path(weights).is_file():
        raise ModelNotFoundError(one_line(f"weights '{weights}'", "file not found",
                                          f"give the path of a {spec.name} .pdparams file"))


def _no_shape_images(spec: ModelSpec) -> DeployError:
    return DeployError(one_line(f"export {spec.name}", "synthetic weights without shape images",
                                "pass shape_images=ppdeploy.models.resolve.default_shape_set() or your own "
                                "ImageSet of photos"))


def export_into(spec: ModelSpec, directory: Path, *, weights: Path | None = None, fmt: str = "json", seed: int = 0,
                shape_images: Sequence[np.ndarray] | None = None) -> None:
    """Build, fill and save the model into the existing folder ``directory``, in this process.

    ``weights=None`` means synthetic weights, shaped by ``shape_images`` (RGB ``uint8`` photos, then required).
    ``fmt`` must match this process's Paddle mode (see module doc).
    """
    import paddle

    if weights is None and shape_images is None:
        raise _no_shape_images(spec)

    from ppdeploy.models.resnet import build_resnet

    paddle.seed(seed)
    with paddle.utils.unique_name.guard():  # fresh layer names, so exporting twice in a process writes equal files
        net = build_resnet(spec)
        if weights is not None:
            load_weights(net, spec, weights)
        else:
            synthesize_from_images(net, spec, shape_images, seed=seed)
        save_inference(net, spec, directory, fmt)


# --- saving -----------------------------------------------------------------------------------------------------


def save_inference(net: paddle.nn.Layer, spec: ModelSpec, directory: Path, fmt: str) -> None:
    """``paddle.jit.save`` ``net`` + softmax with input ``x`` [None, 3, H, W] as ``directory/inference.*``.

    Raises:
        ConversionError: Paddle failed, or wrote another format than ``fmt`` (the PIR flag did not take).
    """
    import paddle

    model = _with_softmax(net)
    model.eval()
    spec_x = paddle.static.InputSpec([None, 3, spec.input_size, spec.input_size], "float32", "x")
    try:
        static = paddle.jit.to_static(model, input_spec=[spec_x], full_graph=True)
        paddle.jit.save(static, str(directory / PREFIX))
    except Exception as exc:  # Paddle's own error types vary by version and mode
        raise ConversionError(one_line(f"export {spec.name} ({fmt})", f"paddle.jit.save failed: {first_line(exc)}",
                                       "check the Paddle install (deploy doctor)")) from exc
    missing = [name for name in MODEL_FILES[fmt] if not (directory / name).is_file()]
    if missing:
        raise ConversionError(one_line(f"export {spec.name} ({fmt})", f"Paddle did not write {', '.join(missing)}",
                                       f"for pdmodel, set {PIR_FLAG}=0 before Python starts, or use fmt='json'"))


def _with_softmax(net: paddle.nn.Layer) -> paddle.nn.Layer:
    """``net`` followed by softmax over the classes, as PaddleClas's ExportModel wrapper."""
    from paddle import nn

    return nn.Sequential(net, nn.Softmax(axis=-1))


def write_deploy_yaml(spec: ModelSpec, directory: Path) -> Path:
    """``inference_cls.yaml`` in PaddleClas's deploy layout: the model's preprocessing and a top-5 head."""
    import yaml

    document = {
        "Global": {"inference_model_dir": ".", "batch_size": 1, "use_gpu": False},
        "PreProcess": {"transform_ops": spec.preprocess_config().to_yaml_ops()},
        "PostProcess": {"name": "Topk", "topk": 5},
    }
    text = yaml.dump(document, Dumper=_deploy_dumper(), sort_keys=False)
    return atomic_write_text(directory / "inference_cls.yaml", text)


def _deploy_dumper() -> type:
    """A safe YAML dumper writing PaddleClas's style: ``mean: [0.485, ...]`` inline, ``- ToCHWImage:`` bare."""
    import yaml

    class DeployDumper(yaml.SafeDumper):
        pass

    def represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
        inline = all(not isinstance(item, list | dict) for item in data)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=inline)

    DeployDumper.add_representer(list, represent_list)
    DeployDumper.add_representer(type(None), lambda dumper, _: dumper.represent_scalar("tag:yaml.org,2002:null", ""))
    return DeployDumper


def program_op_counts(model_file: str | os.PathLike) -> Counter[str]:
    """How many operators of each type an exported program holds, by the legacy names (``conv2d``, ``pool2d``).

    Reads ``inference.json`` (PIR: ``pd_op`` names, printed as ``1.conv2d``) or ``inference.pdmodel``
    (ProgramDesc protobuf; needs paddle). In-place variants count under their plain name (``batch_norm_``
    as ``batch_norm``).
    """
    path = Path(model_file)
    if path.suffix == ".json":
        program = json.loads(path.read_text(encoding="utf-8"))["program"]
        ops = [op["#"].split(".", 1)[-1] for region in program["regions"] for block in region["blocks"]
               for op in block["ops"] if op["#"] != "p"]  # "p": a parameter, not an operator
    else:
        from paddle.base.proto import framework_pb2

        desc = framework_pb2.ProgramDesc.FromString(path.read_bytes())
        ops = [op.type for block in desc.blocks for op in block.ops]
    return Counter(name.rstrip("_") for name in ops)


# --- the other format, in a child process ----------------------------------------------------------------------


def native_format() -> str:
    """The format ``paddle.jit.save`` writes in this process: ``"pdmodel"`` when PIR is off, else ``"json"``.

    Once paddle is imported its flag decides; before, the environment variable it will read does.
    """
    if "paddle" in sys.modules:
        import paddle

        return "json" if paddle.get_flags(PIR_FLAG)[PIR_FLAG] else "pdmodel"
    return "pdmodel" if os.environ.get(PIR_FLAG, "").strip().lower() in {"0", "false", "off"} else "json"


def _export_in_child(spec: ModelSpec, directory: Path, *, weights: Path | None, fmt: str, seed: int,
                     shape_images: Sequence[np.ndarray] | None) -> None:
    """Run :func:`export_into` in ``python -m ppdeploy.models.export --into``, with the PIR flag ``fmt`` needs.

    The child gets the spec itself (not just its name) and the shape photos through a scratch folder.

    Raises:
        DeployError: the child's own error (same class and message), or ConversionError if it died otherwise.
    """
    env = {**os.environ, PIR_FLAG: "0" if fmt == "pdmodel" else "1"}
    with scratch_dir("export") as scratch:  # a killed run's folder is swept by a later one
        spec_file = Path(scratch) / "spec.json"
        spec_file.write_text(json.dumps(dataclasses.asdict(spec)), encoding="utf-8")
        command = [sys.executable, "-m", "ppdeploy.models.export", spec.name, str(directory), "--fmt", fmt,
                   "--seed", str(seed), "--into", "--spec-json", str(spec_file)]
        command += ["--weights", str(weights)] if weights is not None else ["--synthetic"]
        if shape_images is not None:
            shape_file = Path(scratch) / "shape.npz"
            np.savez(shape_file, *[np.asarray(image) for image in shape_images])
            command += ["--shape-npz", str(shape_file)]
        result = subprocess.run(command, check=False, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise _child_error(spec, fmt, result)


def _child_error(spec: ModelSpec, fmt: str, result: subprocess.CompletedProcess) -> DeployError:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    match = _ERROR_LINE.match(lines[-1]) if lines else None
    error_type = getattr(errors, match.group(1), None) if match else None
    if isinstance(error_type, type) and issubclass(error_type, DeployError):
        return error_type(match.group(2))
    tail = lines[-1] if lines else f"exit code {result.returncode}"
    return ConversionError(one_line(f"export {spec.name} ({fmt}) in a child process", f"failed: {tail}",
                                    "run 'python -m ppdeploy.models.export' by hand to see the full log"))


def _spec_from_json(path: str) -> ModelSpec:
    fields = json.loads(Path(path).read_text(encoding="utf-8"))
    return ModelSpec(**{key: tuple(value) if isinstance(value, list) else value for key, value in fields.items()})


def _paddle_version() -> str | None:
    try:
        return importlib.metadata.version("paddlepaddle")
    except importlib.metadata.PackageNotFoundError:
        return None


def _load_shape(path: str | None) -> list[np.ndarray] | None:
    if path is None:
        return None
    with np.load(path) as archive:
        return [archive[f"arr_{index}"] for index in range(len(archive.files))]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ppdeploy.models.export NAME OUT [--synthetic | --weights W] [--fmt F] [--seed S]``."""
    parser = argparse.ArgumentParser(prog="python -m ppdeploy.models.export", description=main.__doc__)
    parser.add_argument("model", help="zoo name, e.g. ResNet50_vd")
    parser.add_argument("out_dir", type=Path)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--synthetic", action="store_true", help="seeded random weights")
    source.add_argument("--weights", type=Path, help="PaddleClas .pdparams (a pickle: only files you trust)")
    parser.add_argument("--fmt", choices=FORMATS, default="json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--into", action="store_true", help=argparse.SUPPRESS)  # write model files into out_dir
    parser.add_argument("--shape-npz", help=argparse.SUPPRESS)  # .npz of the photos that shape synthetic weights
    parser.add_argument("--spec-json", help=argparse.SUPPRESS)  # the ModelSpec itself, for specs not in the zoo
    args = parser.parse_args(argv)
    try:
        spec = _spec_from_json(args.spec_json) if args.spec_json else get_model(args.model)
        if args.into:
            export_into(spec, args.out_dir, weights=args.weights, fmt=args.fmt, seed=args.seed,
                        shape_images=_load_shape(args.shape_npz))
        else:
            # Run by hand, this is a command like ``deploy export``: it picks the same default shape photos.
            from ppdeploy.models.resolve import default_shape_set

            export_model(spec, args.out_dir, weights=args.weights, synthetic=args.synthetic, fmt=args.fmt,
                         seed=args.seed, shape_images=default_shape_set() if args.synthetic else None)
    except DeployError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)  # the last line: the parent re-raises it
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
