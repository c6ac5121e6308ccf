"""Triton Python-backend model: encoded image files in, the model's preprocessed FP32 input out.

``deploy export-repo --format triton`` copies this file to ``<model>_preprocess/1/model.py`` beside a
``preprocess.json`` (the model's PaddleClas preprocessing and the name of the output tensor). Each image is decoded
and preprocessed by ppdeploy's own functions, the ones ``deploy run`` and ``deploy serve`` use, so Triton's
ensemble feeds the artifact exactly what ``deploy run`` would. Triton's Python environment needs ``pip install
ppdeploy`` (the core: numpy, OpenCV, no backend).

Runs inside Triton only (``triton_python_backend_utils`` is Triton's module); not imported by ppdeploy itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ppdeploy.images import decode_image_bytes
from ppdeploy.preprocess import PreprocessConfig, preprocess


def preprocess_images(images: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """BYTES ``[N]`` or ``[N, 1]`` of encoded image files -> FP32 ``[N, 3, H, W]`` (raises ``ImageError``)."""
    return np.stack([preprocess(decode_image_bytes(bytes(data), f"image[{index}]"), cfg)
                     for index, data in enumerate(images.reshape(-1))])


class TritonPythonModel:
    """Triton's Python-backend interface: ``initialize``, ``execute``."""

    def initialize(self, args: dict) -> None:
        settings = json.loads((Path(__file__).parent / "preprocess.json").read_text())
        self.cfg = PreprocessConfig(**settings["preprocess"])
        self.output = settings["output"]

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
            try:
                tensor = pb_utils.Tensor(self.output, preprocess_images(images, self.cfg))
                responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            except Exception as exc:  # noqa: BLE001 - an undecodable image fails its request, not the model
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
