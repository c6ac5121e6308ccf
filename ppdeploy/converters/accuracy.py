"""Accuracy control shared by the int8 converters: the validation photos, the metric and the manifest record.

The metric is **agreement with the fp32 source model by the int8 parity profile's own per-image rules**: the same
top-1 class, unless the reference's top-1/top-2 log-probability margin is within the profile's tie margin (the
parity checker does not count such a flip either), and a total variation distance within the profile's
``max_tv``. It is measured on validation photos that share no source picture with
the calibration photos (``ppdeploy.samples`` keeps the roles apart; a user's folders are checked with
:func:`ppdeploy.samples.overlap`). The fp32 source artifact stands in for Paddle: it matches Paddle Inference to
~1e-6, and converters never import Paddle. The drop is absolute: ``1.0 - agreement`` (the reference agrees with
itself), so ``max_drop=0.01`` on 64 images allows no flipped image at all (one flip is 0.0156).

Ranking. NNCF's ``quantize_with_accuracy_control`` runs in *metric mode* when ``validation_fn`` returns a float and
per-item floats: the per-item values only pick the ranking subset (the items that lost most), and each group of
quantizers is then ranked by the *metric* on that subset with the group reverted. Plain 0/1 agreement gives most
groups the same score, and ties keep NNCF's input order. Returning the model outputs instead ("non-metric" mode)
makes NNCF rank by the normalised MSE of the outputs. Three metrics were tried, each as ``(metric, per-item
values)``: plain agreement, agreement plus 1e-3 x (1 - total-variation distance), and agreement plus 1e-3 x
sigmoid(reference class's log-probability margin over the best other class). Seeded synthetic ResNet18 and
ResNet18_vd (recipe r3), 64 calibration and 64 validation photos, max_drop 0.01, scored on 64 held-out judge photos
(NNCF removes FakeQuantize (FQ) nodes; "kept" is how many of them are left):

=============  ===============================================  ================================================
ranking        ResNet18 (53 FQ; plain val 0.844, judge 0.875)    ResNet18_vd (60 FQ; plain val 0.984, judge 0.984)
=============  ===============================================  ================================================
0/1 agreement  111 s, 23 FQ kept, judge 0.922                   207 s, **0 kept** (the whole model is fp32)
outputs (NMSE) 189 s, **0 kept**, judge 1.000                   (not run)
+ 1 - TV       120 s, 25 FQ kept, judge 0.953                   368 s, 18 kept, judge 0.984
+ margin       68 s, 23 FQ kept, judge 0.953                    228 s, 22 kept, judge 0.969
=============  ===============================================  ================================================

So the per-item score is ``agreement + TIE_BREAK * sigmoid(margin)``. Ties between groups are then broken by how
close the at-risk images come to their reference class. This is the quantity whose sign *is* agreement, so it
steers toward un-flipping images rather than toward moving probability on classes that decide nothing. It was the
fastest of the three, and both smooth scores kept the model int8 where 0/1 agreement gave up everything. The
threshold NNCF applies is on the same sum. The tie-break can move it by at most ``TIE_BREAK`` (far below one
image, 1/len(validation)), and the manifest reports the pure top-1 agreement measured afterwards, including
whether it met ``max_drop``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ppdeploy.converters.base import ConvertOptions
from ppdeploy.errors import ConversionError, one_line

if TYPE_CHECKING:
    import numpy as np

    from ppdeploy.samples import ImageSet

METRIC = "top1_agreement"  # on decisive images: near-ties (int8 profile's tie margin) always agree
TIE_BREAK = 1e-3  # weight of the smooth per-image score that breaks NNCF's ranking ties (module docstring)
RANKING_SCORE = f"top-1 agreement + {TIE_BREAK} x sigmoid(log-probability margin of the reference class)"
_LOG_FLOOR = 1e-30


def image_sets(options: ConvertOptions) -> tuple[ImageSet, ImageSet]:
    """The calibration and validation sets ``options`` ask for, checked to share no picture.

    Raises:
        ConversionError: a count below 1, or sets sharing a source picture or a near-identical image.
        InputSpecError, ImageError: a folder without images, or an image that does not decode.
    """
    from ppdeploy.samples import image_set

    for flag, count in (("--calib-count", options.calib_count), ("--val-count", options.val_count)):
        if count < 1:
            raise ConversionError(one_line(f"{flag} {count}", "must be at least 1", "use 64 to 300 images"))
    calibration = image_set("calibration", options.calib_images, options.calib_count)
    validation = image_set("validation", options.val_images, options.val_count)
    check_disjoint(calibration, validation)
    return calibration, validation


def check_disjoint(calibration: ImageSet, validation: ImageSet) -> None:
    """Refuse validation images that are (copies of) calibration images: the drop measured on them proves nothing."""
    from ppdeploy.samples import overlap

    found = overlap(calibration.record(), validation.record())
    if found["overlap"]:
        raise ConversionError(one_line(
            f"validation images ({validation.provenance})",
            f"share {len(found['shared_sources'])} source picture(s) and {found['near_duplicates']} near-identical "
            f"image(s) with the calibration images ({calibration.provenance})",
            "give --val-images and --calib-images folders of different photos"))


def item_scores(reference: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: agreement with ``reference`` (0/1), and agreement plus ``TIE_BREAK`` x sigmoid(margin).

    An image agrees when its top-1 class is the reference's, or when the reference's own top-1/top-2 margin is
    within the int8 parity profile's ``tie_margin`` (a near-tie may go either way at int8 and the parity checker
    does not count it, so neither does accuracy control, which would otherwise revert layers to fp32 for flips
    that no precision could avoid) — and its total variation distance stays within the profile's ``max_tv``. The margin in the score is the log-probability of the reference's top-1 class
    minus the largest other log-probability in ``outputs``. Both arrays hold probabilities, shape (N, classes).
    """
    import numpy as np

    from ppdeploy.profiles import PROFILES, reference_margins

    rows = np.arange(len(reference))
    wanted = reference.argmax(1)
    logs = np.log(np.maximum(outputs.astype(np.float64), _LOG_FLOOR))
    own = logs[rows, wanted]
    logs[rows, wanted] = -np.inf
    margin = own - logs.max(1)
    profile = PROFILES["int8"]
    tie = reference_margins(reference) <= profile.tie_margin
    close = 0.5 * np.abs(outputs.astype(np.float64) - reference).sum(1) <= (profile.max_tv or np.inf)
    agree = (((outputs.argmax(1) == wanted) | tie) & close).astype(np.float64)
    return agree, agree + TIE_BREAK / (1.0 + np.exp(-np.clip(margin, -50.0, 50.0)))


