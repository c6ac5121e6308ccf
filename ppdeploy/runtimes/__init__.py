"""Backends behind one Runtime interface. Importing this package registers every backend (no heavy imports)."""

import ppdeploy.runtimes.ort  # noqa: F401  (each module registers its backend)
import ppdeploy.runtimes.ov  # noqa: F401
import ppdeploy.runtimes.paddle_infer  # noqa: F401
import ppdeploy.runtimes.trt  # noqa: F401
from ppdeploy.runtimes.base import RUNTIMES, Runtime, TensorSpec, register_runtime

__all__ = ["RUNTIMES", "Runtime", "TensorSpec", "register_runtime"]
