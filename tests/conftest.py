"""Shared fixtures: a session-wide ppdeploy cache, the tiny model (``tests/tiny.py``) with its numpy golden, and
synthetic zoo models, each exported once per session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Every test session gets a cache of its own, whatever PPDEPLOY_HOME says (tests free and corrupt cache entries on
# purpose: a user's exported PPDEPLOY_HOME must never be read, changed or deleted); it is removed at the end.
_HOME = tempfile.mkdtemp(prefix="ppdeploy-test-home-")
os.environ["PPDEPLOY_HOME"] = _HOME


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def ppdeploy_home() -> Path:
    return Path(os.environ["PPDEPLOY_HOME"])


@pytest.fixture(scope="session")
def synthetic_model():
    """Factory: ``synthetic_model("ResNet18", "json")`` → a resolved model exported once per session."""
    from ppdeploy.models.resolve import resolve_model

    cache: dict = {}

    def make(name: str = "ResNet18", fmt: str = "json"):
        cached = cache.get((name, fmt))
        if cached is None or not cached.paddle.model_file.is_file():  # a test may have freed it
            cache[name, fmt] = resolve_model(name, synthetic=True, fmt=fmt)
        return cache[name, fmt]

    return make


@pytest.fixture(scope="session")
def tiny_weights() -> dict:
    """The tiny model's weights (``tests/tiny.py``), numpy float32 by Paddle parameter name."""
    import tiny

    return tiny.tiny_weights()


@pytest.fixture(scope="session")
def tiny_model(tiny_weights, tmp_path_factory):
    """Factory: ``tiny_model("json")`` or ``tiny_model("pdmodel")`` → the tiny ResNet-like model as a
    ``PaddleModel``, exported once per session per format (again if a test damaged or deleted it)."""
    import shutil

    import numpy as np
    import tiny

    from ppdeploy.models.paddle_files import find_paddle_model

    root = tmp_path_factory.mktemp("tiny")
    weights_file = root / "weights.npz"
    np.savez(weights_file, **tiny_weights)
    cache: dict = {}  # fmt -> (PaddleModel, content hash when exported)

    def intact(fmt: str) -> bool:
        try:
            return fmt in cache and cache[fmt][0].content_hash() == cache[fmt][1]
        except OSError:
            return False

    def make(fmt: str = "json"):
        if not intact(fmt):
            out_dir = root / f"tiny_{fmt}"
            shutil.rmtree(out_dir, ignore_errors=True)
            model = find_paddle_model(tiny.export_tiny(weights_file, out_dir, fmt))
            cache[fmt] = (model, model.content_hash())
        return cache[fmt][0]

    return make


@pytest.fixture(scope="session")
def tiny_golden(tiny_weights, photos):
    """The tiny model's independent (numpy) answer on the judge photos: see ``tiny.Golden``."""
    import tiny

    return tiny.Golden.on(tiny_weights, photos[0])


@pytest.fixture(scope="session")
def photos():
    """Real photos (scikit-image's data) and their names."""
    from ppdeploy.samples import sample_images

    images = sample_images(16)
    return images, [f"sample_{i:03d}" for i in range(len(images))]


@pytest.fixture(scope="session")
def profile_agreement():
    """``profile_agreement(reference, output)``: see :func:`_profile_agreement`."""
    return _profile_agreement


def _profile_agreement(reference, output) -> float:
    """Share of images that pass the int8 profile's per-image rules against ``reference``, computed here
    independently of ``ppdeploy.converters.accuracy``: the same top-1 class unless the reference's top-1/top-2
    log-margin is within the tie margin, and a total variation distance within ``max_tv``."""
    import numpy as np

    from ppdeploy.profiles import PROFILES

    profile = PROFILES["int8"]
    top = np.sort(np.maximum(reference.astype(np.float64), 1e-7), axis=1)
    tie = np.log(top[:, -1] / top[:, -2]) <= profile.tie_margin
    tv = 0.5 * np.abs(output.astype(np.float64) - reference).sum(axis=1)
    return float((((output.argmax(1) == reference.argmax(1)) | tie) & (tv <= profile.max_tv)).mean())


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    """The tiny model's folder (json), for the serving tests."""
    return tiny_model("json").directory


@pytest.fixture(scope="module")
def onnx_classifier(model_dir):
    """A Classifier of the tiny model on ONNX Runtime, one per test module."""
    from ppdeploy.classifier import Classifier

    with Classifier(model_dir, "onnx") as clf:
        yield clf
