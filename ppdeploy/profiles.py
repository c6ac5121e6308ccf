"""Parity profiles: what each precision must meet against Paddle Inference fp32, and why (docs/parity.md).

Data, not a verb: the parity checker judges by them, and the int8 converters' accuracy control counts a top-1
change as a drop exactly when the int8 profile would (a flip within the profile's tie margin is not one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOG_FLOOR = 1e-7  # probabilities below this carry no margin information (fp16 flushes them to zero)


@dataclass(frozen=True)
class Profile:
    """Pass criteria for one precision. ``None`` disables a criterion.

    Attributes:
        name: profile name (``fp32``, ``fp16``, ``bf16``, ``int8``).
        max_abs: largest allowed absolute difference of any probability.
        max_tv: largest allowed total variation distance (half the L1 distance) between an image's two
            probability vectors: the share of probability that moved, meaningful for peaked and flat outputs alike.
        max_mean_tv: largest allowed total variation averaged over the images (a systematic error moves every
            image a little; one near-tie image can move a lot at low precision).
        tie_margin: the reference's top-1/top-2 log-probability margin up to which this precision's error can
            explain a top-1 flip; images with a larger margin are *decisive*, and a flip on them is an error.
        min_top1: smallest allowed top-1 agreement on the decisive images.
        min_images: fewest judge images the verdict may rest on.
        min_decisive: fewest decisive images for the top-1 criterion to apply; below it the verdict rests on the
            output-error criteria and the report says so.
    """

    name: str
    max_abs: float | None
    max_tv: float | None
    max_mean_tv: float | None
    tie_margin: float
    min_top1: float
    min_images: int = 1
    min_decisive: int = 20


# What each threshold rests on (zoo-wide measurements on the held-out judge photos) is in docs/parity.md.
PROFILES: dict[str, Profile] = {
    "fp32": Profile("fp32", max_abs=6e-5, max_tv=None, max_mean_tv=None, tie_margin=1e-3, min_top1=1.0),
    "fp16": Profile("fp16", max_abs=None, max_tv=0.012, max_mean_tv=None, tie_margin=0.06, min_top1=1.0),
    "bf16": Profile("bf16", max_abs=None, max_tv=0.3, max_mean_tv=0.05, tie_margin=1.2, min_top1=1.0),
    "int8": Profile("int8", max_abs=None, max_tv=0.6, max_mean_tv=0.12, tie_margin=1.5, min_top1=0.98,
                    min_images=100),
}


def reference_margins(probs: np.ndarray) -> np.ndarray:
    """Each row's top-1/top-2 log-probability margin, probabilities floored at :data:`LOG_FLOOR`."""
    top = np.sort(np.maximum(probs.astype(np.float64), LOG_FLOOR), axis=1)[:, -2:]
    return np.log(top[:, 1]) - np.log(top[:, 0])