def measure(reference: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """Top-1 agreement and total-variation distance of ``outputs`` against ``reference``, for the manifest."""
    import numpy as np

    tv = 0.5 * np.abs(outputs.astype(np.float64) - reference).sum(1)
    agree, _ = item_scores(reference, outputs)
    return {METRIC: round(float(agree.mean()), 6), "mean_tv": round(float(tv.mean()), 6),
            "max_tv": round(float(tv.max()), 6)}


def control_record(max_drop: float | None, before: dict[str, float], after: dict[str, float], *,
                   fp32_layers: list[str], validation: ImageSet, seconds: float, **method: Any) -> dict[str, Any]:
    """The manifest's ``quantization.accuracy_control``: what was measured, what was kept in fp32, and whether the
    drop met ``max_drop`` (``None``: plain quantization, measured but not controlled)."""
    drop = round(1.0 - after[METRIC], 6)
    return {
        "enabled": max_drop is not None,
        "metric": METRIC,
        "reference": "the fp32 source model's outputs on the validation images",
        "drop_type": "absolute",
        "max_drop": max_drop,
        "fp32_metric": 1.0,  # the reference agrees with itself
        "int8_metric_before": before[METRIC],
        "drop_before": round(1.0 - before[METRIC], 6),
        "int8_metric": after[METRIC],
        "drop": drop,
        "reached": None if max_drop is None else drop <= max_drop,
        "tv_before": {key: before[key] for key in ("mean_tv", "max_tv")},
        "tv": {key: after[key] for key in ("mean_tv", "max_tv")},
        "fp32_layers": fp32_layers,
        **method,
        "validation_set": validation.record(),
        "seconds": round(seconds, 3),
    }

