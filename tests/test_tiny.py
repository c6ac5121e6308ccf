"""The tiny model (``tests/tiny.py``) is what the fast tests take it for: a few tens of KB with a PaddleClas
ResNet's operator types, non-trivial BatchNorm statistics, a deploy yaml, both Paddle formats, and a numpy golden
whose building blocks are right. The golden against Paddle Inference itself is the ``paddle`` rows of
tests/test_contract.py."""

from __future__ import annotations

import numpy as np
import pytest
import tiny

from ppdeploy.models.export import program_op_counts
from ppdeploy.preprocess import PreprocessConfig

# Operator types of an exported PaddleClas ResNet (vb), as each format names them: conv + BN (+ ReLU) units,
# max-pool and global average pool, residual adds, flatten, the classifier's matmul (+ add) and the softmax.
RESNET_OPS = {
    "json": {"conv2d", "batch_norm", "relu", "pool2d", "add", "flatten", "matmul", "softmax"},
    "pdmodel": {"conv2d", "batch_norm", "relu", "pool2d", "elementwise_add", "flatten_contiguous_range",
                "matmul_v2", "softmax"},
}
IO_OPS = {"data", "feed", "fetch", "full_int_array"}  # graph plumbing, not computation


@pytest.mark.parametrize("fmt", ["json", "pdmodel"])
def test_both_formats_hold_a_small_resnet_with_its_deploy_yaml(tiny_model, fmt):
    model = tiny_model(fmt)
    assert model.fmt == fmt and model.model_file.name == f"inference.{fmt}"
    assert model.params_file.stat().st_size < 100_000
    counts = program_op_counts(model.model_file)
    assert set(counts) - IO_OPS == RESNET_OPS[fmt]
    add = "add" if fmt == "json" else "elementwise_add"
    # 6 conv+BN units (stem, 2 per block, 1 projection shortcut); ReLU after the stem, each block's first conv and
    # each residual sum; 2 residual adds + the classifier's bias; max-pool + global average pool.
    assert (counts["conv2d"], counts["batch_norm"], counts["relu"], counts[add], counts["pool2d"]) == (6, 6, 5, 3, 2)
    assert model.yaml_file is not None
    assert PreprocessConfig.for_model_dir(model.directory) == PreprocessConfig(resize_short=256, crop_size=224)


def test_batchnorm_statistics_are_not_trivial(tiny_weights):
    means = [value for name, value in tiny_weights.items() if name.endswith("._mean")]
    variances = [value for name, value in tiny_weights.items() if name.endswith("._variance")]
    assert len(means) == len(variances) == 6
    assert all(np.abs(mean).max() > 0.05 for mean in means)
    assert all(np.abs(variance - 1).max() > 0.1 and variance.min() > 0 for variance in variances)


def test_golden_predictions_look_like_a_trained_model(tiny_golden):
    probs = tiny_golden.probs
    assert probs.shape == (16, 1000) and np.allclose(probs.sum(1), 1.0)
    assert len(set(probs.argmax(1))) >= 8  # the photos are told apart, not all one class
    top = np.sort(probs, axis=1)
    assert 0.2 < np.median(top[:, -1]) < 0.95 and (top[:, -1] - top[:, -2] > 0.5).sum() >= 2


def test_emulated_rounding_grows_as_precision_shrinks(tiny_golden):
    tv = tiny_golden.emulated_max_tv
    assert 0 < tv["fp16"] < tv["bf16"] < tv["int8"] < 0.5
    assert all(0 < tiny_golden.emulated_mean_tv[key] <= tv[key] for key in tv)


def test_conv2d_is_a_cross_correlation():
    """im2col + einsum against the definition, one output at a time, with stride and padding."""
    rng = np.random.default_rng(0)
    x, kernel = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, 3, 3))
    out = tiny.conv2d(x, kernel, stride=2, padding=1)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    assert out.shape == (2, 4, 4, 3)
    for n, o, i, j in np.ndindex(out.shape):
        expected = (padded[n, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3] * kernel[o]).sum()
        assert out[n, o, i, j] == pytest.approx(expected, abs=1e-12)


def test_max_pool_never_picks_the_padding():
    x = -np.arange(2 * 5 * 5, dtype=np.float64).reshape(1, 2, 5, 5) - 1  # all negative: zero padding would win
    out = tiny.max_pool(x)
    assert out.shape == (1, 2, 3, 3)
    for c, i, j in np.ndindex(2, 3, 3):
        window = x[0, c, max(2 * i - 1, 0):2 * i + 2, max(2 * j - 1, 0):2 * j + 2]
        assert out[0, c, i, j] == window.max()


def test_batch_norm_and_softmax_by_hand():
    x = np.array([1.0, 3.0]).reshape(1, 2, 1, 1)
    out = tiny.batch_norm(x, np.array([2.0, 1.0]), np.array([0.5, 0.0]), np.array([1.0, 1.0]), np.array([4.0, 1.0]))
    assert out.ravel() == pytest.approx([0.5, 2 / np.sqrt(1 + tiny.BN_EPSILON)])
    probs = tiny.softmax(np.array([[0.0, np.log(3.0)]]))
    assert probs.ravel() == pytest.approx([0.25, 0.75])
