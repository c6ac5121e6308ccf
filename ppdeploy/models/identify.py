"""Which zoo architecture an ``inference.pdiparams`` holds, read from its tensor headers alone.

A Paddle inference model's parameter file lists every tensor's shape; the zoo's :func:`resnet.parameter_shapes`
says which shapes each entry has. Comparing the two multisets tells a ResNet34 served as ResNet18 (a swapped
download, weights copied into the wrong folder) in milliseconds, without Paddle and without reading the weights.
It cannot tell entries of one architecture apart (``ResNet50_vc`` / ``ResNet50_vd`` / ``ResNet50_vd_ssld`` have
the same shapes): only a checksum can.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from pathlib import Path

from ppdeploy.models.paddle_files import tensor_shapes
from ppdeploy.models.resnet import parameter_shapes
from ppdeploy.models.zoo import MODELS, ModelSpec

BYTES_PER_VALUE = 4  # float32, as PaddleClas exports
# The program file (inference.pdmodel / .json) of the largest ResNet is a few MB; a tar also carries headers.
PROGRAM_ALLOWANCE = 64 << 20


@functools.lru_cache(maxsize=None)
def expected_shapes(spec: ModelSpec) -> Counter:
    """How many tensors of each shape the exported model of ``spec`` holds."""
    return Counter(parameter_shapes(spec).values())


def expected_values(spec: ModelSpec) -> int:
    """Parameter values (BatchNorm statistics included) the exported model of ``spec`` holds."""
    return sum(math.prod(shape) * count for shape, count in expected_shapes(spec).items())


def max_archive_bytes(spec: ModelSpec) -> int:
    """The most an official archive of ``spec`` can extract to: its float32 parameters twice over (room for a
    ``.pdiparams.info`` and headers) plus the program file; anything beyond is not this model (a tar bomb)."""
    return 2 * BYTES_PER_VALUE * expected_values(spec) + PROGRAM_ALLOWANCE


def fitting_entries(shapes: list[tuple[int, ...]]) -> list[str]:
    """Zoo entries whose architecture has exactly these tensor shapes (one name per architecture)."""
    found = Counter(shapes)
    names: dict[tuple, str] = {}
    for spec in MODELS.values():
        key = tuple(sorted(expected_shapes(spec).items()))
        if key not in names and expected_shapes(spec) == found:
            names[key] = spec.name
    return list(names.values())


def architecture_mismatch(params_file: Path, spec: ModelSpec) -> str | None:
    """Why ``params_file`` is not the parameter file of ``spec`` (``None`` when its shapes fit exactly)."""
    shapes = tensor_shapes(params_file)
    if shapes is None:
        return "is not a Paddle parameter file this reader understands (a tensor header is damaged or cut short)"
    if Counter(shapes) == expected_shapes(spec):
        return None
    values = sum(math.prod(shape) for shape in shapes)
    held = f"holds {len(shapes)} tensors ({values / 1e6:.2f} M values)"
    wanted = f"{spec.name} has {sum(expected_shapes(spec).values())} ({expected_values(spec) / 1e6:.2f} M)"
    others = fitting_entries(shapes)
    if others:
        return f"{held} that fit {', '.join(others)}, not {spec.name}: {wanted}"
    return f"{held} that fit no zoo architecture; {wanted}"


def swapped_entry(params_file: Path, spec: ModelSpec) -> str | None:
    """The zoo entry ``params_file`` really holds when it is another zoo architecture than ``spec``; ``None`` when
    it fits ``spec``, or fits no zoo entry (a fine-tuned model with other classes is not a swap)."""
    shapes = tensor_shapes(params_file)
    if shapes is None or Counter(shapes) == expected_shapes(spec):
        return None
    others = fitting_entries(shapes)
    return others[0] if others else None
