"""Backends behind one Runtime interface. Importing this package registers every backend (no heavy imports)."""

from ppdeploy.runtimes.base import RUNTIMES, Runtime, TensorSpec, register_runtime

__all__ = ["RUNTIMES", "Runtime", "TensorSpec", "register_runtime"]
