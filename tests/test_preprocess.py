"""Preprocessing against a plain, independent transcription of PaddleClas's Python deploy ops."""

from __future__ import annotations

import textwrap

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppdeploy.errors import ArtifactError, ImageError, InputSpecError
from ppdeploy.models.zoo import get_model
from ppdeploy.preprocess import (
    PreprocessConfig,
    center_crop,
    normalize,
    parse_scale,
    preprocess,
    preprocess_batch,
    resize_short,
    resize_short_size,
    to_chw,
    to_rgb_uint8,
)

# ------------------------------------------------------------------------------ the spec, written out plainly


def spec_size(width: int, height: int, short: int) -> tuple[int, int]:
    """ResizeImage(resize_short): percent of the short side, Python's round (half to even)."""
    percent = float(short) / min(width, height)
    return round(width * percent), round(height * percent)


def spec_pipeline(rgb: np.ndarray, short: int = 256, crop: int = 224, scale: float = 0.00392157,
                  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) -> np.ndarray:
    """ResizeImage → CropImage → NormalizeImage(order='') → ToCHWImage, as PaddleClas writes them."""
    img_h, img_w = rgb.shape[:2]
    w, h = spec_size(img_w, img_h, short)
    img = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    w_start, h_start = (w - crop) // 2, (h - crop) // 2
    img = img[h_start:h_start + crop, w_start:w_start + crop, :]
    mean32 = np.array(mean).reshape((1, 1, 3)).astype("float32")
    std32 = np.array(std).reshape((1, 1, 3)).astype("float32")
    img = (img.astype("float32") * np.float32(scale) - mean32) / std32
    return img.transpose((2, 0, 1))


