"""The one contract every runnable configuration meets, on the tiny model (``tests/tiny.py``).

Parametrized from the registry: every configuration ``deploy parity/bench --backends all`` knows
(``matrix_names()``: the Paddle reference itself, every target, every variant), each from both Paddle formats (a
``.json`` model reaches OpenVINO through ONNX, a ``.pdmodel`` directly). A new backend, target or variant is
picked up here with no edit; one that cannot run on this machine is skipped with its availability reason.

Each is converted by the real pipeline, loaded with ``choice.runtime()`` and judged against the golden: a plain
numpy forward pass of the same weights (``tiny.golden_forward``), computed apart from every backend, Paddle
included. The Paddle rows are therefore the reference check of the golden itself.

Tolerances come from the arithmetic, per ``choice.profile``:

- fp32: every probability within :data:`FP32_MAX_ABS` of the golden. Float32 keeps 24 significant bits
  (relative rounding 6e-8); this network's logits reach about +-40 and pass seven rounding stages (six convs and
  the classifier, sums of at most 144 terms), which puts a logit's error around 1e-5 at worst, and a probability
  moves by at most its own size times that.
- fp16, bf16, int8: a total variation distance within :data:`ROUNDING_MARGIN` times what that precision's
  rounding alone does to this network (``tiny.emulate``: weights and layer inputs rounded to 11/8 significant bits,
  or to 127 int8 levels of their own range, the arithmetic in float64). The margin covers what the emulation
  leaves out: rounded biases and folded BatchNorms, low-precision accumulation, and int8 ranges calibrated on
  other photos than the judged ones (a range twice too wide doubles the int8 step).

Top-1 must agree wherever the golden's top-1/top-2 probability gap exceeds twice the tolerance: no probability
moves by more than the total variation distance, so no error within the tolerance can swap those two classes.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from ppdeploy.artifacts import TEST_BATCH, artifact_model_file, load_manifest
from ppdeploy.converters.base import ConvertOptions
from ppdeploy.converters.pipeline import convert_model, default_options
from ppdeploy.errors import InputSpecError
from ppdeploy.preprocess import PreprocessConfig
from ppdeploy.registry import PADDLE, Choice, matrix_names, resolve, targets, variants
from ppdeploy.runtimes.base import TensorSpec

FORMATS = ("json", "pdmodel")
NAMES = matrix_names()
CASES = [pytest.param((name, fmt), id=f"{name}-{fmt}") for name in NAMES for fmt in FORMATS]
ARTIFACT_CASES = [p for p in CASES if p.values[0][0] != PADDLE]
FP32_MAX_ABS = 2e-5
ROUNDING_MARGIN = 3.0
MAX_BATCH = ConvertOptions().max_batch
# int8 targets quantize plainly (no accuracy-control search) from a few photos, to stay fast; what accuracy
# control does is tested in tests/converters/, its top-1 on real ResNets in tests/test_zoo_parity.py.
QUICK_CALIBRATION = {"max_drop": None, "calib_count": 16, "val_count": 8}
INPUT = TensorSpec("x", (None, 3, 224, 224), "float32")


def test_every_registered_configuration_is_in_the_contract():
    assert {p.values[0][0] for p in CASES} == {PADDLE, *targets(), *variants()}
    assert {p.values[0][1] for p in CASES} == set(FORMATS)


@pytest.fixture(scope="module")
def built(tiny_model, tmp_path_factory):
    """``built(choice, fmt)`` → the folder the choice's runtime loads: the Paddle model, or its artifact (converted
    once per module; chained targets share their sources)."""
    root = tmp_path_factory.mktemp("contract")
    folders: dict = {}

    def build(choice: Choice, fmt: str) -> Path:
        model = tiny_model(fmt)
        if choice.target is None:
            return model.directory
        if (choice.target, fmt) not in folders:
            quick = QUICK_CALIBRATION if targets()[choice.target].calibrated else {}
            options = default_options(model, choice.target, **quick)
            folders[choice.target, fmt] = convert_model(model, choice.target, options=options,
                                                        out_dir=root / fmt / choice.target)
        return folders[choice.target, fmt]

    return build


@pytest.fixture(params=CASES)
def case(request, built) -> tuple[Choice, str, Path]:
    name, fmt = request.param
    choice = resolve(name)
    ok, reason = choice.availability()
    if not ok:
        pytest.skip(reason)
    return choice, fmt, built(choice, fmt)


def tolerance(profile: str, golden) -> tuple[float, float]:
    """(largest, mean) total variation distance to the golden that ``profile`` allows (module doc)."""
    if profile == "fp32":
        return FP32_MAX_ABS, FP32_MAX_ABS
    return ROUNDING_MARGIN * golden.emulated_max_tv[profile], ROUNDING_MARGIN * golden.emulated_mean_tv[profile]


def run_all(runtime, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(batch-1 output of the first image, every image's output in batches of MAX_BATCH)."""
    first = runtime.infer(batch[:1])
    chunks = [runtime.infer(batch[start:start + MAX_BATCH]) for start in range(0, len(batch), MAX_BATCH)]
    for chunk, start in zip(chunks, range(0, len(batch), MAX_BATCH)):
        assert chunk.shape == (len(batch[start:start + MAX_BATCH]), 1000)
    assert first.shape == (1, 1000) and any(len(chunk) == MAX_BATCH for chunk in chunks)
    return first, np.concatenate(chunks)


