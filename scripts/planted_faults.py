"""The smallest planted fault each parity profile catches, for docs/parity.md.

    python scripts/planted_faults.py ResNet50 [--count 120]

Faults, each planted into a copy of a real artifact and judged on the held-out judge photos:
- the middle convolution's fp32 weights scaled by (1 + eps), judged by every profile (the smallest eps that fails);
- one int8 convolution's weight scale (its DequantizeLinear) multiplied by k in the onnx-int8 artifact, judged by
  the int8 profile (the smallest k that fails; the honest artifact's own row printed first).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

EPSILONS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
SCALES = (1.05, 1.1, 1.25, 1.5, 2.0, 4.0)


def scaled_copy(artifact: Path, work: Path, pick, factor: float) -> Path:
    """A copy of ``artifact`` with the initializer ``pick(graph)`` returns multiplied by ``factor``."""
    import onnx
    from onnx import numpy_helper

    from ppdeploy.artifacts import HASHES, artifact_model_file, file_hashes, load_manifest, write_manifest

    work.mkdir(parents=True, exist_ok=True)
    out = work / f"{artifact.name}-{factor:g}"
    shutil.copytree(artifact, out)
    proto = onnx.load(str(artifact_model_file(out)))
    tensor = pick(proto.graph)
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float32(factor), tensor.name))
    onnx.save(proto, str(artifact_model_file(out)))
    manifest = load_manifest(out)  # a converter that got one weight wrong records what it wrote
    manifest.pop("manifest_version", None)
    write_manifest(out, {**manifest, HASHES: file_hashes(out)})
    return out


def middle_conv_weight(graph):
    inits = {t.name: t for t in graph.initializer}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    return inits[convs[len(convs) // 2].input[1]]


def weight_scales(graph):
    """The convolution weights' DequantizeLinear scales, in graph order (the first is the stem's)."""
    inits = {t.name: t for t in graph.initializer}
    dequant = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and len(inits[n.input[0]].dims) == 4]
    return [inits[n.input[1]] for n in dequant]


def stem_weight_scale(graph):
    return weight_scales(graph)[0]


def middle_weight_scale(graph):
    scales = weight_scales(graph)
    return scales[len(scales) // 2]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--count", type=int, default=120)
    args = parser.parse_args()

    from ppdeploy.converters.pipeline import convert_model
    from ppdeploy.models.resolve import resolve_model
    from ppdeploy.parity import PROFILES, ParityChecker
    from ppdeploy.registry import runtime_class
    from ppdeploy.samples import builtin_set

    model = resolve_model(args.model, synthetic=True)
    checker = ParityChecker(model, builtin_set("judge", args.count))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = convert_model(model, "onnx")
        caught: dict[str, float | None] = {name: None for name in PROFILES}
        for eps in EPSILONS:
            with runtime_class("onnx")(scaled_copy(fp32, work, middle_conv_weight, 1 + eps)) as runtime:
                rows = {name: checker.check(f"conv x(1+{eps:g})", runtime, profile) for name, profile in PROFILES.items()}
            m = next(iter(rows.values())).metrics
            print(f"{args.model} middle conv x(1+{eps:g}): max_abs={m.max_abs:.2e} max_tv={m.max_tv:.2e} "
                  f"mean_tv={m.mean_tv:.2e} shift={m.max_margin_shift:.3f} -> "
                  + ", ".join(f"{name} {row.status}" for name, row in rows.items()), flush=True)
            for name, row in rows.items():
                if row.status == "fail" and caught[name] is None:
                    caught[name] = eps
        print(f"{args.model}: smallest middle-conv change failing each profile: {caught}", flush=True)
        int8 = convert_model(model, "onnx-int8")
        with runtime_class("onnx")(int8) as runtime:
            honest = checker.check("onnx-int8", runtime, PROFILES["int8"])
        m = honest.metrics
        print(f"{args.model} onnx-int8 honest: {honest.status} mean_tv={m.mean_tv:.3f} max_tv={m.max_tv:.3f} "
              f"decisive_top1={m.decisive_top1:.3f} of {m.decisive}", flush=True)
        for where, pick in (("stem", stem_weight_scale), ("middle", middle_weight_scale)):
            smallest = None
            for k in SCALES:
                with runtime_class("onnx")(scaled_copy(int8, work / where, pick, k)) as runtime:
                    row = checker.check(f"int8 {where} scale x{k:g}", runtime, PROFILES["int8"])
                m = row.metrics
                print(f"{args.model} int8 {where} conv weight scale x{k:g}: {row.status} mean_tv={m.mean_tv:.3f} "
                      f"max_tv={m.max_tv:.3f} decisive_top1={m.decisive_top1:.3f} of {m.decisive} {row.reasons}",
                      flush=True)
                if row.status == "fail" and smallest is None:
                    smallest = k
            print(f"{args.model}: smallest {where}-conv int8 weight-scale error failing int8: x{smallest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