def spec_to_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """The conversion rules of the module docstring, one branch per rule."""
    img = array if array.ndim == 3 else array[:, :, None]
    if img.shape[2] == 1:
        img = np.concatenate([img, img, img], axis=2)
    img = img[:, :, :3]
    if img.dtype == np.bool_:
        return np.where(img, 255, 0).astype(np.uint8)
    if img.dtype == np.uint16:
        return (img // 256).astype(np.uint8)
    if img.dtype.kind == "f":
        return np.rint(img.astype(np.float64) * 255).astype(np.uint8)
    return img.astype(np.uint8)


def photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(("width", "height", "expected"), [
    (513, 512, (256, 256)),       # 256.5 rounds to even; PaddleClas's C++ path would give 257
    (512, 513, (256, 256)),
    (515, 512, (258, 256)),       # 257.5 rounds to even
    (1, 1000, (256, 256000)),
    (1000, 1, (256000, 256)),
    (224, 100, (573, 256)),
    (256, 256, (256, 256)),
    (640, 427, (384, 256)),
])
def test_resize_short_size_follows_python_rounding(width, height, expected):
    assert resize_short_size(width, height, 256) == expected == spec_size(width, height, 256)


@pytest.mark.parametrize(("width", "height"), [(513, 512), (1, 1000), (224, 100), (100, 224), (1, 1), (257, 4000)])
def test_resize_short_output_shape(width, height):
    img = np.zeros((height, width, 3), np.uint8)
    out = resize_short(img, 256)
    assert out.shape == (spec_size(width, height, 256)[1], spec_size(width, height, 256)[0], 3)
    assert min(out.shape[:2]) == 256


def test_resize_short_uses_inter_linear():
    img = photo(np.random.default_rng(1), 300, 451)
    assert np.array_equal(resize_short(img, 256), cv2.resize(img, spec_size(451, 300, 256), interpolation=1))
    nearest = cv2.resize(img, spec_size(451, 300, 256), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(resize_short(img, 256, "nearest"), nearest)


def test_resize_refuses_results_above_the_pixel_limit(monkeypatch):
    monkeypatch.setenv("PPDEPLOY_MAX_PIXELS", "1000000")
    with pytest.raises(InputSpecError, match="1x1000"):
        resize_short(np.zeros((1000, 1, 3), np.uint8), 256)


# ------------------------------------------------------------------------------------------------------ crop


@pytest.mark.parametrize(("height", "width"), [(256, 256), (256, 573), (257, 256), (300, 451), (225, 224)])
def test_center_crop_offsets(height, width):
    index = np.arange(height * width).reshape(height, width)
    img = np.stack([index, index, index], axis=2)
    out = center_crop(img, 224)
    top, left = divmod(int(out[0, 0, 0]), width)
    assert (left, top) == ((width - 224) // 2, (height - 224) // 2)
    assert out.shape == (224, 224, 3)


def test_center_crop_smaller_than_crop_raises_like_paddleclas():
    with pytest.raises(InputSpecError, match="smaller than the 224x224 crop"):
        center_crop(np.zeros((223, 500, 3), np.uint8), 224)


def test_crop_larger_than_resize_is_refused_in_the_pipeline():
    with pytest.raises(InputSpecError):
        preprocess(np.zeros((300, 300, 3), np.uint8), PreprocessConfig(resize_short=200, crop_size=224))


# ------------------------------------------------------------------------------------------------- normalize


def test_normalize_matches_float64_math_and_is_float32():
    img = photo(np.random.default_rng(2), 5, 7)
    mean, std, scale = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.00392157
    out = normalize(img, mean, std, scale)
    assert out.dtype == np.float32 and out.shape == (5, 7, 3)
    expected = (img.astype(np.float64) * scale - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-6)
    assert out[0, 0, 0] == pytest.approx((img[0, 0, 0] * scale - mean[0]) / std[0], abs=2e-6)  # R first


def test_to_chw_is_contiguous_transpose():
    img = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    out = to_chw(img)
    assert out.shape == (3, 2, 3) and out.flags["C_CONTIGUOUS"]
    assert out[1, 0, 2] == img[0, 2, 1]


# ------------------------------------------------------------------------------------------- whole pipeline


def test_photos_match_the_paddleclas_pipeline_bit_for_bit():
    from ppdeploy.samples import sample_images

    for image in sample_images():
        assert np.array_equal(preprocess(image), spec_pipeline(image))


@pytest.mark.parametrize(("height", "width"), [(512, 513), (1000, 1), (1, 1000), (100, 224), (224, 100), (1, 1)])
def test_odd_sizes(height, width):
    img = photo(np.random.default_rng(height * 7 + width), height, width)
    out = preprocess(img)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
    assert np.array_equal(out, spec_pipeline(img))


def test_fix_resnet_320_config():
    cfg = get_model("Fix_ResNet50_vd_ssld").preprocess_config()
    img = photo(np.random.default_rng(3), 400, 600)
    out = preprocess(img, cfg)
    assert out.shape == (3, 320, 320)
    assert np.array_equal(out, spec_pipeline(img, short=320, crop=320))


def test_grayscale_and_rgba_inputs():
    rng = np.random.default_rng(4)
    gray = rng.integers(0, 256, (300, 200), dtype=np.uint8)
    assert np.array_equal(preprocess(gray), spec_pipeline(np.stack([gray] * 3, axis=2)))
    rgba = rng.integers(0, 256, (300, 200, 4), dtype=np.uint8)
    assert np.array_equal(preprocess(rgba), spec_pipeline(np.ascontiguousarray(rgba[:, :, :3])))


def test_batch_is_contiguous_stack_of_singles():
    rng = np.random.default_rng(5)
    images = [photo(rng, 300, 451), photo(rng, 513, 512), rng.integers(0, 256, (90, 240), dtype=np.uint8)]
    batch = preprocess_batch(images)
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == np.float32 and batch.flags["C_CONTIGUOUS"]
    for row, image in zip(batch, images, strict=True):
        assert np.array_equal(row, preprocess(image))
    assert preprocess_batch([]).shape == (0, 3, 224, 224)


# ----------------------------------------------------------------------------------------------- conversion


def test_to_rgb_uint8_rules():
    rng = np.random.default_rng(6)
    gray = rng.integers(0, 256, (4, 5), dtype=np.uint8)
    assert np.array_equal(to_rgb_uint8(gray), np.stack([gray] * 3, axis=2))
    assert np.array_equal(to_rgb_uint8(gray[:, :, None]), np.stack([gray] * 3, axis=2))
    wide = rng.integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    assert np.array_equal(to_rgb_uint8(wide), (wide >> 8).astype(np.uint8))
    assert np.array_equal(to_rgb_uint8(np.array([[True, False]])), [[[255] * 3, [0] * 3]])
    floats = np.array([[[0.0, 0.5, 1.0]]], dtype=np.float32)
    assert to_rgb_uint8(floats).tolist() == [[[0, 128, 255]]]
    assert to_rgb_uint8(np.array([[[1, 2, 255]]], dtype=np.int64)).dtype == np.uint8


def test_uint16_rule_matches_opencv_png_reading(tmp_path):
    wide = np.random.default_rng(7).integers(0, 65536, (6, 9, 3), dtype=np.uint16)
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), wide[:, :, ::-1])
    decoded = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert np.array_equal(to_rgb_uint8(wide), decoded)


@pytest.mark.parametrize("bad", [
    np.full((2, 2, 3), 1.5, np.float32),
    np.full((2, 2, 3), -0.1, np.float64),
    np.array([[[np.nan, 0, 0]]]),
    np.full((2, 2, 3), 256, np.int32),
    np.full((2, 2, 3), -1, np.int16),
    np.zeros((2, 2, 2), np.uint8),
    np.zeros((3, 2, 2, 3), np.uint8),
    np.zeros((0, 4, 3), np.uint8),
    np.array([["a"]]),
])
def test_to_rgb_uint8_refuses(bad):
    with pytest.raises(ImageError) as info:
        to_rgb_uint8(bad)
    assert "\n" not in str(info.value) and " | " in str(info.value)


# ------------------------------------------------------------------------------------------------ the config


def test_config_defaults_and_spec():
    cfg = PreprocessConfig()
    assert (cfg.resize_short, cfg.crop_size, cfg.scale, cfg.interpolation) == (256, 224, 0.00392157, "linear")
    assert get_model("ResNet50_vd").preprocess_config() == cfg
    assert cfg.to_dict() == {"resize_short": 256, "crop_size": 224, "mean": [0.485, 0.456, 0.406],
                             "std": [0.229, 0.224, 0.225], "scale": 0.00392157, "interpolation": "linear"}
    assert PreprocessConfig(mean=[0.485, 0.456, 0.406]) == cfg  # lists normalised to tuples; hashable
    assert hash(cfg) == hash(PreprocessConfig())


@pytest.mark.parametrize("kwargs", [{"resize_short": 0}, {"crop_size": 2.5}, {"mean": (1, 2)}, {"std": (1, 0, 1)},
                                    {"scale": 0}, {"interpolation": "fancy"}])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        PreprocessConfig(**kwargs)


def test_interpolation_aliases():
    assert PreprocessConfig(interpolation="bilinear").interpolation == "linear"
    assert PreprocessConfig(interpolation="BICUBIC").interpolation == "cubic"


PADDLECLAS_YAML = textwrap.dedent("""\
    Global:
      infer_imgs: "./images/ILSVRC2012_val_00000010.jpeg"
      inference_model_dir: "./models"
      batch_size: 1
    PreProcess:
      transform_ops:
        - ResizeImage:
            resize_short: 256
        - CropImage:
            size: 224
        - NormalizeImage:
            scale: 0.00392157
            mean: [0.485, 0.456, 0.406]
            std: [0.229, 0.224, 0.225]
            order: ''
        - ToCHWImage:
    PostProcess:
      name: Topk
      topk: 5
    """)


def test_from_yaml_reads_paddleclas_deploy_config(tmp_path):
    path = tmp_path / "inference_cls.yaml"
    path.write_text(PADDLECLAS_YAML)
    assert PreprocessConfig.from_yaml(path) == PreprocessConfig()


@pytest.mark.parametrize(("text", "value"), [("1.0/255.0", 1 / 255), ("1/255", 1 / 255), ("0.00392157", 0.00392157),
                                             (0.5, 0.5), (" 2 ", 2.0)])
def test_parse_scale(text, value):
    assert parse_scale(text) == value


@pytest.mark.parametrize("text", ["__import__('os').system('true')", "1/2/3", "abc", "", True])
def test_parse_scale_refuses_anything_else(text):
    with pytest.raises(ValueError):
        parse_scale(text)


def test_yaml_round_trip_and_string_scale(tmp_path):
    cfg = PreprocessConfig(resize_short=320, crop_size=288, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5),
                           scale=1 / 255, interpolation="cubic")
    path = tmp_path / "inference_cls.yaml"
    path.write_text(yaml.safe_dump({"PreProcess": {"transform_ops": cfg.to_yaml_ops()}}))
    assert PreprocessConfig.from_yaml(path) == cfg
    ops = cfg.to_yaml_ops()
    assert [next(iter(op)) for op in ops] == ["ResizeImage", "CropImage", "NormalizeImage", "ToCHWImage"]
    assert ops[0]["ResizeImage"]["interpolation"] == "bicubic"  # PaddleClas's name for it
    assert "interpolation" not in PreprocessConfig().to_yaml_ops()[0]["ResizeImage"]
    text = PADDLECLAS_YAML.replace("scale: 0.00392157", "scale: '1.0/255.0'")
    path.write_text(text)
    assert PreprocessConfig.from_yaml(path).scale == 1 / 255


