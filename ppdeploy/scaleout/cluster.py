"""What both Ray engines share: the installed check, joining or starting Ray, and the model every worker loads."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from ppdeploy.errors import DeployError, first_line, one_line


def require_ray(*extras: str) -> None:
    """Fail with one line naming the extra to install when Ray (or one of its ``extras``) is missing.

    Raises:
        BackendUnavailableError: ``ray`` or e.g. ``ray.serve`` cannot be imported.
    """
    from ppdeploy.registry import require

    require("--engine ray", ("ray", *(f"ray.{extra}" for extra in extras)), "ray")


@dataclass(frozen=True)
class ModelConfig:
    """The :class:`~ppdeploy.classifier.Classifier` arguments each Ray replica or actor loads its model with."""

    model: str
    backend: str = "auto"
    synthetic: bool = False
    fmt: str = "json"
    device: str = "cpu"
    threads: int | None = None
    batch_size: int = 8
    topk: int = 5
    mode: str = "latency"

    def load(self, log: Any = None) -> Any:
        from ppdeploy.classifier import Classifier

        return Classifier(log=log, **asdict(self))

    def check(self, log: Any = None) -> None:
        """Load the model once here, before Ray starts: a bad name or backend fails as one line, and conversions
        are cached before the workers (on this machine) look for them."""
        with self.load(log):
            pass


def connect(address: str | None = None) -> bool:
    """Join the Ray cluster at ``address`` (``auto``, ``HOST:6379``, ``ray://HOST:10001``), or start a local one.

    ``$PPDEPLOY_*`` variables (the cache folder, the model mirror) are passed on to every worker.

    Returns:
        True when this call started Ray (the caller shuts it down), False when Ray was already initialised.

    Raises:
        DeployError: the cluster cannot be reached.
    """
    import ray

    if ray.is_initialized():
        return False
    env = {name: value for name, value in os.environ.items() if name.startswith("PPDEPLOY_")}
    try:
        ray.init(address=address, runtime_env={"env_vars": env} if env else None, include_dashboard=False,
                 logging_level="WARNING", configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        subject = f"ray cluster '{address}'" if address else "local ray instance"
        raise DeployError(one_line(subject, f"cannot be reached ({first_line(exc)})",
                                   "start it with 'ray start --head', or check --address")) from None
    return True

