"""The PaddleClas ResNet zoo: records, architectures, export and fetching."""

from ppdeploy.models.zoo import MODELS, ModelSpec, get_model, register_model

__all__ = ["MODELS", "ModelSpec", "get_model", "register_model"]
