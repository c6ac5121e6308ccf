"""PaddleClas ``.pdparams`` into a zoo architecture: every name and shape must match (no silent partial loads)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ppdeploy.errors import WeightsMismatchError, first_line, one_line

if TYPE_CHECKING:
    import paddle

    from ppdeploy.models.zoo import ModelSpec


def load_weights(net: paddle.nn.Layer, spec: ModelSpec, path: Path) -> None:
    """Load a PaddleClas ``.pdparams`` into ``net``, refusing any missing, unexpected or reshaped entry.

    ``paddle.load`` unpickles the file: only call this on a path the user gave.

    Raises:
        WeightsMismatchError: the file is not a state dict, or does not fit ``spec`` (first mismatches listed).
    """
    import paddle

    try:
        state = paddle.load(str(path))
    except Exception as exc:  # paddle raises bare ValueError/RuntimeError/UnpicklingError variants
        raise WeightsMismatchError(one_line(f"weights '{path}'", f"not a Paddle state dict ({first_line(exc)})",
                                            f"pass a PaddleClas {spec.name} .pdparams file")) from exc
    if not isinstance(state, dict):
        raise WeightsMismatchError(one_line(f"weights '{path}'", f"holds a {type(state).__name__}, not a state dict",
                                            f"pass a PaddleClas {spec.name} .pdparams file"))
    expected = {name: tuple(value.shape) for name, value in net.state_dict().items()}
    problems = weights_mismatches(expected, state)
    if problems:
        raise WeightsMismatchError(one_line(f"weights '{path}'", f"do not fit {spec.name}: " + "; ".join(problems),
                                            f"pass the .pdparams of {spec.name} (PaddleClas names), or pick the "
                                            "zoo model these weights belong to"))
    net.set_state_dict({name: state[name] for name in expected})


def weights_mismatches(expected: dict[str, tuple[int, ...]], state: dict[str, Any], *, first: int = 3) -> list[str]:
    """Human-readable differences between an architecture's state-dict shapes and a loaded state dict.

    Returns:
        Up to three entries (missing, unexpected, shape), each naming its count and first few names; empty when
        the two match.
    """
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    shapes = [f"{name} {list(_shape(state[name]))} vs {list(shape)}" for name, shape in expected.items()
              if name in state and _shape(state[name]) != shape]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape (file vs model)", shapes)):
        if items:
            more = f", +{len(items) - first} more" if len(items) > first else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:first])}{more}")
    return problems


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in getattr(value, "shape", np.shape(value)))
