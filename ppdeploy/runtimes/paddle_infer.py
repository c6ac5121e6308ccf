"""Paddle Inference backend: the reference every other backend is compared against."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ppdeploy.errors import ArtifactError, BackendUnavailableError, first_line, one_line
from ppdeploy.models.paddle_files import PaddleModel, check_params_file, find_paddle_model
from ppdeploy.registry import Backend, register_backend
from ppdeploy.runtimes.base import Runtime, TensorSpec

if TYPE_CHECKING:
    import numpy as np

GPU_HINT = ("install paddlepaddle-gpu on a CUDA machine (PyPI has 2.6.2 for CUDA 11.8, which reads .pdmodel "
            "only; Paddle 3 GPU wheels come from paddlepaddle.org.cn)")
# Load errors that come from the weights file rather than the program.
_PARAMS_ERROR = re.compile(r"param|tensor desc|load_combine|pdiparams", re.IGNORECASE)


class PaddleRuntime(Runtime):
    """Paddle Inference predictor over a Paddle model folder (``inference.json`` or ``.pdmodel``).

    CPU runs with oneDNN and ``threads`` math threads (all cores by default); GPU needs a CUDA build of
    Paddle and a visible device.
    """

    name = "paddle"

    def _load(self) -> None:
        import paddle.inference as pi

        model = find_paddle_model(self.artifact_dir)
        check_params_file(model.params_file)  # Paddle may load a cut file and compute NaN or wrong answers
        lanes, threads = self.lane_plan() if self.device == "cpu" else (1, None)
        threads = threads or os.cpu_count() or 1
        self._predictor = _create_predictor(pi, self._config(pi, model, threads), model)
        feed_name, fetch_name = self._predictor.get_input_names()[0], self._predictor.get_output_names()[0]
        self._run = _lane(self._predictor)
        self.requests = lanes
        # Throughput mode: one predictor per request in flight, each always run from its own thread (Runtime).
        self._lanes = [_lane(_create_predictor(pi, self._config(pi, model, threads), model))
                       for _ in range(lanes)] if lanes > 1 else []
        shapes = declared_shapes(model)
        self.inputs = (_spec(feed_name, self._predictor.get_input_handle(feed_name), shapes, rank=4),)
        self.outputs = (_spec(fetch_name, self._predictor.get_output_handle(fetch_name), shapes, rank=2),)
        self.details = {"precision": "fp32", "device": self.device, "format": model.fmt,
                        "onednn": "on" if self.device == "cpu" else "off",
                        "threads": str(threads) if self.device == "cpu" else "n/a"}

    def lane_plan(self) -> tuple[int, int | None]:
        """One request in flight in either mode, on every core: ``predictor.run`` holds the GIL, so predictors run
        from several threads take turns. Measured (ResNet50, 2 cores): one 2-thread predictor 43.6 img/s, two
        1-thread predictors on two threads 24.6 img/s with one core idle; a Python thread beside a running
        predictor got 12 % of its usual speed. ``requests`` set by the caller still asks for more."""
        if self.mode == "latency" or not self.requests:
            return 1, self.threads
        return super().lane_plan()

    def _config(self, pi, model: PaddleModel, threads: int):
        config = pi.Config(str(model.model_file), str(model.params_file))  # explicit files: json and pdmodel
        config.disable_glog_info()
        if self.device == "gpu":
            _enable_gpu(config)
        else:
            config.disable_gpu()
            config.enable_onednn()
            config.set_cpu_math_library_num_threads(threads)
        return config

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch)

    def close(self) -> None:
        self._predictor = self._run = None
        super().close()


def _lane(predictor):
    """One call of ``predictor`` on a batch, with its own input/output handles."""
    feed = predictor.get_input_handle(predictor.get_input_names()[0])
    fetch = predictor.get_output_handle(predictor.get_output_names()[0])

    def run(batch):
        feed.reshape(list(batch.shape))
        feed.copy_from_cpu(batch)
        predictor.run()
        return fetch.copy_to_cpu()

    return run


def _enable_gpu(config) -> None:
    import paddle

    if not paddle.device.is_compiled_with_cuda():
        raise BackendUnavailableError(one_line("backend 'paddle' on gpu", "this Paddle build has no CUDA",
                                               GPU_HINT))
    if paddle.device.cuda.device_count() < 1:
        raise BackendUnavailableError(one_line("backend 'paddle' on gpu", "no CUDA device is visible",
                                               "check nvidia-smi and CUDA_VISIBLE_DEVICES"))
    config.enable_use_gpu(256, 0)


def _create_predictor(pi, config, model: PaddleModel):
    try:
        return pi.create_predictor(config)
    except Exception as exc:  # Paddle's C++ enforce errors arrive as RuntimeError/ValueError
        reason = first_line(exc)
        culprit = model.params_file if _PARAMS_ERROR.search(str(exc)) else model.model_file
        raise ArtifactError(one_line(str(culprit), f"Paddle cannot load the model ({reason})",
                                     "the file looks truncated or damaged: export or download the model again"
                                     )) from exc


def _spec(name: str, handle, shapes: dict[str, tuple[int | None, ...]], rank: int) -> TensorSpec:
    # Before the first run Paddle's handles report shape [0]; the program's declared shape is the real spec.
    shape = shapes.get(name, (None,) * rank)
    dtype = str(handle.type()).rsplit(".", 1)[-1].lower()
    return TensorSpec(name, shape, dtype)


def declared_shapes(model: PaddleModel) -> dict[str, tuple[int | None, ...]]:
    """Declared shapes of the model's feed and fetch variables (``-1`` → ``None``); ``{}`` if unreadable."""
    try:
        raw = _json_shapes(model.model_file) if model.fmt == "json" else _pdmodel_shapes(model.model_file)
    except Exception:  # an unknown format revision only costs the static dims in the spec
        return {}
    return {name: tuple(None if dim < 0 else int(dim) for dim in dims) for name, dims in raw.items()}


