"""Class labels and PaddleClas's ``Topk`` post-processing (``deploy/python/postprocess.py``)."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ppdeploy.errors import ArtifactError, DeployError, InputSpecError, one_line

DATA_DIR = Path(__file__).resolve().parent / "data"
_LABEL_SUFFIX = "_label_list.txt"


def label_list_names() -> list[str]:
    """The label lists shipped with ppdeploy (``imagenet1k``, ...)."""
    return sorted(path.name[: -len(_LABEL_SUFFIX)] for path in DATA_DIR.glob(f"*{_LABEL_SUFFIX}"))


def load_labels(name: str = "imagenet1k") -> list[str]:
    """The class names of a shipped label list, indexed by class id.

    Lines are ``"<id> <name>"`` and are parsed as PaddleClas does (only the newline is stripped, so the
    names are byte-for-byte PaddleClas's ``label_names``).

    Raises:
        DeployError: no such label list.
        ArtifactError: the file's ids are not 0, 1, 2, ... in order.
    """
    return list(_read_labels(name))


@functools.lru_cache(maxsize=8)
def _read_labels(name: str) -> tuple[str, ...]:
    path = DATA_DIR / f"{name}{_LABEL_SUFFIX}"
    if not path.is_file():
        raise DeployError(one_line(f"label list '{name}'", "not shipped with ppdeploy",
                                   "choose one of: " + ", ".join(label_list_names())))
    with path.open(encoding="utf-8") as fh:
        return tuple(parse_label_lines(fh.readlines(), source=path))


def parse_label_lines(lines: Sequence[str], source: str | os.PathLike = "<labels>") -> list[str]:
    """Parse ``"<id> <name>"`` lines into names indexed by id (ids must run 0, 1, 2, ...)."""
    names: list[str] = []
    for number, line in enumerate(lines):
        raw_id, _, label = line.rstrip("\n").partition(" ")
        if not raw_id.isdigit() or int(raw_id) != number:
            raise ArtifactError(one_line(f"label list '{source}'", f"line {number + 1} starts with {raw_id!r}, "
                                         f"expected id {number}", "write one '<id> <name>' line per class, in order"))
        names.append(label)
    return names


def top_k(probs: np.ndarray, k: int = 5, filenames: Sequence[str | os.PathLike] | None = None,
          labels: Sequence[str] | None = None) -> list[dict]:
    """PaddleClas ``Topk`` records, one per row of ``probs``.

    Each record is ``{"class_ids": [...], "scores": [...], "label_names": [...], "filename": ...}`` with plain
    Python ints, floats rounded to 5 decimals, and strings. Classes are ranked as PaddleClas ranks them,
    ``probs.argsort()[-k:][::-1]``.

    Args:
        probs: scores of shape (N, C), or (C,) for one image.
        k: how many classes to keep (at most C).
        filenames: one name per row, copied to ``filename``; ``None`` leaves it ``None``.
        labels: class names indexed by id; ``None`` uses ImageNet-1k when C is 1000 and no names otherwise.

    Raises:
        InputSpecError: wrong shape, non-finite scores, k < 1, or filenames/labels that do not fit.
    """
    scores = _as_rows(probs)
    if k < 1:
        raise InputSpecError(one_line(f"top_k k={k}", "must be at least 1", "pass k >= 1"))
    if filenames is not None and len(filenames) != scores.shape[0]:
        raise InputSpecError(one_line("top_k filenames", f"{len(filenames)} names for {scores.shape[0]} rows",
                                      "pass one filename per image"))
    names = _labels_for(scores.shape[1], labels)
    return [_record(row, k, names, None if filenames is None else os.fspath(filenames[index]))
            for index, row in enumerate(scores)]


def _as_rows(probs: np.ndarray) -> np.ndarray:
    scores = np.asarray(probs)
    if scores.ndim == 1:
        scores = scores[None, :]
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise InputSpecError(one_line(f"probabilities of shape {scores.shape}", "are not (N, C)",
                                      "pass the model's (N, C) output"))
    if not np.isfinite(scores).all():
        raise InputSpecError(one_line("probabilities", "contain NaN or infinity",
                                      "check the backend's output (parity check) before ranking"))
    return scores


def _labels_for(num_classes: int, labels: Sequence[str] | None) -> Sequence[str]:
    if labels is None:
        imagenet = load_labels("imagenet1k")
        return imagenet if num_classes == len(imagenet) else []
    if labels and len(labels) < num_classes:
        raise InputSpecError(one_line("top_k labels", f"{len(labels)} names for {num_classes} classes",
                                      "pass one name per class, or no labels"))
    return labels


def _record(row: np.ndarray, k: int, labels: Sequence[str], filename: str | None) -> dict:
    index = row.argsort(axis=0)[-k:][::-1].astype("int32")
    class_ids = [int(i) for i in index]
    scores = np.around([row[i].item() for i in class_ids], decimals=5).tolist()
    return {
        "class_ids": class_ids,
        "scores": [float(s) for s in scores],
        "label_names": [str(labels[i]) for i in class_ids] if labels else [],
        "filename": filename,
    }
