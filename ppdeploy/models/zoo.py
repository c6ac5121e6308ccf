"""The 16 PaddleClas ResNet variants as frozen records (figures from the seed's tables)."""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import TYPE_CHECKING

from ppdeploy.errors import ModelNotFoundError, one_line

if TYPE_CHECKING:
    from ppdeploy.preprocess import PreprocessConfig

DEFAULT_BASE_URL = "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/inference"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3),
          200: (3, 12, 48, 3)}


@dataclass(frozen=True)
class ModelSpec:
    """One zoo entry: architecture, preprocessing, the seed's published figures and the official archive."""

    name: str
    depth: int
    variant: str  # "vb" (plain), "vc" (deep stem) or "vd" (deep stem + avg-pool shortcut)
    top1: float
    top5: float
    flops_g: float
    params_m: float
    v100_ms: tuple[float, float, float] | None  # TensorRT fp32, batch 1/4/8
    t4_fp16_ms: tuple[float, float, float]
    t4_fp32_ms: tuple[float, float, float]
    input_size: int = 224
    resize_short: int = 256
    archive: str = ""  # official inference archive stem when it differs from ``name``
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scale: float = 0.00392157
    num_classes: int = 1000
    labels: str = "imagenet1k"
    reference_top1: float | None = None
    reference_top5: float | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def blocks(self) -> tuple[int, int, int, int]:
        return BLOCKS[self.depth]

    @property
    def bottleneck(self) -> bool:
        return self.depth >= 50

    @property
    def archive_name(self) -> str:
        return f"{self.archive or self.name}_infer.tar"

    @property
    def archive_url(self) -> str:
        base = os.environ.get("PPDEPLOY_MODEL_BASE_URL", DEFAULT_BASE_URL).rstrip("/")
        return f"{base}/{self.archive_name}"

    def preprocess_config(self) -> PreprocessConfig:
        """The preprocessing this model was trained and exported with."""
        from ppdeploy.preprocess import PreprocessConfig

        return PreprocessConfig(resize_short=self.resize_short, crop_size=self.input_size, mean=tuple(self.mean),
                                std=tuple(self.std), scale=self.scale)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("extra")
        data.update(archive_name=self.archive_name, archive_url=self.archive_url, blocks=list(self.blocks))
        return data


MODELS: dict[str, ModelSpec] = {}
CHECKSUMS_FILE = "model_checksums.txt"  # in ppdeploy/data; the format is described in that file


@functools.lru_cache(maxsize=1)
def archive_checksums() -> dict[str, str]:
    """Pinned sha256 of official archives, by archive name, from ``ppdeploy/data/model_checksums.txt``.

    The file uses ``sha256sum``'s format, one archive a line: ``<64 hex digits>  <archive name>``; ``#`` starts
    a comment. A line is added once its sum has been taken from the official server (``sha256sum
    ResNet50_infer.tar``); until then the archive is checked by its architecture only.
    """
    return parse_checksums(resources.files("ppdeploy").joinpath("data", CHECKSUMS_FILE).read_text(encoding="utf-8"))


def parse_checksums(text: str) -> dict[str, str]:
    """``sha256sum`` lines (``<hex>  <name>``, or ``<hex> *<name>``) to {name: lowercase hex}; others ignored."""
    sums: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) == 2 and len(fields[0]) == 64:
            sums[fields[1].lstrip("*")] = fields[0].lower()
    return sums