def _json_shapes(path: Path) -> dict[str, list[int]]:
    ops = json.loads(path.read_text())["program"]["regions"][0]["blocks"][0]["ops"]
    shapes = {}
    for op in ops:
        if op.get("#") in ("1.data", "1.fetch"):
            attrs = {attr["N"]: attr["AT"]["D"] for attr in op.get("A", [])}
            shapes[attrs["name"]] = op["O"][0]["TT"]["D"][1] if op.get("O") else attrs.get("shape", [])
    return shapes


def _pdmodel_shapes(path: Path) -> dict[str, list[int]]:
    from paddle.base.proto import framework_pb2

    block = framework_pb2.ProgramDesc.FromString(path.read_bytes()).blocks[0]
    tensors = {var.name: var.type.dense_tensor.tensor for var in block.vars}
    names = [arg for op in block.ops if op.type == "feed" for out in op.outputs for arg in out.arguments]
    names += [arg for op in block.ops if op.type == "fetch" for inp in op.inputs for arg in inp.arguments]
    return {name: list(tensors[name].dims) for name in names if name in tensors}


def precision_probe() -> str:
    """``deploy doctor``: what Paddle Inference computes in here."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # paddle warns about ccache at import: noise for a doctor report
        import paddle

    cuda = paddle.device.is_compiled_with_cuda()
    return f"fp32 with oneDNN on CPU; compiled with CUDA: {'yes' if cuda else 'no'}"


BACKEND = register_backend(Backend(
    name="paddle", runtime=PaddleRuntime, imports=("paddle",), extra="paddle",
    distributions=("paddlepaddle", "paddlepaddle-gpu"), exclusive=True, devices=("cpu", "gpu"),
    auto={"cpu": (90, "paddle"), "gpu": (90, "paddle")}, precision_probe=precision_probe,
    fix_mixed={"gpu": "pip uninstall -y paddlepaddle paddlepaddle-gpu, then install paddlepaddle-gpu 3.x from the "
                      "index paddlepaddle.org.cn gives for your CUDA",
               "cpu": "pip uninstall -y paddlepaddle paddlepaddle-gpu && pip install 'paddlepaddle>=3.3,<4'"}))
