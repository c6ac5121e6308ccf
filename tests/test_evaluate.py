"""`deploy eval`: top-1/top-5 accuracy on a PaddleClas-format labelled list."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from ppdeploy.cli import app
from ppdeploy.errors import DeployError
from ppdeploy.evaluate import evaluate, read_label_list
from ppdeploy.parity import run_batches
from ppdeploy.preprocess import PreprocessConfig, preprocess_batch
from ppdeploy.registry import runtime_class
from ppdeploy.samples import sample_images


@pytest.fixture(scope="module")
def labelled(tiny_model, tmp_path_factory):
    """Six photos; labels = the reference's top-1 for the first three, its 6th-ranked class for the rest."""
    model = tiny_model("json")
    images = sample_images(6, seed=4)
    folder = tmp_path_factory.mktemp("val")
    (folder / "imgs").mkdir()
    names = []
    for i, image in enumerate(images):
        name = f"imgs/photo_{i}.png"  # lossless: the list's files decode to exactly these pixels
        cv2.imwrite(str(folder / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        names.append(name)
    with runtime_class("paddle")(model.directory) as runtime:
        probs = run_batches(runtime, [preprocess_batch(images, PreprocessConfig())])
    order = np.argsort(-probs, axis=1)
    labels = [int(order[i, 0]) if i < 3 else int(order[i, 5]) for i in range(6)]
    (folder / "val_list.txt").write_text("".join(f"{n} {label}\n" for n, label in zip(names, labels)))
    return model, folder / "val_list.txt"


def test_accuracy_is_counted_per_backend(labelled):
    model, data = labelled
    report = evaluate(model.directory, ["paddle", "onnx"], data)
    for result in report.results:
        assert result.status == "ok" and result.images == 6
        assert result.top1 == pytest.approx(0.5)  # three labels are the top-1
        assert result.top5 == pytest.approx(0.5)  # the others are ranked 6th: outside the top-5
    assert "+0.00 pt" in report.render()


def test_eval_command_prints_the_table(labelled):
    model, data = labelled
    result = CliRunner().invoke(app, ["eval", str(model.directory), "--data", str(data), "--backends",
                                      "paddle,openvino,trt-fp32"])
    assert result.exit_code == 0, result.output
    assert "0.5000" in result.output and "skipped" in result.output


def test_bad_list_line_is_one_clear_error(tmp_path):
    bad = tmp_path / "list.txt"
    bad.write_text("a.jpg 1\nb.jpg cat\n")
    with pytest.raises(DeployError, match=r"list.txt:2 .*path label"):
        read_label_list(bad)
