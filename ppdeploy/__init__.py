"""ppdeploy: PaddleClas ResNet models on ONNX Runtime, OpenVINO and TensorRT, checked against Paddle Inference.

Importing the package is cheap: no framework is imported until a backend is used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.3.0"
__all__ = ["Classifier", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Classifier":
        from ppdeploy.classifier import Classifier

        return Classifier
    raise AttributeError(f"module 'ppdeploy' has no attribute {name!r}")
