"""PaddleClas's ResNet family (vb, vc, vd) in ``paddle.nn``, with PaddleClas's parameter names.

Two naming schemes exist upstream, and PaddleClas's published ``.pdparams`` are keyed by them:

- ``ppcls/arch/backbone/legendary_models/resnet.py`` (plain ``vb`` and ``vd``): ``stem.{i}.conv.weight``,
  ``stem.{i}.bn.{weight,bias,_mean,_variance}``, ``blocks.{n}.conv{0,1,2}.conv.weight``, ``blocks.{n}.short.conv``,
  ``fc.weight``, with the blocks numbered through all stages;
- ``ppcls/arch/backbone/model_zoo/resnet_vc.py`` (``vc``): ``conv1_{1,2,3}._conv.weight``,
  ``conv1_1._batch_norm.{weight,bias,_mean,_variance}``, ``bb_{stage}_{i}.conv{0,1,2}._conv.weight``,
  ``bb_{stage}_{i}.short._conv``, ``out.weight``.

The architecture is described twice over one plan: :func:`conv_plan` (pure Python: names, channels, strides and
feature-map sizes) drives both :func:`build_resnet` and the analytic :func:`count_params_and_flops`, so the two
cannot drift apart. ``paddle`` is imported only when a network is built.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import paddle

    from ppdeploy.models.zoo import ModelSpec

STAGE_FILTERS = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4
DEEP_STEM = ((32, 2), (32, 1), (64, 1))  # (out channels, stride) of the three 3x3 stem convs of vc and vd
BN_STATS = ("_mean", "_variance")  # BatchNorm buffers: in state dicts and .pdparams, not trainable


@dataclass(frozen=True)
class Naming:
    """How one upstream implementation names its layers."""

    conv: str  # attribute of the conv inside a conv+BN unit
    bn: str  # attribute of the BatchNorm inside a conv+BN unit
    fc: str  # attribute of the classifier
    containers: bool  # stem and blocks live in ``stem``/``blocks`` Sequentials (legendary) or flat (vc)

    def stem(self, index: int) -> str:
        return f"stem.{index}" if self.containers else f"conv1_{index + 1}"

    def block(self, stage: int, index: int, flat_index: int) -> str:
        return f"blocks.{flat_index}" if self.containers else f"bb_{stage}_{index}"


LEGENDARY = Naming(conv="conv", bn="bn", fc="fc", containers=True)
RESNET_VC = Naming(conv="_conv", bn="_batch_norm", fc="out", containers=False)


@dataclass(frozen=True)
class ConvPlan:
    """One conv + BatchNorm unit (optionally preceded by a 2x2 average pool, optionally followed by ReLU).

    Attributes:
        name: the unit's prefix in the state dict, e.g. ``blocks.3.conv1`` or ``bb_1_0.short``.
        pool_stride: stride of the ``vd`` shortcut's 2x2 average pool before the conv; 0 for none.
        in_size: side of the (square) feature map entering the unit; out_size: leaving it.
    """

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    relu: bool
    in_size: int
    out_size: int
    pool_stride: int = 0

    @property
    def attr(self) -> str:
        """The unit's attribute name inside its parent layer."""
        return self.name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class BlockPlan:
    """One residual block: its main-path units, then its projection shortcut when it has one."""

    name: str
    main: tuple[ConvPlan, ...]
    shortcut: ConvPlan | None

    @property
    def out_channels(self) -> int:
        return self.main[-1].out_channels

    @property
    def out_size(self) -> int:
        return self.main[-1].out_size


def naming_for(spec: ModelSpec) -> Naming:
    """The naming scheme of the PaddleClas implementation ``spec`` comes from."""
    return RESNET_VC if spec.variant == "vc" else LEGENDARY


def _conv_out(size: int, kernel: int, stride: int) -> int:
    padding = (kernel - 1) // 2
    return (size + 2 * padding - kernel) // stride + 1


def _unit(name: str, cin: int, cout: int, kernel: int, stride: int, size: int, *, relu: bool,
          pool_stride: int = 0) -> ConvPlan:
    """A conv unit entering at ``size``; a pooled unit's conv runs at stride 1 after the pool (``vd``)."""
    conv_in = math.ceil(size / pool_stride) if pool_stride else size  # AvgPool2D(2, s, "SAME", ceil_mode=True)
    return ConvPlan(name, cin, cout, kernel, stride, relu, size, _conv_out(conv_in, kernel, stride), pool_stride)


def stem_plan(spec: ModelSpec) -> list[ConvPlan]:
    """The stem's conv units: one 7x7/2 (vb) or three 3x3 (vc, vd); the 3x3/2 max-pool follows them."""
    naming = naming_for(spec)
    size = spec.input_size
    if spec.variant == "vb":
        return [_unit(naming.stem(0), 3, 64, 7, 2, size, relu=True)]
    units, cin = [], 3
    for index, (cout, stride) in enumerate(DEEP_STEM):
        units.append(_unit(naming.stem(index), cin, cout, 3, stride, size, relu=True))
        cin, size = cout, units[-1].out_size
    return units


