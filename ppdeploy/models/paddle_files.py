"""Locate the files of a Paddle inference model directory, in either format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ppdeploy.errors import ModelNotFoundError, one_line
from ppdeploy.fsutil import sha256_files

PREFIX = "inference"


@dataclass(frozen=True)
class PaddleModel:
    """A Paddle inference model on disk.

    Attributes:
        directory: the folder.
        model_file: ``inference.json`` (Paddle 3 PIR) or ``inference.pdmodel`` (legacy ProgramDesc).
        params_file: ``inference.pdiparams``.
        fmt: ``"json"`` or ``"pdmodel"``.
    """

    directory: Path
    model_file: Path
    params_file: Path
    fmt: str

    @property
    def yaml_file(self) -> Path | None:
        path = self.directory / "inference_cls.yaml"
        return path if path.is_file() else None

    def content_hash(self) -> str:
        """sha256 over the model and params files: changes whenever the model does."""
        return sha256_files([self.model_file, self.params_file])


def find_paddle_model(directory: str | Path) -> PaddleModel:
    """Return the model in ``directory`` (``inference.json`` preferred over ``inference.pdmodel``).

    Raises:
        ModelNotFoundError: the folder or one of its files is missing, naming what is missing.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelNotFoundError(one_line(str(directory), "not a directory",
                                          "give a folder holding inference.json or inference.pdmodel "
                                          "plus inference.pdiparams, or a zoo name"))
    for fmt in ("json", "pdmodel"):
        model_file = directory / f"{PREFIX}.{fmt}"
        if model_file.is_file():
            params_file = directory / f"{PREFIX}.pdiparams"
            if not params_file.is_file():
                raise ModelNotFoundError(one_line(str(params_file), "missing (the model's weights)",
                                                  "copy inference.pdiparams next to " + model_file.name))
            return PaddleModel(directory, model_file, params_file, fmt)
    raise ModelNotFoundError(one_line(str(directory), "holds no inference.json or inference.pdmodel",
                                      "point at an exported Paddle inference model (deploy export)"))
