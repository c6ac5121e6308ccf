"""Exporting zoo ResNets as Paddle inference models: formats, synthetic weights, .pdparams, atomicity."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ppdeploy.errors import ConversionError, DeployError, ModelNotFoundError, WeightsMismatchError
from ppdeploy.models import export as export_module
from ppdeploy.models.export import MODEL_FILES, export_model, program_op_counts
from ppdeploy.models.resolve import default_shape_set
from ppdeploy.models.synthetic import SHAPE_IMAGES, SYNTHETIC_RECIPE
from ppdeploy.models.zoo import get_model
from ppdeploy.preprocess import PreprocessConfig, preprocess_batch
from ppdeploy.samples import builtin_set, sample_images

RESNET18 = get_model("ResNet18")
FORMATS = ("json", "pdmodel")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """ResNet18 with synthetic weights (seed 0, the default shape photos), once per format."""
    root = tmp_path_factory.mktemp("exported")
    shape = default_shape_set()
    return {fmt: export_model(RESNET18, root / fmt, synthetic=True, fmt=fmt, shape_images=shape) for fmt in FORMATS}


@pytest.fixture(scope="module")
def photo_batch() -> np.ndarray:
    """Judge photos: none of them shaped the synthetic weights."""
    return preprocess_batch(sample_images(24, role="judge"), RESNET18.preprocess_config())


def predict(directory: Path, fmt: str, batch: np.ndarray) -> np.ndarray:
    """Run Paddle Inference on explicit model/params paths (the form that works for both formats)."""
    from paddle import inference

    model_file, params_file = (directory / name for name in MODEL_FILES[fmt])
    config = inference.Config(str(model_file), str(params_file))
    config.disable_gpu()
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    assert predictor.get_input_names() == ["x"]
    handle = predictor.get_input_handle("x")
    handle.reshape(list(batch.shape))
    handle.copy_from_cpu(np.ascontiguousarray(batch))
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


# --- what an export writes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_writes_model_yaml_and_record(exported, fmt):
    directory = exported[fmt]
    names = {path.name for path in directory.iterdir()}
    assert set(MODEL_FILES[fmt]) | {"inference_cls.yaml", "export.json"} <= names
    assert ("inference.pdiparams.info" in names) == (fmt == "pdmodel")
    record = json.loads((directory / "export.json").read_text())
    assert record["model"] == "ResNet18" and record["synthetic"] is True and record["seed"] == 0
    assert record["format"] == fmt and record["paddle"] and record["seconds"] > 0
    assert record["recipe"] == SYNTHETIC_RECIPE and record["shape_set"]["role"] == "shape"
    assert record["shape_set"]["count"] == SHAPE_IMAGES and "astronaut.png" in record["shape_set"]["provenance"]
    assert PreprocessConfig.from_yaml(directory / "inference_cls.yaml") == RESNET18.preprocess_config()
    text = (directory / "inference_cls.yaml").read_text()
    assert "scale: 0.00392157" in text and "order: ''" in text and "- ToCHWImage:\n" in text
    assert "name: Topk" in text and "topk: 5" in text


@pytest.mark.parametrize("fmt", FORMATS)
def test_program_has_the_architecture_and_ends_in_softmax(exported, fmt):
    counts = program_op_counts(exported[fmt] / MODEL_FILES[fmt][0])
    assert counts["conv2d"] == 21 and counts["pool2d"] == 2 and counts["softmax"] == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_paddle_inference_gives_probabilities_for_a_photo(exported, photo_batch, fmt):
    probs = predict(exported[fmt], fmt, photo_batch[:1])
    assert probs.shape == (1, 1000)
    assert probs.sum() == pytest.approx(1.0, abs=1e-4) and probs.min() >= 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_synthetic_predictions_look_like_a_trained_model(exported, photo_batch, fmt):
    probs = predict(exported[fmt], fmt, photo_batch)  # dynamic batch: 24 at once
    assert probs.shape == (24, 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    top1 = probs.max(axis=1)  # on photos the weights never saw
    assert 0.2 <= np.median(top1) <= 0.95, f"median top-1 {np.median(top1):.3f}"
    assert top1.min() > 0.01 and np.mean(top1 > 0.999) < 0.25, f"top-1 {np.round(top1, 3)}"
    assert len(set(probs.argmax(axis=1))) >= 5, "different crops of 3 photos get different classes"


def test_both_formats_hold_the_same_model(exported, photo_batch):
    json_dir, pdmodel_dir = exported["json"], exported["pdmodel"]
    assert (json_dir / "inference.pdiparams").read_bytes() == (pdmodel_dir / "inference.pdiparams").read_bytes()
    np.testing.assert_allclose(predict(json_dir, "json", photo_batch[:4]),
                               predict(pdmodel_dir, "pdmodel", photo_batch[:4]), atol=1e-4)


@pytest.mark.parametrize(("name", "convs", "pools"), [("ResNet50_vd", 55, 5), ("ResNet50", 53, 2)])
def test_exported_program_operator_counts(tmp_path, name, convs, pools):
    out = export_model(get_model(name), tmp_path / name, synthetic=True, shape_images=builtin_set("shape", 2))
    counts = program_op_counts(out / "inference.json")
    assert (counts["conv2d"], counts["pool2d"]) == (convs, pools)


def test_spec_outside_the_zoo_reaches_the_child_process(tmp_path, photo_batch):
    small = dataclasses.replace(RESNET18, name="ResNet18_tiny", input_size=64, resize_short=73, num_classes=10)
    out = export_model(small, tmp_path / "tiny", synthetic=True, fmt="pdmodel", shape_images=builtin_set("shape", 2))
    assert json.loads((out / "export.json").read_text())["input_shape"] == [None, 3, 64, 64]
    batch = preprocess_batch(sample_images(2), PreprocessConfig.from_yaml(out / "inference_cls.yaml"))
    assert predict(out, "pdmodel", batch).shape == (2, 10)


def test_json_from_a_process_in_legacy_mode_goes_through_a_child(tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "native_format", lambda: "pdmodel")
    out = export_model(RESNET18, tmp_path / "model", synthetic=True, fmt="json", shape_images=builtin_set("shape", 2))
    assert (out / "inference.json").is_file() and not (out / "inference.pdmodel").exists()


# --- seeds ------------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_weights(exported, tmp_path):
    again = export_model(RESNET18, tmp_path / "again", synthetic=True, seed=0, shape_images=default_shape_set())
    assert (again / "inference.pdiparams").read_bytes() == (exported["json"] / "inference.pdiparams").read_bytes()


def test_other_seed_gives_other_weights():
    from ppdeploy.models.resnet import build_resnet
    from ppdeploy.models.synthetic import synthesize_weights

    photos = preprocess_batch(sample_images(4, role="shape"), RESNET18.preprocess_config())
    states = []
    for seed in (0, 0, 1):
        net = build_resnet(RESNET18)
        synthesize_weights(net, photos, seed=seed)
        states.append({name: value.numpy() for name, value in net.state_dict().items()})
    assert all(np.array_equal(states[0][name], states[1][name]) for name in states[0])
    assert not np.array_equal(states[0]["blocks.0.conv0.conv.weight"], states[2]["blocks.0.conv0.conv.weight"])
    assert not np.array_equal(states[0]["stem.0.bn._mean"], states[2]["stem.0.bn._mean"])


# --- .pdparams --------------------------------------------------------------------------------------------------


def save_state(spec_name: str, path: Path, *, seed: int = 0) -> Path:
    import paddle

    from ppdeploy.models.resnet import build_resnet
    from ppdeploy.models.synthetic import random_init

    net = build_resnet(get_model(spec_name))
    random_init(net, np.random.default_rng(seed))
    paddle.save(net.state_dict(), str(path))
    return path


def test_matching_pdparams_export_reproduces_the_network(tmp_path, photo_batch):
    import paddle
    import paddle.nn.functional as F

    from ppdeploy.models.resnet import build_resnet

    weights = save_state("ResNet18", tmp_path / "ResNet18_pretrained.pdparams", seed=3)
    out = export_model(RESNET18, tmp_path / "model", weights=weights)
    record = json.loads((out / "export.json").read_text())
    assert record["synthetic"] is False and record["seed"] is None and record["weights"] == str(weights)

    net = build_resnet(RESNET18)
    net.set_state_dict(paddle.load(str(weights)))
    net.eval()
    with paddle.no_grad():
        expected = F.softmax(net(paddle.to_tensor(photo_batch[:2])), axis=-1).numpy()
    np.testing.assert_allclose(predict(out, "json", photo_batch[:2]), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fmt", FORMATS)
def test_mismatching_pdparams_is_refused_with_the_first_mismatches(tmp_path, fmt):
    weights = save_state("ResNet34", tmp_path / "ResNet34_pretrained.pdparams")
    out = tmp_path / "model"
    with pytest.raises(WeightsMismatchError) as caught:
        export_model(RESNET18, out, weights=weights, fmt=fmt)  # pdmodel: raised in the child, re-raised here
    message = str(caught.value)
    assert "\n" not in message and "ResNet18" in message and str(weights) in message
    assert "15 missing: blocks.2.short.conv.weight" in message and "95 unexpected: blocks.3.short" in message
    assert "wrong shape (file vs model): blocks.2.conv0.conv.weight [64, 64, 3, 3] vs [128, 64, 3, 3]" in message
    assert not out.exists()


def test_shape_and_missing_mismatches_are_named():
    from ppdeploy.models.weights import weights_mismatches

    expected = {"fc.weight": (512, 1000), "fc.bias": (1000,), "stem.0.conv.weight": (64, 3, 7, 7)}
    state = {"fc.weight": np.zeros((2048, 1000)), "stem.0.conv.weight": np.zeros((64, 3, 7, 7))}
    assert weights_mismatches(expected, state) == [
        "1 missing: fc.bias", "1 wrong shape (file vs model): fc.weight [2048, 1000] vs [512, 1000]"]
    assert weights_mismatches(expected, {**state, "fc.weight": np.zeros((512, 1000)), "fc.bias": np.zeros(1000)}) == []


def test_unreadable_or_missing_weights(tmp_path):
    garbage = tmp_path / "garbage.pdparams"
    garbage.write_bytes(b"not a pickle at all")
    with pytest.raises(WeightsMismatchError, match="not a Paddle state dict"):
        export_model(RESNET18, tmp_path / "a", weights=garbage)
    with pytest.raises(ModelNotFoundError, match="file not found"):
        export_model(RESNET18, tmp_path / "b", weights=tmp_path / "absent.pdparams")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(("kwargs", "match"), [({}, "pass weights="), ({"synthetic": True, "weights": "w"}, "only one"),
                                               ({"synthetic": True, "fmt": "onnx"}, "choose one of: json, pdmodel"),
                                               ({"synthetic": True}, "without shape images")])
def test_bad_options(tmp_path, kwargs, match):
    with pytest.raises(DeployError, match=match):
        export_model(RESNET18, tmp_path / "model", **kwargs)


# --- atomicity --------------------------------------------------------------------------------------------------


def test_failed_export_leaves_nothing_and_keeps_the_previous_model(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise ConversionError("simulated failure while saving")

    monkeypatch.setattr(export_module, "save_inference", fail)
    with pytest.raises(ConversionError, match="simulated"):
        export_model(RESNET18, tmp_path / "model", synthetic=True, shape_images=builtin_set("shape", 2))
    assert list(tmp_path.iterdir()) == []

    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "inference.json").write_text("{}")
    with pytest.raises(ConversionError):
        export_model(RESNET18, previous, synthetic=True, shape_images=builtin_set("shape", 2))
    assert [path.name for path in tmp_path.iterdir()] == ["previous"]
    assert (previous / "inference.json").read_text() == "{}"


def test_killed_export_leaves_nothing_at_out_dir(tmp_path):
    out = tmp_path / "model"
    process = subprocess.Popen([sys.executable, "-m", "ppdeploy.models.export", "ResNet18", str(out), "--synthetic"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not any(path.name.endswith(".partial") for path in tmp_path.iterdir()):
            assert process.poll() is None, "the export ended before it could be killed"
            assert time.monotonic() < deadline, "no staging folder appeared"
            time.sleep(0.05)
        time.sleep(0.5)  # let it write some files into the staging folder
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert not out.exists()