def block_plans(spec: ModelSpec) -> list[BlockPlan]:
    """Every residual block in order; the first block of each stage (stage 1 too) has a projection shortcut."""
    naming = naming_for(spec)
    stem = stem_plan(spec)
    channels, size = stem[-1].out_channels, _conv_out(stem[-1].out_size, 3, 2)  # after the max-pool
    blocks, flat_index = [], 0
    for stage, depth in enumerate(spec.blocks):
        for index in range(depth):
            stride = 2 if index == 0 and stage > 0 else 1
            name = naming.block(stage, index, flat_index)
            blocks.append(_block(spec, name, channels, STAGE_FILTERS[stage], stride, size, first=index == 0))
            channels, size, flat_index = blocks[-1].out_channels, blocks[-1].out_size, flat_index + 1
    return blocks


def _block(spec: ModelSpec, name: str, cin: int, filters: int, stride: int, size: int, *, first: bool) -> BlockPlan:
    if spec.bottleneck:
        conv0 = _unit(f"{name}.conv0", cin, filters, 1, 1, size, relu=True)
        conv1 = _unit(f"{name}.conv1", filters, filters, 3, stride, size, relu=True)
        cout = filters * BOTTLENECK_EXPANSION
        main = (conv0, conv1, _unit(f"{name}.conv2", filters, cout, 1, 1, conv1.out_size, relu=False))
    else:
        conv0 = _unit(f"{name}.conv0", cin, filters, 3, stride, size, relu=True)
        cout = filters
        main = (conv0, _unit(f"{name}.conv1", filters, filters, 3, 1, conv0.out_size, relu=False))
    shortcut = None
    if first:
        if spec.variant == "vd" and stride > 1:  # avg-pool then 1x1/1 conv ("if_first" blocks keep a plain conv)
            shortcut = _unit(f"{name}.short", cin, cout, 1, 1, size, relu=False, pool_stride=stride)
        else:
            shortcut = _unit(f"{name}.short", cin, cout, 1, stride, size, relu=False)
    return BlockPlan(name, main, shortcut)


def conv_plan(spec: ModelSpec) -> list[ConvPlan]:
    """Every conv unit of the network in forward order (stem, then each block's main path and shortcut)."""
    units = stem_plan(spec)
    for block in block_plans(spec):
        units.extend(block.main)
        if block.shortcut:
            units.append(block.shortcut)
    return units


def feature_channels(spec: ModelSpec) -> int:
    """Width of the pooled features the classifier reads: 512 (basic blocks) or 2048 (bottlenecks)."""
    return STAGE_FILTERS[-1] * (BOTTLENECK_EXPANSION if spec.bottleneck else 1)


def parameter_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """The state dict ``build_resnet(spec)`` has (and a PaddleClas ``.pdparams`` for it holds): name -> shape.

    BatchNorm running statistics (``_mean``, ``_variance``) are included; the Linear weight is ``[in, out]``.
    """
    naming = naming_for(spec)
    shapes: dict[str, tuple[int, ...]] = {}
    for unit in conv_plan(spec):
        shapes[f"{unit.name}.{naming.conv}.weight"] = (unit.out_channels, unit.in_channels, unit.kernel, unit.kernel)
        for field in ("weight", "bias", *BN_STATS):
            shapes[f"{unit.name}.{naming.bn}.{field}"] = (unit.out_channels,)
    shapes[f"{naming.fc}.weight"] = (feature_channels(spec), spec.num_classes)
    shapes[f"{naming.fc}.bias"] = (spec.num_classes,)
    return shapes


def count_params_and_flops(spec: ModelSpec) -> tuple[int, int]:
    """Trainable parameters and FLOPs of one image at ``spec.input_size``, computed from the architecture.

    FLOPs follow the seed table's convention, 2 x multiply-accumulates of the convolutions and the classifier
    (BatchNorm, ReLU, pooling and additions are not counted): ResNet50 -> 8.2e9, ResNet18 -> 3.66e9.
    """
    params, macs = 0, 0
    for unit in conv_plan(spec):
        weights = unit.out_channels * unit.in_channels * unit.kernel * unit.kernel
        params += weights + 2 * unit.out_channels  # conv (no bias) + BN scale and shift
        macs += weights * unit.out_size * unit.out_size
    fc_weights = feature_channels(spec) * spec.num_classes
    params += fc_weights + spec.num_classes
    macs += fc_weights
    return params, 2 * macs


def build_resnet(spec: ModelSpec) -> paddle.nn.Layer:
    """The network of ``spec`` (``class_num = spec.num_classes``), freshly initialised, in train mode.

    Its state-dict names and shapes are PaddleClas's (see :func:`parameter_shapes`), so a PaddleClas
    ``.pdparams`` for the same model loads with ``set_state_dict``. ``forward`` returns logits (no softmax);
    ``forward_features`` the pooled features and ``classifier`` the final Linear.
    """
    return _layer_classes().ResNet(spec)


