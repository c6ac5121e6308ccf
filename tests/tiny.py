"""A tiny ResNet-like Paddle inference model for the fast tests, and a plain numpy forward pass of its weights.

The network has every operator type of a PaddleClas ResNet, in the same arrangement, at a fraction of the size
(22k parameters, a 90 KB weights file; ResNet18 has 11.7M parameters):

    x [N, 3, 224, 224] -> conv3x3/2 + BN + ReLU (stem, 8 channels) -> max-pool 3x3/2
      -> basic block (8 -> 8, identity shortcut) -> basic block (8 -> 16, stride 2, 1x1/2 conv + BN shortcut)
      -> adaptive average pool -> flatten -> Linear(16, 1000) -> softmax

Its weights are built in numpy from a seed (He-normal convolutions, BatchNorm scales and shifts near 1 and 0,
each residual branch's last BatchNorm damped as a trained ResNet's are), then shaped by photos the way
``ppdeploy.models.synthetic`` shapes a zoo model's: every BatchNorm's running mean and variance are the
statistics of its input over the built-in ``shape`` photos (so neither is 0 or 1), and the classifier reads
the principal directions of their features, scaled so that predictions are as peaked as a trained model's.
The shape photos never judge anything: the tests feed the ``judge`` photos.

:func:`export_tiny` writes the model with ppdeploy's own export functions (``save_inference``, the deploy yaml),
in this process's native Paddle format, or in a child process (``python tests/tiny.py``) for the other one, like
``ppdeploy.models.export`` does. :func:`golden_forward` is the independent reference: float64 numpy, no Paddle,
no ONNX, no backend, computed from the same numpy weights the export was filled with.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NAME = "TinyResNet"
INPUT_SIZE = 224
NUM_CLASSES = 1000
STEM_CHANNELS = 8
BLOCKS = (("blocks.0", 8, 8, 1), ("blocks.1", 8, 16, 2))  # (name, in channels, out channels, stride)
FEATURES = BLOCKS[-1][2]
BN_EPSILON = 1e-5  # paddle.nn.BatchNorm2D's default, as in PaddleClas
SEED = 7
SHAPE_PHOTOS = 16  # built-in "shape" photos that set the BatchNorm statistics and the classifier's basis
RESIDUAL_GAIN = 0.3  # scale of each residual branch's last BatchNorm (trained branches are small corrections)
TARGET_MEDIAN_TOP1 = 0.7  # median top-1 probability on the shape photos: peaked, as a trained model's are


# --- weights ----------------------------------------------------------------------------------------------------


def conv_units() -> list[tuple[str, int, int, int, int]]:
    """Every conv + BatchNorm unit in forward order: (name, in channels, out channels, kernel, stride)."""
    units = [("stem", 3, STEM_CHANNELS, 3, 2)]
    for name, cin, cout, stride in BLOCKS:
        units += [(f"{name}.conv0", cin, cout, 3, stride), (f"{name}.conv1", cout, cout, 3, 1)]
        if stride != 1 or cin != cout:
            units.append((f"{name}.short", cin, cout, 1, stride))
    return units


def tiny_weights(seed: int = SEED, shape_batch: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The model's state dict (Paddle names and layouts; the Linear weight is ``[in, out]``), float32.

    ``shape_batch`` (preprocessed photos) sets the BatchNorm statistics and the classifier; the built-in
    ``shape`` photos by default.
    """
    if shape_batch is None:
        shape_batch = shape_photos()
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for name, cin, cout, kernel, _ in conv_units():
        fan_in = cin * kernel * kernel
        weights[f"{name}.conv.weight"] = rng.normal(0.0, np.sqrt(2.0 / fan_in), (cout, cin, kernel, kernel))
        gain = RESIDUAL_GAIN if name.endswith(".conv1") else 1.0
        weights[f"{name}.bn.weight"] = gain * rng.uniform(0.8, 1.2, cout)
        weights[f"{name}.bn.bias"] = rng.normal(0.0, 0.1, cout)
        weights[f"{name}.bn._mean"] = np.zeros(cout)  # replaced below by the measured statistics
        weights[f"{name}.bn._variance"] = np.ones(cout)
    weights["fc.weight"] = np.zeros((FEATURES, NUM_CLASSES))
    weights["fc.bias"] = np.zeros(NUM_CLASSES)
    statistics: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    features = forward(weights, shape_batch, statistics=statistics)["features"]
    for name, (mean, variance) in statistics.items():
        weights[f"{name}.bn._mean"], weights[f"{name}.bn._variance"] = mean, variance
    features = forward(weights, shape_batch)["features"]  # with the statistics in place
    weights["fc.weight"], weights["fc.bias"] = _classifier(features, np.random.default_rng([seed, 1]))
    return {name: value.astype(np.float32) for name, value in weights.items()}