@pytest.mark.parametrize(("old", "new"), [
    ("scale: 0.00392157", "scale: \"__import__('os')\""),
    ("resize_short: 256", "size: [224, 224]"),
    ("size: 224", "size: [224, 256]"),
    ("- ToCHWImage:", "- RandFlipImage:"),
    ("PreProcess:", "Preprocess:"),
])
def test_from_yaml_refuses_unusable_configs(tmp_path, old, new):
    path = tmp_path / "inference_cls.yaml"
    path.write_text(PADDLECLAS_YAML.replace(old, new))
    with pytest.raises(ArtifactError) as info:
        PreprocessConfig.from_yaml(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_for_model_dir(tmp_path):
    default = PreprocessConfig(resize_short=320, crop_size=320)
    assert PreprocessConfig.for_model_dir(tmp_path, default) is default
    assert PreprocessConfig.for_model_dir(tmp_path) == PreprocessConfig()
    (tmp_path / "inference_cls.yaml").write_text(PADDLECLAS_YAML.replace("size: 224", "size: 232"))
    assert PreprocessConfig.for_model_dir(tmp_path, default).crop_size == 232


# ----------------------------------------------------------------------------------------------- properties


@st.composite
def images(draw):
    short = draw(st.integers(1, 64))
    long = draw(st.integers(short, 400))
    height, width = (short, long) if draw(st.booleans()) else (long, short)
    channels = draw(st.sampled_from([None, 1, 3, 4]))
    dtype = draw(st.sampled_from(["uint8", "uint16", "float32", "float64", "bool"]))
    shape = (height, width) if channels is None else (height, width, channels)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype.startswith("float"):
        return rng.random(shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image=images(), crop=st.sampled_from([224, 256, 320]))
def test_preprocess_property(image, crop):
    cfg = PreprocessConfig(resize_short=max(crop, 256), crop_size=crop)
    out = preprocess(image, cfg)
    assert out.shape == (3, crop, crop) and out.dtype == np.float32 and np.isfinite(out).all()
    rgb = spec_to_rgb_uint8(image)
    assert np.array_equal(rgb, to_rgb_uint8(image))
    assert np.array_equal(out, spec_pipeline(rgb, short=cfg.resize_short, crop=crop))


@given(width=st.integers(1, 10**5), height=st.integers(1, 10**5), short=st.integers(1, 1024))
def test_resize_size_property(width, height, short):
    new_w, new_h = resize_short_size(width, height, short)
    assert (new_w, new_h) == spec_size(width, height, short)
    assert min(new_w, new_h) == short
    assert abs(new_w * height - new_h * width) <= max(width, height)  # aspect kept within rounding


@pytest.mark.parametrize(("mean", "std", "scale"), [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1 / 255),
                                                    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 0.00392157),
                                                    ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), 1.0)])
def test_one_pass_normalisation_is_bit_identical_to_paddleclas_order(mean, std, scale):
    from ppdeploy.preprocess import normalized_chw

    img = np.random.default_rng(0).integers(0, 256, (57, 41, 3), dtype=np.uint8)
    for view in (img, img[3:50, 2:39], img[:, ::-1]):  # contiguous, a centre crop's view, a mirrored view
        assert np.array_equal(normalized_chw(view, mean, std, scale), to_chw(normalize(view, mean, std, scale)))
