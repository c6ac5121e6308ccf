"""A deployment package on disk, and the measured decisions ``--backend auto`` prefers.

A package is a folder: ``decision.json`` (machine fingerprint, candidates, measurements, strategy, choice),
``model/`` (the chosen artifact with its manifest, or the Paddle model when Paddle itself won),
``inference_cls.yaml``, the parity report (``parity.json``, ``parity.junit.xml``), the bench report
(``bench.json``, ``bench.png``) and a README with the commands that reproduce and run it.
A copy of ``decision.json`` is kept in the cache under ``decisions/<model key>.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppdeploy.errors import DeployError, one_line
from ppdeploy.fsutil import atomic_write_text, cache_home

DECISION_FILE = "decision.json"
FORMAT = "ppdeploy-decision/1"
MODEL_DIR = "model"


def machine_fingerprint() -> dict[str, Any]:
    """What a speed measurement depends on: CPU model, core count, ISA flags."""
    from ppdeploy.doctor import cpu_info

    cpu, isa = cpu_info()
    return {"cpu": cpu, "cores": os.cpu_count(), "isa": sorted(name for name, present in isa.items() if present)}


def machine_difference(recorded: dict[str, Any]) -> str | None:
    """``None`` when ``recorded`` is this machine's fingerprint, else what differs, in words."""
    here = machine_fingerprint()
    changed = [f"{key} {recorded.get(key)!r} there, {here[key]!r} here" for key in here if recorded.get(key) != here[key]]
    return "; ".join(changed) or None


@dataclass(frozen=True)
class Decision:
    """A loaded ``decision.json`` (``folder``: the package, or ``None`` for a cached decision)."""

    data: dict[str, Any]
    folder: Path | None = None

    @property
    def choice(self) -> dict[str, Any]:
        return self.data["choice"]

    @property
    def label(self) -> str:
        return self.choice["label"]

    @property
    def artifact_dir(self) -> Path:
        assert self.folder is not None
        return self.folder / MODEL_DIR

    def describe(self) -> str:
        choice = self.choice
        return (f"'{choice['label']}' at batch {choice['batch_size']} in {choice['mode']} mode "
                f"({choice['images_per_s']:.1f} img/s, measured {self.data.get('created', '?')}, strategy "
                f"{self.data.get('strategy')})")

    def mismatch(self) -> str | None:
        """Why this decision may not hold here (another machine), or ``None``."""
        return machine_difference(self.data.get("machine", {}))


def is_package(path: str | os.PathLike) -> bool:
    return (Path(path) / DECISION_FILE).is_file()


def load_package(folder: str | os.PathLike) -> Decision:
    """Read a package's ``decision.json`` (one-line error naming the file when it is not a valid package)."""
    folder = Path(folder)
    decision = _read(folder / DECISION_FILE)
    if not (folder / MODEL_DIR).is_dir():
        raise DeployError(one_line(str(folder / MODEL_DIR), "missing from the deployment package",
                                   "re-create the package with 'deploy optimize ... -o DIR'"))
    return Decision(decision, folder)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DeployError(one_line(str(path), f"not readable as a decision ({exc.__class__.__name__})",
                                   "re-create it with 'deploy optimize'")) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "choice" not in data:
        raise DeployError(one_line(str(path), f"not a {FORMAT} file", "re-create it with 'deploy optimize'"))
    return data


def decision_path(model_key: str) -> Path:
    return cache_home() / "decisions" / f"{model_key}.json"


def save_decision(model_key: str, data: dict[str, Any]) -> Path:
    """Keep ``data`` in the cache for ``--backend auto`` (atomically)."""
    return atomic_write_text(decision_path(model_key), json.dumps(data, indent=2))


def cached_decision(model_key: str) -> Decision | None:
    """The measured decision for this model in the cache, if any (an unreadable one counts as none)."""
    path = decision_path(model_key)
    if not path.is_file():
        return None
    try:
        return Decision(_read(path))
    except DeployError:
        return None


def cached_decisions() -> list[tuple[str, Decision]]:
    """Every cached decision by model key (``deploy doctor``)."""
    folder = cache_home() / "decisions"
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            found.append((path.stem, Decision(_read(path))))
        except DeployError:
            continue
    return found