def shape_photos(count: int = SHAPE_PHOTOS) -> np.ndarray:
    """The built-in ``shape`` photos, preprocessed with the model's (ImageNet) preprocessing."""
    from ppdeploy.preprocess import preprocess_batch
    from ppdeploy.samples import builtin_set

    return preprocess_batch(list(builtin_set("shape", count).images), preprocess_config())


def _classifier(features: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Weights that read the features' principal directions (centred on their mean), scaled to a peaked softmax."""
    mean = features.mean(axis=0)
    _, _, directions = np.linalg.svd(features - mean, full_matrices=False)
    weight = directions.T @ rng.normal(0.0, 1.0, (len(directions), NUM_CLASSES))
    bias = -mean @ weight
    logits = features @ weight + bias
    low, high = -4.0, 4.0  # bisect the log10 scale that puts the median top-1 probability at the target
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if np.median(softmax(logits * 10**middle).max(1)) < TARGET_MEDIAN_TOP1 else (
            low, middle)
    scale = 10 ** ((low + high) / 2)
    return weight * scale, bias * scale


# --- the numpy forward pass (the golden reference) -----------------------------------------------------------------


@dataclass(frozen=True)
class Golden:
    """The golden answer on a batch of photos.

    Attributes:
        batch: the photos, preprocessed (float32 NCHW): what the backends are fed.
        probs: :func:`golden_forward` of ``batch`` (float64).
        emulated_max_tv, emulated_mean_tv: per precision (``fp16``, ``bf16``, ``int8``), the largest and the mean
            total variation distance between ``probs`` and :func:`emulate` of that precision over the photos: what
            that precision's rounding alone costs this network.
    """

    batch: np.ndarray
    probs: np.ndarray
    emulated_max_tv: dict[str, float]
    emulated_mean_tv: dict[str, float]

    @classmethod
    def on(cls, weights: dict[str, np.ndarray], images: Sequence[np.ndarray]) -> Golden:
        """The golden answer on RGB ``uint8`` ``images``."""
        from ppdeploy.preprocess import preprocess_batch

        batch = preprocess_batch(list(images), preprocess_config())
        probs = golden_forward(weights, batch)
        distances = {precision: total_variation(emulate(weights, batch, precision), probs)
                     for precision in ("fp16", "bf16", "int8")}
        return cls(batch, probs, {key: float(tv.max()) for key, tv in distances.items()},
                   {key: float(tv.mean()) for key, tv in distances.items()})


def total_variation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, half the L1 distance between two probability vectors: the share of probability that moved."""
    return 0.5 * np.abs(a.astype(np.float64) - b.astype(np.float64)).sum(axis=1)


def golden_forward(weights: dict[str, np.ndarray], batch: np.ndarray) -> np.ndarray:
    """Softmax probabilities ``[N, 1000]`` of ``batch`` (float32 NCHW), in float64 numpy."""
    return forward(weights, batch)["probs"]


def forward(weights: dict[str, np.ndarray], batch: np.ndarray,
            statistics: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
            round_input: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """``{"features", "logits", "probs"}`` of ``batch``.

    Args:
        statistics: when given, each BatchNorm's input mean and variance over the batch are recorded there and
            used to normalise (train mode, as measuring them needs).
        round_input: applied to the input of every conv and of the classifier (see :func:`emulate`).
    """
    w = {name: value.astype(np.float64) for name, value in weights.items()}
    rounded = round_input or (lambda x: x)

    def unit(name: str, x: np.ndarray, stride: int, relu: bool) -> np.ndarray:
        kernel = w[f"{name}.conv.weight"]
        y = conv2d(rounded(x), kernel, stride, (kernel.shape[-1] - 1) // 2)
        if statistics is not None:
            statistics[name] = (y.mean(axis=(0, 2, 3)), y.var(axis=(0, 2, 3)))
            mean, variance = statistics[name]
        else:
            mean, variance = w[f"{name}.bn._mean"], w[f"{name}.bn._variance"]
        y = batch_norm(y, w[f"{name}.bn.weight"], w[f"{name}.bn.bias"], mean, variance)
        return np.maximum(y, 0.0) if relu else y

    x = max_pool(unit("stem", batch.astype(np.float64), 2, True))
    for name, cin, cout, stride in BLOCKS:
        main = unit(f"{name}.conv1", unit(f"{name}.conv0", x, stride, True), 1, False)
        short = unit(f"{name}.short", x, stride, False) if stride != 1 or cin != cout else x
        x = np.maximum(main + short, 0.0)
    features = x.mean(axis=(2, 3))  # adaptive average pool to 1x1, flattened
    logits = rounded(features) @ w["fc.weight"] + w["fc.bias"]
    return {"features": features, "logits": logits, "probs": softmax(logits)}


def emulate(weights: dict[str, np.ndarray], batch: np.ndarray, precision: str) -> np.ndarray:
    """Probabilities of ``batch`` with every conv/classifier weight and input rounded as ``precision`` stores
    them, the arithmetic itself in float64: the error that precision's rounding alone causes in this network.

    ``fp16``/``bf16`` round to the nearest value with 11/8 significant bits; ``int8`` quantizes weights
    symmetrically per output channel and inputs per tensor to 127 levels of their largest magnitude in ``batch``
    (the best calibration range there is for it).
    """
    round_value = {"fp16": _to_fp16, "bf16": _to_bf16, "int8": _to_int8_grid}[precision]
    rounded = {name: _round_weight(value.astype(np.float64), round_value, precision)
               if name.endswith("conv.weight") or name == "fc.weight" else value for name, value in weights.items()}
    return forward(rounded, batch, round_input=round_value)["probs"]


def _round_weight(weight: np.ndarray, round_value: Callable, precision: str) -> np.ndarray:
    if precision != "int8":
        return round_value(weight)
    channels = weight.shape[0] if weight.ndim == 4 else weight.shape[1]  # conv OIHW; Linear [in, out]
    per_channel = weight.reshape(channels, -1) if weight.ndim == 4 else weight.T
    quantized = np.stack([_to_int8_grid(row) for row in per_channel])
    return quantized.reshape(weight.shape) if weight.ndim == 4 else quantized.T


def _to_fp16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float64)


def _to_bf16(x: np.ndarray) -> np.ndarray:
    """Round to nearest even on the upper 16 bits of the float32 pattern (bfloat16 has no numpy dtype)."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def _to_int8_grid(x: np.ndarray) -> np.ndarray:
    step = np.abs(x).max() / 127
    return np.round(x / step) * step if step > 0 else x


def conv2d(x: np.ndarray, kernel: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """Cross-correlation of NCHW ``x`` with OIHW ``kernel`` (no bias), zero padding, via im2col and einsum."""
    n, channels, height, width = x.shape
    size = kernel.shape[-1]
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out_h = (height + 2 * padding - size) // stride + 1
    out_w = (width + 2 * padding - size) // stride + 1
    columns = np.empty((n, channels, size, size, out_h, out_w), dtype=x.dtype)
    for i in range(size):
        for j in range(size):
            columns[:, :, i, j] = padded[:, :, i:i + stride * out_h:stride, j:j + stride * out_w:stride]
    return np.einsum("ncijhw,ocij->nohw", columns, kernel, optimize=True)


def batch_norm(x: np.ndarray, scale: np.ndarray, shift: np.ndarray, mean: np.ndarray,
               variance: np.ndarray) -> np.ndarray:
    def per_channel(values: np.ndarray) -> np.ndarray:
        return values[None, :, None, None]

    return (x - per_channel(mean)) / np.sqrt(per_channel(variance) + BN_EPSILON) * per_channel(scale) + per_channel(
        shift)


def max_pool(x: np.ndarray, size: int = 3, stride: int = 2, padding: int = 1) -> np.ndarray:
    """3x3/2 max-pool with padding 1; the padding never wins (it is -inf)."""
    n, channels, height, width = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=-np.inf)
    out_h = (height + 2 * padding - size) // stride + 1
    out_w = (width + 2 * padding - size) // stride + 1
    out = np.full((n, channels, out_h, out_w), -np.inf, dtype=x.dtype)
    for i in range(size):
        for j in range(size):
            out = np.maximum(out, padded[:, :, i:i + stride * out_h:stride, j:j + stride * out_w:stride])
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# --- the Paddle model and its export ----------------------------------------------------------------------------


def model_spec():
    """A ``ModelSpec`` for ppdeploy's export helpers: the name, input size and (ImageNet) preprocessing."""
    from ppdeploy.models.zoo import ModelSpec

    return ModelSpec(NAME, 18, "vb", 0.0, 0.0, 0.0, 0.0, None, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0),
                     input_size=INPUT_SIZE)