def test_specs(case):
    choice, _, folder = case
    with choice.runtime(folder) as runtime:
        assert runtime.inputs == (INPUT,)
        assert len(runtime.outputs) == 1
        assert runtime.outputs[0].shape == (None, 1000) and runtime.outputs[0].dtype == "float32"


def test_batch_one_and_max_match_the_golden(case, tiny_golden):
    choice, _, folder = case
    with choice.runtime(folder) as runtime:
        first, out = run_all(runtime, tiny_golden.batch)
    assert out.dtype == np.float32 and np.isfinite(out).all() and np.isfinite(first).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5 if choice.profile == "fp32" else 2e-3)
    max_tv, mean_tv = tolerance(choice.profile, tiny_golden)
    distance = 0.5 * np.abs(out - tiny_golden.probs).sum(axis=1)
    if choice.profile == "fp32":
        assert np.abs(out - tiny_golden.probs).max() <= FP32_MAX_ABS
        assert np.abs(first - out[:1]).max() <= FP32_MAX_ABS  # the batch an image comes in changes nothing
    else:
        assert distance.max() <= max_tv and distance.mean() <= mean_tv, (distance.max(), distance.mean())
        assert 0.5 * np.abs(first - out[:1]).sum() <= max_tv


def test_top1_agrees_where_the_golden_is_decisive(case, tiny_golden):
    choice, _, folder = case
    max_tv, _ = tolerance(choice.profile, tiny_golden)
    top = np.sort(tiny_golden.probs, axis=1)
    decisive = top[:, -1] - top[:, -2] > 2 * max_tv
    if not decisive.any():
        pytest.skip(f"{choice.profile} may move {max_tv:.2f} of this network's probability: no top-1 here is "
                    "decisive (int8 top-1 is judged on ResNets in tests/test_zoo_parity.py)")
    with choice.runtime(folder) as runtime:
        out = np.concatenate([runtime.infer(tiny_golden.batch[start:start + MAX_BATCH])
                              for start in range(0, len(tiny_golden.batch), MAX_BATCH)])
    np.testing.assert_array_equal(out.argmax(1)[decisive], tiny_golden.probs.argmax(1)[decisive])


def test_details_report_the_precision(case):
    choice, _, folder = case
    with choice.runtime(folder) as runtime:
        details = runtime.details
    assert details and all(isinstance(k, str) and isinstance(v, str) and v for k, v in details.items())
    assert details["precision"] == (targets()[choice.target].precision if choice.target else "fp32")
    if choice.label in variants():  # a run configuration says what it computes in
        assert details["inference_precision"] == choice.profile


def test_wrong_inputs_and_a_closed_runtime_raise(case, tiny_golden):
    choice, _, folder = case
    batch = tiny_golden.batch[:2]
    runtime = choice.runtime(folder)
    with runtime:
        for wrong, said in ((batch.astype(np.float64), "got float64 shape (2, 3, 224, 224)"),
                            (batch[:, :, :200, :200], "got float32 shape (2, 3, 200, 200)"),
                            (batch[0], "got float32 shape (3, 224, 224)"),
                            (batch[:, :1], "got float32 shape (2, 1, 224, 224)")):
            with pytest.raises(InputSpecError, match=re.escape(f"input 'x' | {said} | expected float32 (N, 3, 224, 224)")):
                runtime.infer(wrong)
        assert runtime.infer(batch).shape == (2, 1000)  # refusing bad input leaves it usable
    with pytest.raises(InputSpecError, match="closed"):
        runtime.infer(batch)


@pytest.mark.parametrize("name_fmt", ARTIFACT_CASES)
def test_manifest_records_the_artifact(name_fmt, built, tiny_model):
    from ppdeploy.samples import set_hash

    name, fmt = name_fmt
    choice = resolve(name)
    ok, reason = choice.availability()
    if not ok:
        pytest.skip(reason)
    target = targets()[choice.target]
    folder = built(choice, fmt)
    manifest = load_manifest(folder)
    model = tiny_model(fmt)
    assert manifest["target"] == target.name and manifest["backend"] == choice.backend == target.backend
    assert manifest["precision"] == target.precision
    assert manifest["source_format"] == fmt and manifest["source_hash"] == model.content_hash()
    assert manifest["output_shape"] == [TEST_BATCH, 1000]  # the pipeline's test run before trusting it
    assert manifest["input_shape_range"] == {"min": [1, 3, 224, 224], "max": [MAX_BATCH, 3, 224, 224]}
    assert PreprocessConfig(**manifest["preprocess"]) == PreprocessConfig.for_model_dir(model.directory)
    assert artifact_model_file(folder, manifest).stat().st_size == manifest["files"][manifest["model_file"]]
    for tool in (*target.tools, choice.record.distributions[0]):
        assert manifest["tools"][tool] == metadata.version(tool), tool
    # The chain: a target reads the Paddle format it can, or goes through its source (or fallback) artifact.
    source = target.source or (None if fmt in target.paddle_formats else target.fallback)
    if source is None:
        assert manifest["source_artifact_id"] is None
    else:
        assert manifest["source_artifact_id"] == load_manifest(folder.parent / source)["artifact_id"]
    if target.calibrated:
        assert manifest["calibration_hash"] == set_hash("calibration", None, QUICK_CALIBRATION["calib_count"])
        assert manifest["validation_hash"] == set_hash("validation", None, QUICK_CALIBRATION["val_count"])
        assert manifest["max_drop"] is None
    else:
        assert manifest["calibration_hash"] is None and manifest["validation_hash"] is None
