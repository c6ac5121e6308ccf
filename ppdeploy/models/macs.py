"""A zoo model's compute per image, in multiply-accumulates: what a throughput is weighed by against a ceiling.

The seed table's "FLOPs(G)" count two operations per multiply-accumulate: ResNet50 at 224x224 is 8.19 in it and
4.1 GMACs here. Both come from the convolutions and the classifier only (BatchNorm, ReLU, pooling and the
residual additions are a fraction of a percent).
"""

from __future__ import annotations

import dataclasses

from ppdeploy.errors import DeployError, one_line
from ppdeploy.models.resnet import count_params_and_flops
from ppdeploy.models.zoo import get_model


def gmacs(model_name: str, image_size: int | None = None) -> float:
    """1e9 multiply-accumulates of one image through ``model_name`` at ``image_size`` (default: its own size).

    Computed from the architecture's conv and fc shapes (:func:`ppdeploy.models.resnet.conv_plan`), so another
    input size is counted exactly, not scaled.
    """
    spec = get_model(model_name)
    if image_size is not None:
        if image_size < 32:
            raise DeployError(one_line(f"image size {image_size}", "too small for a ResNet (5 stride-2 stages)",
                                       "use 32 or more, e.g. 224"))
        spec = dataclasses.replace(spec, input_size=image_size)
    return count_params_and_flops(spec)[1] / 2e9