def archive_sha256(spec: ModelSpec) -> str | None:
    """The pinned sha256 of ``spec``'s official archive, or ``None`` when none is known yet."""
    return archive_checksums().get(spec.archive_name)


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a variant to the zoo; a new model is one call."""
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name} registered twice")
    MODELS[spec.name] = spec
    return spec


def get_model(name: str) -> ModelSpec:
    """Look a zoo entry up by name (case-insensitive), or raise with the valid names."""
    if name in MODELS:
        return MODELS[name]
    folded = {key.lower(): spec for key, spec in MODELS.items()}
    if name.lower() in folded:
        return folded[name.lower()]
    raise ModelNotFoundError(one_line(f"model '{name}'", "not in the zoo",
                                      "choose one of: " + ", ".join(MODELS)))


for _spec in (
    ModelSpec("ResNet18", 18, "vb", 0.710, 0.899, 3.660, 11.690, (1.22, 2.19, 3.63),
              (1.3568, 2.5225, 3.61904), (1.45606, 3.56305, 6.28798), reference_top1=0.696, reference_top5=0.891),
    ModelSpec("ResNet18_vd", 18, "vd", 0.723, 0.908, 4.140, 11.710, (1.26, 2.28, 3.89),
              (1.39593, 2.69063, 3.88267), (1.54557, 3.85363, 6.88121)),
    ModelSpec("ResNet34", 34, "vb", 0.746, 0.921, 7.360, 21.800, (1.97, 3.25, 5.70),
              (2.23092, 4.10205, 5.54904), (2.34957, 5.89821, 10.73451), reference_top1=0.732, reference_top5=0.913),
    ModelSpec("ResNet34_vd", 34, "vd", 0.760, 0.930, 7.390, 21.820, (2.00, 3.28, 5.84),
              (2.23992, 4.22246, 5.79534), (2.43427, 6.22257, 11.44906)),
    ModelSpec("ResNet34_vd_ssld", 34, "vd", 0.797, 0.949, 7.390, 21.820, (2.00, 3.26, 5.85),
              (2.23992, 4.22246, 5.79534), (2.43427, 6.22257, 11.44906)),
    ModelSpec("ResNet50", 50, "vb", 0.765, 0.930, 8.190, 25.560, (2.54, 4.79, 7.40),
              (2.63824, 4.63802, 7.02444), (3.47712, 7.84421, 13.90633), reference_top1=0.760, reference_top5=0.930),
    ModelSpec("ResNet50_vc", 50, "vc", 0.784, 0.940, 8.670, 25.580, (2.57, 4.83, 7.52),
              (2.67064, 4.72372, 7.17204), (3.52346, 8.10725, 14.45577)),
    ModelSpec("ResNet50_vd", 50, "vd", 0.791, 0.944, 8.670, 25.580, (2.60, 4.86, 7.63),
              (2.65164, 4.84109, 7.46225), (3.53131, 8.09057, 14.45965), reference_top1=0.792, reference_top5=0.946),
    ModelSpec("ResNet101", 101, "vb", 0.776, 0.936, 15.520, 44.550, (4.37, 8.18, 12.38),
              (5.04037, 7.73673, 10.8936), (6.07125, 13.40573, 24.3597), reference_top1=0.776, reference_top5=0.938),
    ModelSpec("ResNet101_vd", 101, "vd", 0.802, 0.950, 16.100, 44.570, (4.43, 8.25, 12.60),
              (5.05972, 7.83685, 11.34235), (6.11704, 13.76222, 25.11071)),
    ModelSpec("ResNet152", 152, "vb", 0.783, 0.940, 23.050, 60.190, (6.05, 11.41, 17.33),
              (7.28665, 10.62001, 14.90317), (8.50198, 19.17073, 35.78384), reference_top1=0.778, reference_top5=0.938),
    ModelSpec("ResNet152_vd", 152, "vd", 0.806, 0.953, 23.530, 60.210, (6.11, 11.51, 17.59),
              (7.29127, 10.86137, 15.32444), (8.54376, 19.52157, 36.64445)),
    ModelSpec("ResNet200_vd", 200, "vd", 0.809, 0.953, 30.530, 74.740, (7.70, 14.57, 22.16),
              (9.36026, 13.5474, 19.0725), (10.80619, 25.01731, 48.81399)),
    ModelSpec("ResNet50_vd_ssld", 50, "vd", 0.830, 0.964, 8.670, 25.580, (2.59, 4.87, 7.62),
              (2.65164, 4.84109, 7.46225), (3.53131, 8.09057, 14.45965)),
    # Fine-tuned at 320x320; published as Fix_ResNet50_vd_ssld_v2.
    ModelSpec("Fix_ResNet50_vd_ssld", 50, "vd", 0.840, 0.970, 17.696, 25.580, None,
              (3.42818, 7.51534, 13.19370), (5.07696, 14.64218, 27.01453),
              input_size=320, resize_short=320, archive="Fix_ResNet50_vd_ssld_v2"),
    ModelSpec("ResNet101_vd_ssld", 101, "vd", 0.837, 0.967, 16.100, 44.570, (4.43, 8.25, 12.58),
              (5.05972, 7.83685, 11.34235), (6.11704, 13.76222, 25.11071)),
):
    register_model(_spec)
