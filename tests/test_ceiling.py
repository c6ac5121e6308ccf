"""The ceiling: measured dense-compute rates per backend and precision, model GMACs, and the fraction of one."""

from __future__ import annotations

import pytest

from ppdeploy.bench.ceiling import Ceiling, CeilingReport, ceiling_fraction, compute_precision, measure_ceilings
from ppdeploy.doctor import cpu_info
from ppdeploy.errors import DeployError
from ppdeploy.models.macs import gmacs

# A short measurement: one small ResNet-like shape, short windows, a 1 s cap per (backend, precision).
SMALL = {"shapes": ((2, 128, 14),), "layers": 2, "window_s": 0.1, "time_cap_s": 1.0}


@pytest.fixture(scope="module")
def measured() -> CeilingReport:
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    return measure_ceilings(("openvino", "onnx"), ("fp32", "int8"), say=lambda line: None, **SMALL)


def test_each_backend_and_precision_gives_a_positive_rate_from_what_really_ran(measured):
    assert not measured.skipped, measured.skipped
    assert {(c.backend, c.precision) for c in measured.ceilings} == {
        ("openvino", "fp32"), ("openvino", "int8"), ("onnx", "fp32"), ("onnx", "int8")}
    for ceiling in measured.ceilings:
        assert ceiling.gmacs_per_s > 0 and ceiling.seconds > 0
        assert ceiling.shape == "2x128x14x14, 3x3 128->128, 2 layers"
        assert ceiling.seconds <= SMALL["time_cap_s"] + 3 * SMALL["window_s"]
    # What the libraries say they ran: OpenVINO's executed graph, ORT's optimized graph.
    assert "f32" in measured.get("openvino", "fp32").executed_as
    assert "I8 u8" in measured.get("openvino", "int8").executed_as
    assert "QLinearConv" in measured.get("onnx", "int8").executed_as
    assert "QLinearConv" not in measured.get("onnx", "fp32").executed_as
    assert measured.peak("int8").gmacs_per_s == max(measured.get(b, "int8").gmacs_per_s for b in ("openvino", "onnx"))


def test_int8_outruns_fp32_on_a_vnni_cpu(measured):
    isa = cpu_info()[1]
    if not (isa.get("avx512_vnni") or isa.get("avx_vnni") or isa.get("amx_int8")):
        pytest.skip(f"this CPU has no VNNI/AMX int8 instructions (ISA: {isa})")
    for backend in ("openvino", "onnx"):
        int8, fp32 = measured.get(backend, "int8").gmacs_per_s, measured.get(backend, "fp32").gmacs_per_s
        # VNNI does 4x the multiply-accumulates of an fp32 FMA per instruction; 1.5x leaves room for a busy machine.
        assert int8 > 1.5 * fp32, f"{backend}: int8 {int8:.1f} vs fp32 {fp32:.1f} GMAC/s"


def test_a_convolution_not_run_in_int8_is_not_reported_as_int8():
    ov = pytest.importorskip("openvino")
    from ppdeploy.bench.ceiling import openvino_conv_precisions, openvino_model

    core = ov.Core()
    compiled = core.compile_model(openvino_model(1, 32, 8, 1, int8=False), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert [runtime for _, runtime in openvino_conv_precisions(compiled)] == ["f32"]
    compiled = core.compile_model(openvino_model(1, 32, 8, 1, int8=True), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert [runtime for _, runtime in openvino_conv_precisions(compiled)] == ["u8"]


def test_unknown_backend_or_precision_is_one_line_naming_the_choices():
    with pytest.raises(DeployError, match="tensorrt.*unknown backend or precision.*openvino, onnx"):
        measure_ceilings(("tensorrt",), ("fp32",))


def _count_macs_by_running(name: str, size: int) -> float:
    """GMACs of one image, from the conv and fc layers of the built Paddle network as a forward pass meets them."""
    paddle = pytest.importorskip("paddle")
    from ppdeploy.models.resnet import build_resnet
    from ppdeploy.models.zoo import get_model

    net = build_resnet(get_model(name))
    net.eval()
    total = []

    def conv_hook(layer, inputs, output):
        out_channels, in_per_group, kh, kw = layer.weight.shape
        total.append(output.numel().item() / output.shape[0] * in_per_group * kh * kw)

    def fc_hook(layer, inputs, output):
        total.append(layer.weight.shape[0] * layer.weight.shape[1])

    for layer in net.sublayers():
        if isinstance(layer, paddle.nn.Conv2D):
            layer.register_forward_post_hook(conv_hook)
        elif isinstance(layer, paddle.nn.Linear):
            layer.register_forward_post_hook(fc_hook)
    with paddle.no_grad():
        net(paddle.zeros([1, 3, size, size]))
    return sum(total) / 1e9


@pytest.mark.parametrize(("name", "size", "published"), [
    ("ResNet18", 224, 1.82),  # torchvision's and the ResNet paper's figures (1.8 G multiply-adds)
    ("ResNet50", 224, 4.09),  # 3.8 G in the paper, which counts the 1x1 projections differently
    ("ResNet50", 320, None),
])
def test_gmacs_match_the_layers_of_the_built_network(name, size, published):
    counted = _count_macs_by_running(name, size)
    assert gmacs(name, size) == pytest.approx(counted, rel=1e-6)
    if published:
        assert gmacs(name, size) == pytest.approx(published, abs=0.02)


def test_seed_flops_are_two_per_multiply_accumulate():
    from ppdeploy.models.zoo import get_model

    assert get_model("ResNet50").flops_g / gmacs("ResNet50") == pytest.approx(2.0, rel=0.01)
    assert get_model("ResNet18").flops_g / gmacs("ResNet18") == pytest.approx(2.0, rel=0.01)


def test_fraction_arithmetic_and_the_ceiling_a_row_is_judged_by():
    assert ceiling_fraction(4.0, 50.0, 250.0) == pytest.approx(0.8)  # 200 GMAC/s of a 250 GMAC/s ceiling
    with pytest.raises(DeployError, match="pass positive figures"):
        ceiling_fraction(4.0, 50.0, 0.0)
    report = CeilingReport("cpu", {}, 2, [Ceiling("openvino", "int8", 200.0, "s", 1.0, True, "x"),
                                          Ceiling("onnx", "int8", 100.0, "s", 1.0, True, "x"),
                                          Ceiling("openvino", "fp32", 50.0, "s", 1.0, True, "x")])
    assert compute_precision({"precision": "int8", "inference_precision": "f32"}) == "int8"
    assert compute_precision({"precision": "fp32", "inference_precision": "bf16"}) == "bf16"
    assert compute_precision({"precision": "fp16"}) == "fp16"
    int8_row = report.row_fields(4.0, 40.0, {"precision": "int8"})
    assert int8_row == {"ceiling_precision": "int8", "ceiling_gmacs_per_s": 200.0, "ceiling_fraction": 0.8}
    # fp16 without a ceiling of its own (computed in f32 on such a CPU) is judged by fp32's
    assert report.row_fields(4.0, 10.0, {"precision": "fp16"})["ceiling_fraction"] == pytest.approx(0.8)
    assert report.row_fields(4.0, float("nan"), {"precision": "int8"})["ceiling_fraction"] is None  # an error row
