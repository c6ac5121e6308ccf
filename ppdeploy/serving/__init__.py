"""HTTP serving for a classifier: FastAPI + uvicorn, dynamic batching, Prometheus metrics (``deploy serve``).

Heavy imports (FastAPI, uvicorn, the backends) happen when these names are first used.
"""

from __future__ import annotations

from typing import Any

from ppdeploy.serving.settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "serve", "serve_in_thread"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from ppdeploy.serving.app import create_app

        return create_app
    if name in ("serve", "serve_in_thread"):
        from ppdeploy.serving import server

        return getattr(server, name)
    raise AttributeError(f"module 'ppdeploy.serving' has no attribute {name!r}")