def preprocess_config():
    return model_spec().preprocess_config()


def build_paddle_net(weights: dict[str, np.ndarray]):
    """The network as ``paddle.nn`` layers (PaddleClas's op types and attribute names), filled with ``weights``."""
    import paddle
    import paddle.nn.functional as F
    from paddle import nn

    class ConvBN(nn.Layer):
        def __init__(self, cin: int, cout: int, kernel: int, stride: int, relu: bool) -> None:
            super().__init__()
            self.conv = nn.Conv2D(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, bias_attr=False)
            self.bn = nn.BatchNorm2D(cout, epsilon=BN_EPSILON)
            self.relu = relu

        def forward(self, x):
            x = self.bn(self.conv(x))
            return F.relu(x) if self.relu else x

    class BasicBlock(nn.Layer):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv0 = ConvBN(cin, cout, 3, stride, True)
            self.conv1 = ConvBN(cout, cout, 3, 1, False)
            self.short = ConvBN(cin, cout, 1, stride, False) if stride != 1 or cin != cout else None

        def forward(self, x):
            short = x if self.short is None else self.short(x)
            return F.relu(paddle.add(self.conv1(self.conv0(x)), short))

    class TinyResNet(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.stem = ConvBN(3, STEM_CHANNELS, 3, 2, True)
            self.max_pool = nn.MaxPool2D(kernel_size=3, stride=2, padding=1)
            self.blocks = nn.Sequential(*(BasicBlock(cin, cout, stride) for _, cin, cout, stride in BLOCKS))
            self.avg_pool = nn.AdaptiveAvgPool2D(1)
            self.fc = nn.Linear(FEATURES, NUM_CLASSES)

        def forward(self, x):
            x = self.blocks(self.max_pool(self.stem(x)))
            return self.fc(paddle.flatten(self.avg_pool(x), start_axis=1))

    with paddle.utils.unique_name.guard():
        net = TinyResNet()
    state = net.state_dict()
    if set(state) != set(weights):
        raise ValueError(f"tiny weights do not fit the network: {sorted(set(state) ^ set(weights))}")
    net.set_state_dict({name: paddle.to_tensor(weights[name]) for name in state})
    net.eval()
    return net


def export_tiny(weights_file: Path, out_dir: Path, fmt: str) -> Path:
    """Write the model of ``weights_file`` (``.npz``) into the new folder ``out_dir`` as ``inference.<fmt>``
    + ``inference.pdiparams`` + ``inference_cls.yaml``: in this process when ``fmt`` is its native Paddle
    format, else in a child process with the PIR flag that format needs."""
    from ppdeploy.models.export import PIR_FLAG, native_format, write_deploy_yaml

    out_dir.mkdir(parents=True)
    if fmt == native_format():
        _save(weights_file, out_dir, fmt)
    else:
        env = {**os.environ, PIR_FLAG: "0" if fmt == "pdmodel" else "1"}
        done = subprocess.run([sys.executable, __file__, str(weights_file), str(out_dir), "--fmt", fmt],
                              env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"tiny {fmt} export failed in a child process:\n{done.stderr[-3000:]}")
    write_deploy_yaml(model_spec(), out_dir)
    return out_dir


def _save(weights_file: Path, out_dir: Path, fmt: str) -> None:
    import paddle

    from ppdeploy.models.export import save_inference

    with np.load(weights_file) as archive:
        weights = {name: archive[name] for name in archive.files}
    paddle.seed(SEED)
    save_inference(build_paddle_net(weights), model_spec(), out_dir, fmt)


def main(argv: Sequence[str] | None = None) -> int:
    """``python tests/tiny.py WEIGHTS.npz OUT_DIR --fmt F``: save the model in this process's format."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("weights", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--fmt", choices=("json", "pdmodel"), required=True)
    args = parser.parse_args(argv)
    _save(args.weights, args.out_dir, args.fmt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
