"""Seeded synthetic weights that behave like a trained ResNet's on photos they have never seen.

Recipe ``r3`` (part of every synthetic export's cache key; bump :data:`SYNTHETIC_RECIPE` whenever the weights
change), fed with the shape photos its caller passes in (``deploy export`` and ``resolve_model`` pass the built-in
``shape`` set of ``ppdeploy.samples``, which never judges anything):

1. He-normal convolutions, BatchNorm scales near 1 and shifts near 0, from ``numpy`` seeded with ``seed``;
2. the last BatchNorm of every residual branch scaled by :data:`RESIDUAL_GAIN` (see
   :func:`damp_residual_branches`);
3. every BatchNorm's running mean and variance set to the statistics of its input over the shape photos (one
   train-mode pass with momentum 0), as training leaves them at the statistics of the training set;
4. a classifier that reads the directions along which real photos' features vary: each class weight is a seeded
   random mix of the top :data:`CLASSIFIER_RANK` principal directions of the shape photos' centred features
   (unwhitened: whitening amplified the weak directions' noise, measured below), and the whole layer scaled so that the median top-1 probability on the shape photos is
   :data:`TARGET_MEDIAN_TOP1`. No photo is any class's prototype, so a photo's prediction is no more confident
   because the photo was seen; unseen photos get logits of the same spread (docs/parity.md measures it).

Why a classifier at all: random weights read random directions of the 2048 features, where a photo's signal is
as small as int8's rounding noise, and their 1000 near-equal logits make every verdict a coin toss.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ppdeploy.errors import DeployError, one_line

if TYPE_CHECKING:
    import paddle

    from ppdeploy.models.zoo import ModelSpec

SYNTHETIC_RECIPE = "r3"  # bump when the synthetic weights change: it is part of their cache key
SHAPE_IMAGES = 64  # shape photos whose statistics set the BatchNorm buffers and the classifier's basis
TARGET_MEDIAN_TOP1 = 0.5  # median top-1 probability the classifier is scaled to, on the shape photos
RESIDUAL_GAIN = 0.05  # scale of each residual branch's last BatchNorm; see damp_residual_branches
CLASSIFIER_RANK = 16  # principal directions of the features the classes read


def synthesize_from_images(net: paddle.nn.Layer, spec: ModelSpec, images: Sequence[np.ndarray], *,
                           seed: int = 0) -> dict[str, float]:
    """Fill ``net``, built from ``spec``, with seeded random weights shaped by ``images``.

    Args:
        net: the network to fill.
        spec: its zoo entry; its preprocessing is applied to ``images``.
        images: RGB ``uint8`` shape photos (at least 2), which should never judge the model afterwards.
        seed: the same seed and photos give the same weights.

    Returns:
        What :func:`synthesize_weights` measured.
    """
    from ppdeploy.preprocess import preprocess_batch

    return synthesize_weights(net, preprocess_batch(list(images), spec.preprocess_config()), seed=seed)


def synthesize_weights(net: paddle.nn.Layer, batch: np.ndarray, *, seed: int = 0) -> dict[str, float]:
    """Fill ``net`` with seeded random weights shaped by ``batch`` (preprocessed shape photos, N >= 2).

    Returns:
        ``{"fc_scale": ..., "median_top1": ...}`` measured on ``batch``.
    """
    if len(batch) < 2:
        raise DeployError(one_line("shape images", f"got {len(batch)}", "pass at least 2 photos"))
    random_init(net, np.random.default_rng(seed))
    damp_residual_branches(net)
    features = recalibrate_batchnorm(net, batch)
    return calibrate_classifier(net.classifier, features, np.random.default_rng([seed, 1]))


def random_init(net: paddle.nn.Layer, rng: np.random.Generator) -> None:
    """Deterministic values for every entry of the state dict, in its (stable) order."""
    from paddle import nn

    for layer in net.sublayers():
        if isinstance(layer, nn.Conv2D):
            fan_in = int(np.prod(layer.weight.shape[1:]))
            layer.weight.set_value(rng.normal(0.0, np.sqrt(2.0 / fan_in), layer.weight.shape).astype(np.float32))
        elif isinstance(layer, nn.BatchNorm2D):
            channels = layer.weight.shape[0]
            layer.weight.set_value(rng.uniform(0.8, 1.2, channels).astype(np.float32))
            layer.bias.set_value(rng.normal(0.0, 0.1, channels).astype(np.float32))
            layer._mean.set_value(np.zeros(channels, np.float32))
            layer._variance.set_value(np.ones(channels, np.float32))
        elif isinstance(layer, nn.Linear):
            fan_in = layer.weight.shape[0]
            layer.weight.set_value(rng.normal(0.0, 1.0 / np.sqrt(fan_in), layer.weight.shape).astype(np.float32))
            layer.bias.set_value(np.zeros(layer.bias.shape, np.float32))


def damp_residual_branches(net: paddle.nn.Layer) -> None:
    """Scale the last BatchNorm of every residual branch by :data:`RESIDUAL_GAIN`.

    A random BatchNorm network is chaotic: each full-gain random branch adds a fresh, decorrelated component to
    the residual stream, so any rounding error grows block after block (measured, ResNet50: fp16 worst cosine
    0.966 at gain 1.0, 0.9999 at 0.05). Trained ResNets are not like that: training drives residual branches to
    small corrections of the identity path, which is why "zero-init residual" (the last BN scale of each branch
    started at 0) trains as well, and why a trained ResNet's fp16 output matches its fp32 one to 1e-3. 0.05 keeps
    the stream's growth over 33 blocks (ResNet101) under 1.1x in norm while each branch still changes it.
    """
    for layer in net.sublayers():
        main = getattr(layer, "main", None)
        if isinstance(main, list) and main:
            norm = getattr(main[-1], main[-1]._bn_attr)
            norm.weight.set_value(norm.weight.numpy() * RESIDUAL_GAIN)


def recalibrate_batchnorm(net: paddle.nn.Layer, batch: np.ndarray) -> np.ndarray:
    """Set every BatchNorm's running statistics to those of the batch; return the pooled features.

    In train mode each BatchNorm normalises with the batch statistics, so the layers after it see what they
    will see in eval mode once the running buffers hold those same statistics (momentum 0 makes them so).
    """
    import paddle
    from paddle import nn

    norms = [layer for layer in net.sublayers() if isinstance(layer, nn.BatchNorm2D)]
    momenta = [layer._momentum for layer in norms]
    for layer in norms:
        layer._momentum = 0.0
    net.train()
    try:
        with paddle.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "When training, we now always track", UserWarning)
            features = net.forward_features(paddle.to_tensor(batch)).numpy()
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer._momentum = momentum
        net.eval()
    return features


def calibrate_classifier(fc: paddle.nn.Linear, features: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """Make ``fc`` read the features' principal directions, scaled to the target median top-1.

    Each class's weight is a random (seeded) mix of the top :data:`CLASSIFIER_RANK` principal directions of the
    centred features, so every class reads directions that carry real photo-to-photo variation, the stronger
    ones more. Whitening them (dividing by each direction's spread) was tried: on ResNet18_vd's held-out judge
    photos it raised int8's largest top-1/top-2 log-margin shift from 0.87 (onnx-int8) / 1.71 (openvino-int8)
    to 1.32 / 2.31 and its worst total variation from 0.17 / 0.24 to 0.31 / 0.33, by amplifying the weak
    directions' rounding noise, so the directions stay unwhitened.
    The bias centres the logits on the photos' mean feature.
    """
    features = features.astype(np.float64)
    mean = features.mean(axis=0)
    centred = features - mean
    _, _, directions = np.linalg.svd(centred, full_matrices=False)
    rank = min(CLASSIFIER_RANK, len(features) - 1)
    basis = directions[:rank].T  # [features, rank]: the principal directions, unwhitened  # [features, rank]: whitened principal directions
    mixing = rng.normal(0.0, 1.0 / np.sqrt(rank), (rank, fc.weight.shape[1]))
    weight = basis @ mixing
    bias = -mean @ weight
    logits = features @ weight + bias
    scale = scale_for_median_top1(logits, TARGET_MEDIAN_TOP1)
    fc.weight.set_value((weight * scale).astype(np.float32))
    fc.bias.set_value((bias * scale).astype(np.float32))
    return {"fc_scale": scale, "median_top1": float(np.median(top1_probabilities(logits * scale)))}


def top1_probabilities(logits: np.ndarray) -> np.ndarray:
    """The largest softmax probability of each row."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return 1.0 / np.exp(shifted).sum(axis=1)


def scale_for_median_top1(logits: np.ndarray, target: float) -> float:
    """The factor (a temperature's inverse) that puts the median top-1 probability at ``target``.

    Each row's top-1 probability grows with the factor, so their median does too: bisect in log space.
    """
    low, high = -8.0, 8.0  # log10 of the factor
    for _ in range(60):
        middle = (low + high) / 2
        if np.median(top1_probabilities(logits * 10.0 ** middle)) < target:
            low = middle
        else:
            high = middle
    return float(10.0 ** ((low + high) / 2))
