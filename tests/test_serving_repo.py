"""``deploy export-repo``: Triton and OVMS model repositories of the tiny model (``tests/tiny.py``).

Every ``config.pbtxt`` is parsed with Triton's own model-config protobuf (``tritonclient``'s ``model_config_pb2``)
and checked against the artifact's real input/output names and shapes, read with ``onnx`` and OpenVINO directly
(not with the runtime export-repo uses). Triton and OVMS themselves are not installable from the package index, so
they do not load the repositories here (docs/serving.md shows how to start them).
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("tritonclient")
text_format = pytest.importorskip("google.protobuf.text_format")

from typer.testing import CliRunner

from ppdeploy.cli import app, main

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")


def _deploy_fails(args: list[str], capsys) -> str:
    """Run ``deploy ARGS`` through the console entry point; it must exit 1; its stderr."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 1
    return capsys.readouterr().err


def _config(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _onnx_io(path):
    import onnx

    graph = onnx.load(path).graph

    def dims(value):
        return [d.dim_value or -1 for d in value.type.tensor_type.shape.dim]

    return (graph.input[0].name, dims(graph.input[0])), (graph.output[0].name, dims(graph.output[0]))


def _openvino_io(path):
    import openvino as ov

    model = ov.Core().read_model(path)

    def dims(port):
        return [-1 if d.is_dynamic else d.get_length() for d in port.get_partial_shape()]

    return (model.inputs[0].get_any_name(), dims(model.inputs[0])), (model.outputs[0].get_any_name(),
                                                                      dims(model.outputs[0]))


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model("json").directory


@pytest.fixture(scope="module")
def triton_repo(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("repos") / "triton"
    done = CliRunner().invoke(app, ["export-repo", str(model_dir), "--format", "triton", "--targets",
                                    "onnx,openvino", "--max-batch", "4", "-o", str(out)])
    assert done.exit_code == 0, done.output
    return out


def test_triton_configs_parse_and_match_each_artifact(triton_repo, model_dir):
    base = model_dir.name
    readers = {"onnx": ("onnxruntime", "model.onnx", _onnx_io), "openvino": ("openvino", "model.xml", _openvino_io)}
    for target, (backend, filename, read) in readers.items():
        entry = triton_repo / f"{base}_{target}"
        config = _config(entry / "config.pbtxt")
        (input_name, input_dims), (output_name, output_dims) = read(entry / "1" / filename)
        assert config.name == entry.name and config.backend == backend
        assert config.default_model_filename == filename and config.max_batch_size == 4
        assert config.HasField("dynamic_batching")
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
        assert [(i.name, list(i.dims), i.data_type) for i in config.input] == [
            (input_name, input_dims[1:], model_config_pb2.TYPE_FP32)]
        assert [(o.name, list(o.dims), o.data_type) for o in config.output] == [
            (output_name, output_dims[1:], model_config_pb2.TYPE_FP32)]
        assert input_dims[0] == -1, "the artifact's batch dim must be dynamic for max_batch_size"
        if target == "openvino":
            assert (entry / "1" / "model.bin").is_file()


def test_triton_jpeg_ensemble_wires_our_preprocessing_to_each_artifact(triton_repo, model_dir):
    base = model_dir.name
    preprocess = _config(triton_repo / f"{base}_preprocess" / "config.pbtxt")
    assert preprocess.backend == "python" and preprocess.input[0].data_type == model_config_pb2.TYPE_STRING
    for target in ("onnx", "openvino"):
        model = _config(triton_repo / f"{base}_{target}" / "config.pbtxt")
        ensemble = _config(triton_repo / f"{base}_{target}_image" / "config.pbtxt")
        assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 4
        assert (ensemble.input[0].name, ensemble.output[0].name) == ("image", "probabilities")
        first, second = ensemble.ensemble_scheduling.step
        assert first.model_name == preprocess.name and second.model_name == model.name
        assert dict(first.output_map) == {model.input[0].name: "preprocessed"}
        assert dict(second.input_map) == {model.input[0].name: "preprocessed"}
        assert dict(second.output_map) == {model.output[0].name: "probabilities"}
        assert preprocess.output[0].name == model.input[0].name
        assert list(preprocess.output[0].dims) == list(model.input[0].dims)
        assert list(ensemble.output[0].dims) == list(model.output[0].dims)


def test_triton_preprocessing_model_feeds_what_deploy_run_feeds(triton_repo, model_dir):
    """The Python-backend model's own function (Triton's module is not needed for it) on a real judge photo."""
    from ppdeploy.classifier import load_input
    from ppdeploy.preprocess import PreprocessConfig
    from ppdeploy.samples import sample_photo_paths

    version = triton_repo / f"{model_dir.name}_preprocess" / "1"
    spec = importlib.util.spec_from_file_location("triton_model", version / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    settings = json.loads((version / "preprocess.json").read_text())
    cfg = PreprocessConfig(**settings["preprocess"])
    assert cfg == PreprocessConfig.for_model_dir(model_dir)
    photo = sample_photo_paths("judge")[1]
    batch = module.preprocess_images(np.array([[photo.read_bytes()]], dtype=object), cfg)
    assert batch.dtype == np.float32 and batch.shape == (1, 3, 224, 224)
    assert np.array_equal(batch[0], load_input(photo, cfg).tensor)


def test_ovms_repository_holds_the_ir_and_its_config(model_dir, tmp_path):
    out = tmp_path / "ovms"
    done = CliRunner().invoke(app, ["export-repo", str(model_dir), "--format", "ovms", "-o", str(out)])
    assert done.exit_code == 0, done.output
    config = json.loads((out / "config.json").read_text())
    (entry,) = config["model_config_list"]
    name = f"{model_dir.name}_openvino"
    assert entry["config"]["name"] == name and entry["config"]["base_path"] == name
    (input_name, input_dims), _ = _openvino_io(out / name / "1" / "model.xml")
    assert input_dims[1:] == [3, 224, 224] and (out / name / "1" / "model.bin").is_file()


@pytest.mark.parametrize("args, text", [
    (["--format", "tf"], "--format tf | unknown"),
    (["--format", "ovms", "--targets", "onnx"], "is not OpenVINO IR"),
    (["--format", "triton", "--targets", "onnx,nope"], "target 'nope' | unknown"),
    (["--format", "triton", "--targets", "onnx,onnx"], "names a target twice"),
])
def test_bad_requests_fail_in_one_line_before_any_conversion(args, text, tmp_path, ppdeploy_home, capsys):
    def manifests():
        return sorted((ppdeploy_home / "artifacts").rglob("manifest.json"))

    before = manifests()
    err = _deploy_fails(["export-repo", "ResNet50", "--synthetic", *args, "-o", str(tmp_path / "r")], capsys)
    assert text in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists() and manifests() == before


def test_an_existing_repository_is_not_overwritten(model_dir, tmp_path, capsys):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = _deploy_fails(["export-repo", str(model_dir), "--format", "triton", "-o", str(out)], capsys)
    assert "not an empty folder" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
