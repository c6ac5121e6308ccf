"""Conversion edges from a Paddle inference model to ONNX, OpenVINO IR and TensorRT engines.

Each edge module registers the targets it builds (``ppdeploy.registry.Target``); ``pipeline`` runs them.
"""

from ppdeploy.converters.base import ConvertOptions, ConvertResult

__all__ = ["ConvertOptions", "ConvertResult"]
