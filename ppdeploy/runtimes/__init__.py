"""Backends behind one Runtime interface. Each module registers its ``Backend`` record (``ppdeploy.registry``)."""

from ppdeploy.runtimes.base import Runtime, TensorSpec

__all__ = ["Runtime", "TensorSpec"]
