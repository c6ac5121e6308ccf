"""Issue 16: bench corpora like users' photos, reduced-size JPEG decoding behind --fast-decode (and its measured cost),
the parallel decode pipeline, per-stage times and CPU use in the e2e bench."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from ppdeploy.images import decode_image, reduction


@pytest.mark.parametrize(("size", "target", "factor"), [
    ((4032, 3024), 256, 8),   # 3024 // 8 = 378 >= 256
    ((3000, 2000), 256, 4),   # 2000 // 8 = 250 < 256, // 4 = 500
    ((1000, 600), 256, 2),    # 600 >= 512: // 2 = 300
    ((640, 480), 256, 1),     # 480 < 2 x 256: decoded exactly
    ((500, 375), 256, 1),
])
def test_reduction_keeps_the_short_side_at_or_above_the_resize_target(size, target, factor):
    assert reduction(size, target) == factor
    assert min(size) // factor >= target


def test_reduction_never_applies_without_a_header():
    assert reduction(None, 256) == 1


@pytest.fixture(scope="module")
def phone_folder(tmp_path_factory):
    from ppdeploy.bench.corpus import write_corpus

    folder = tmp_path_factory.mktemp("phone")
    write_corpus("phone", folder, count=4)
    return folder


def test_phone_corpus_is_12_megapixel_jpeg_from_the_judge_photos(phone_folder):
    files = sorted(phone_folder.iterdir())
    assert len(files) == 4
    for path in files:
        assert path.read_bytes()[:2] == b"\xff\xd8"
        height, width = cv2.imread(str(path)).shape[:2]
        assert sorted((width, height)) == [3024, 4032]
        assert path.stat().st_size > 1_000_000  # noise keeps it from compressing like a smooth upscale


def test_imagenet_corpus_size_and_bad_name(tmp_path):
    from ppdeploy.bench.corpus import write_corpus
    from ppdeploy.errors import DeployError

    paths = write_corpus("imagenet", tmp_path, count=3)
    assert all(sorted(cv2.imread(str(p)).shape[:2]) == [375, 500] for p in paths)
    with pytest.raises(DeployError, match="--corpus"):
        write_corpus("cifar", tmp_path)


def test_fast_decode_is_reduced_and_close_to_exact_after_the_resize(phone_folder):
    from ppdeploy.preprocess import PreprocessConfig, preprocess

    path = sorted(phone_folder.iterdir())[0]
    exact, fast = decode_image(path), decode_image(path, reduce_to=256)
    assert fast.shape[0] * fast.shape[1] * 40 < exact.shape[0] * exact.shape[1]  # 1/8 per side: 1/64 the pixels
    assert min(fast.shape[:2]) >= 256
    cfg = PreprocessConfig()
    a, b = preprocess(exact, cfg), preprocess(fast, cfg)
    assert a.shape == b.shape
    mean_abs_levels = float(np.abs(a - b).mean() * 58.0)  # normalised units back to ~grey levels (std ~58)
    assert 0.0 < mean_abs_levels < 10.0  # different pixels, not a different picture


def test_fast_decode_leaves_small_jpegs_and_pngs_exact(tmp_path):
    from ppdeploy.samples import sample_images

    image = cv2.resize(sample_images(1)[0], (480, 360), interpolation=cv2.INTER_AREA)  # short side < 2 x 256
    big = cv2.resize(image, (1600, 1200), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(tmp_path / "big.png"), big[:, :, ::-1])  # a big PNG: no DCT scaling exists for it
    assert decode_image(tmp_path / "big.png", reduce_to=256).shape == (1200, 1600, 3)
    for name in ("a.png", "b.jpg"):
        cv2.imwrite(str(tmp_path / name), image[:, :, ::-1])
        assert np.array_equal(decode_image(tmp_path / name, reduce_to=256), decode_image(tmp_path / name))


def test_classifier_keeps_every_item_and_order_with_fast_decode_and_throughput(tiny_model, phone_folder, tmp_path):
    from ppdeploy.classifier import Classifier

    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    files = [*sorted(phone_folder.iterdir()), tmp_path / "broken.jpg"]
    with Classifier(tiny_model("json").directory, "onnx", fast_decode=True, mode="throughput", requests=2,
                    batch_size=2) as clf:
        records = [r for batch in clf.predict(files) for r in batch]
    assert [r["filename"] for r in records] == [str(f) for f in files]
    assert "error" in records[-1] and all("class_ids" in r for r in records[:-1])


def test_parity_judges_fast_decode_against_exact_decoding(tiny_model, phone_folder):
    from ppdeploy.parity import FAST_DECODE, parity

    report = parity(tiny_model("json").directory, "paddle", images=str(phone_folder), fast_decode=True)
    row = next(r for r in report.results if r.backend == FAST_DECODE)
    assert row.profile == "int8" and row.metrics is not None and row.metrics.images == 4
    assert row.metrics.max_abs > 0  # it is not the same input: the row measures a real difference
    assert "reduced-size" in row.details["decode"]


def test_fast_decode_parity_needs_files():
    from ppdeploy.errors import DeployError

    done = subprocess.run([sys.executable, "-m", "ppdeploy.cli", "parity", "ResNet18", "--synthetic", "--backends",
                           "paddle", "--fast-decode", "--count", "8"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "--fast-decode" in done.stderr and "Traceback" not in done.stderr
    assert DeployError  # the message is one line, from a DeployError


def test_bench_e2e_reports_stages_cpu_use_and_mode(tiny_model, tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "ppdeploy.cli", "bench", str(tiny_model("json").directory),
                           "--backends", "onnx", "--batch-sizes", "2", "--iters", "3", "--rounds", "1", "--no-parity",
                           "--e2e", "--passes", "1", "--corpus", "imagenet", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert {row["mode"] for row in report["e2e"]} == {"throughput"}
    assert all(row["cpu_seconds"] and row["cpu_seconds"][0] > 0 for row in report["e2e"])
    stages = {s["backend"]: s for s in report["stages"]}
    assert set(stages) == {"paddle", "onnx"}
    assert all(set(s["per_image_ms"]) == {"read", "decode", "preprocess", "infer", "post"} for s in stages.values())
    assert "imagenet" in report["images_dir"] and "Where an image's time goes" in done.stdout