@functools.cache
def _layer_classes() -> SimpleNamespace:
    """Define the ``paddle.nn.Layer`` classes on first use, so importing this module does not import paddle."""
    import paddle
    import paddle.nn.functional as F
    from paddle import nn

    class ConvBN(nn.Layer):
        """[2x2 avg-pool] -> conv (no bias) -> BatchNorm -> [ReLU], with the upstream attribute names."""

        def __init__(self, unit: ConvPlan, naming: Naming) -> None:
            super().__init__()
            self.relu = unit.relu
            self.pool = None
            if unit.pool_stride:  # PaddleClas's vd shortcut pool: AvgPool2D(2, stride, "SAME", ceil_mode=True)
                self.pool = nn.AvgPool2D(2, stride=unit.pool_stride, padding="SAME", ceil_mode=True)
            conv = nn.Conv2D(unit.in_channels, unit.out_channels, unit.kernel, stride=unit.stride,
                             padding=(unit.kernel - 1) // 2, bias_attr=False)
            self._conv_attr, self._bn_attr = naming.conv, naming.bn
            self.add_sublayer(naming.conv, conv)
            self.add_sublayer(naming.bn, nn.BatchNorm2D(unit.out_channels))

        def forward(self, x: paddle.Tensor) -> paddle.Tensor:
            if self.pool is not None:
                x = self.pool(x)
            x = getattr(self, self._bn_attr)(getattr(self, self._conv_attr)(x))
            return F.relu(x) if self.relu else x

    class ResidualBlock(nn.Layer):
        """Basic (2 convs) or bottleneck (3 convs) block: ReLU(main(x) + shortcut(x))."""

        def __init__(self, plan: BlockPlan, naming: Naming) -> None:
            super().__init__()
            self.main = [self.add_sublayer(unit.attr, ConvBN(unit, naming)) for unit in plan.main]
            self.short = ConvBN(plan.shortcut, naming) if plan.shortcut else None

        def forward(self, x: paddle.Tensor) -> paddle.Tensor:
            out = x
            for layer in self.main:
                out = layer(out)
            return F.relu(paddle.add(out, x if self.short is None else self.short(x)))

    class ResNet(nn.Layer):
        """Stem -> 3x3/2 max-pool -> residual blocks -> global average pool -> Linear (logits)."""

        def __init__(self, spec: ModelSpec) -> None:
            super().__init__()
            naming = naming_for(spec)
            stem = [(unit.attr, ConvBN(unit, naming)) for unit in stem_plan(spec)]
            blocks = [(plan.name.rsplit(".", 1)[-1], ResidualBlock(plan, naming)) for plan in block_plans(spec)]
            if naming.containers:
                self.stem = nn.Sequential(*stem)
                self.blocks = nn.Sequential(*blocks)
            else:
                for attr, layer in stem + blocks:
                    self.add_sublayer(attr, layer)
            self.stem_layers = [layer for _, layer in stem]
            self.block_layers = [layer for _, layer in blocks]
            self.max_pool = nn.MaxPool2D(kernel_size=3, stride=2, padding=1)
            self.avg_pool = nn.AdaptiveAvgPool2D(1)
            self._fc_attr = naming.fc
            bound = 1.0 / math.sqrt(feature_channels(spec))
            self.add_sublayer(naming.fc, nn.Linear(feature_channels(spec), spec.num_classes,
                                                   weight_attr=paddle.ParamAttr(
                                                       initializer=nn.initializer.Uniform(-bound, bound))))

        @property
        def classifier(self) -> nn.Linear:
            return getattr(self, self._fc_attr)

        def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
            """The pooled (N, C) features the classifier reads."""
            for layer in self.stem_layers:
                x = layer(x)
            x = self.max_pool(x)
            for layer in self.block_layers:
                x = layer(x)
            return paddle.flatten(self.avg_pool(x), start_axis=1)

        def forward(self, x: paddle.Tensor) -> paddle.Tensor:
            return self.classifier(self.forward_features(x))

    return SimpleNamespace(ConvBN=ConvBN, ResidualBlock=ResidualBlock, ResNet=ResNet)


def describe(spec: ModelSpec) -> dict[str, Any]:
    """Architecture summary of ``spec``: ``conv2d`` and ``pool2d`` operator counts as an exported program has
    them (max-pool, global average pool and the ``vd`` shortcut pools), parameters and FLOPs."""
    units = conv_plan(spec)
    avg_pools = sum(1 for unit in units if unit.pool_stride)
    params, flops = count_params_and_flops(spec)
    return {"conv2d": len(units), "pool2d": 2 + avg_pools, "params": params, "flops": flops}
