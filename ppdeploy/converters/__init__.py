"""Conversion edges from a Paddle inference model to ONNX, OpenVINO IR and TensorRT engines."""

from ppdeploy.converters.base import TARGETS, ConvertOptions, ConvertResult, Target

__all__ = ["TARGETS", "ConvertOptions", "ConvertResult", "Target"]
