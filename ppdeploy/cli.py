"""The ``deploy`` command line: a thin layer over the library. Heavy imports happen inside each command."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from ppdeploy import progress, registry
from ppdeploy.errors import DeployError

# Paddle nags about ccache (a build cache for its C++ extensions, unused here) on every import.
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="PaddleClas ResNet models to ONNX, OpenVINO and TensorRT, with parity checks against Paddle.")
_STATE = {"verbose": False}
# Root flags a user may put anywhere, also after the sub-command (``deploy run ... -v``), as in gh or Polygraphy.
ROOT_FLAGS = ("--verbose", "-v", "--quiet", "-q")

# Exit codes a script can branch on (README): 2 is a usage error (click), 130 an interrupt (Ctrl-C).
EXIT_OK = 0
EXIT_ERROR = 1  # could not run: bad input, missing package or device, a failed conversion
EXIT_SOME_FAILED = 3  # ran, but some inputs or rows could not be processed (each has its error record/row)
EXIT_VERDICT = 4  # ran, and a parity verdict failed
EXIT_INTERRUPTED = 130


def _names(kind: str) -> str:
    """Help text listing what the registry offers: ``targets`` or ``choices`` (what --backend takes)."""
    if kind == "targets":
        return ", ".join(registry.targets())
    return ", ".join(["auto", *registry.choice_names()]) + f" (aliases: {', '.join(registry.aliases())})"

ModelArg = Annotated[str, typer.Argument(help="Zoo name (see 'deploy models') or a Paddle inference model folder.")]
SyntheticOpt = Annotated[bool, typer.Option("--synthetic", help="Seeded synthetic weights instead of a download "
                                            "(predictions are meaningless; for trying the pipeline offline).")]
FormatOpt = Annotated[str, typer.Option("--format", help="Paddle format of a synthetic export: json (PIR) or pdmodel.")]
EngineOpt = Annotated[str, typer.Option("--engine", help="local (this process) or ray (needs the extra 'ray').")]
AddressOpt = Annotated[Optional[str], typer.Option("--address", help="--engine ray: the cluster to join (auto, "
                                                   "HEAD:6379, ray://HEAD:10001); default: start a local Ray.")]
ENGINES = ("local", "ray")
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per inference call.")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, help="Inference threads (default: the "
                                                   "backend's choice, usually all cores).")]
ModeOpt = Annotated[str, typer.Option("--mode", help="throughput: several batches in flight, each on a share of "
                                      "the cores (more images/s); latency: one batch at a time on every core.")]
DEFAULT_MODEL = "ResNet50"


def _err(line: str) -> None:
    from rich.console import Console

    progress.stop()
    Console(stderr=True, highlight=False, soft_wrap=True).print(line, markup=False)


_progress = progress.say  # a progress line on stderr (stdout stays clean for --json); --quiet drops it


def _version(value: bool) -> None:
    if value:
        from ppdeploy import __version__

        typer.echo(f"ppdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks on errors (accepted "
                                              "anywhere on the line).")] = False,
          quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines on stderr (errors still "
                                            "show; accepted anywhere on the line).")] = False,
          version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                              help="Print the version and exit.")] = False) -> None:
    _STATE["verbose"] = verbose
    progress.set_quiet(quiet)


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """List the model zoo with the seed's published figures."""
    from ppdeploy.models import MODELS

    if as_json:
        typer.echo(json.dumps([spec.to_dict() for spec in MODELS.values()], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="PaddleClas ResNet zoo (figures from the seed)")
    for column in ("Model", "Arch", "Input", "Top1", "Top5", "FLOPs(G)", "Params(M)", "T4 FP16 bs1 (ms)", "Archive"):
        table.add_column(column)
    for spec in MODELS.values():
        table.add_row(spec.name, f"{spec.depth}-{spec.variant}", str(spec.input_size), f"{spec.top1:.3f}",
                      f"{spec.top5:.3f}", f"{spec.flops_g:.2f}", f"{spec.params_m:.2f}", f"{spec.t4_fp16_ms[0]:.2f}",
                      spec.archive_name)
    Console(width=None if sys.stdout.isatty() else 160).print(table)


@app.command()
def export(model: ModelArg,
           output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write the inference model to.")],
           weights: Annotated[Optional[Path], typer.Option("--weights", help="PaddleClas .pdparams (pickle: only "
                                                            "load files you trust).")] = None,
           synthetic: SyntheticOpt = False,
           fmt: FormatOpt = "json",
           seed: Annotated[int, typer.Option(help="Seed for --synthetic.")] = 0) -> None:
    """Export a zoo model as a Paddle inference model (PIR json or legacy pdmodel) with its preprocessing yaml."""
    from ppdeploy.models import get_model
    from ppdeploy.models.export import export_model
    from ppdeploy.models.resolve import default_shape_set, warn_synthetic

    if synthetic:
        warn_synthetic()
    out = export_model(get_model(model), output, weights=weights, synthetic=synthetic, fmt=fmt, seed=seed,
                       shape_images=default_shape_set() if synthetic else None)
    typer.echo(f"Exported {model} ({fmt}) to {out}")


@app.command()
def convert(model: ModelArg,
            to: Annotated[str, typer.Option("--to", help=f"Target: {_names('targets')}.")],
            output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Artifact folder "
                                                           "(default: the cache).")] = None,
            synthetic: SyntheticOpt = False,
            fmt: FormatOpt = "json",
            calib_images: Annotated[Optional[Path], typer.Option("--calib-images", help="Calibration images for "
                                                                 "int8 (default: built-in sample photos).")] = None,
            val_images: Annotated[Optional[Path], typer.Option("--val-images", help="int8 accuracy control: "
                                                               "validation images, none of them (or copies of "
                                                               "them) among the calibration images (default: "
                                                               "built-in validation photos).")] = None,
            val_count: Annotated[int, typer.Option("--val-count", min=1, help="int8 accuracy control: how many "
                                                   "validation images.")] = 64,
            max_drop: Annotated[float, typer.Option("--max-drop", min=0.0, max=0.999, help="int8 accuracy "
                                                    "control: largest allowed drop of top-1 agreement with the "
                                                    "fp32 model on the validation images (absolute; 0.01 = one "
                                                    "point). The layers that cost most go back to fp32 until it "
                                                    "holds; the manifest's quantization.accuracy_control records "
                                                    "the drop before and after and those layers. On 64 images "
                                                    "0.01 allows no flipped image.")] = 0.01,
            no_accuracy_control: Annotated[bool, typer.Option("--no-accuracy-control", help="int8: plain "
                                                              "quantization, ignore --max-drop (the drop is still "
                                                              "measured and recorded).")] = False,
            max_batch: Annotated[int, typer.Option("--max-batch", help="Largest batch engines accept.")] = 8,
            opset: Annotated[int, typer.Option("--opset", help="ONNX opset (13-21).")] = 17,
            force: Annotated[bool, typer.Option("--force", help="Rebuild even if a valid artifact exists.")] = False,
            ) -> None:
    """Convert a model to a deployable artifact (cached and reused while valid); int8 under accuracy control.

    Examples:

      deploy convert ResNet50 --synthetic --to openvino-int8

      deploy convert ./my_model --to onnx-int8 --calib-images calib/ --val-images val/ -o out/
    """
    from ppdeploy.converters.base import ConvertOptions
    from ppdeploy.converters.pipeline import convert_model, default_options
    from ppdeploy.models.resolve import resolve_model
    from ppdeploy.registry import BackendUnavailableError, get_target

    spec = get_target(to)  # an unknown target fails before any download or export
    ok, reason = spec.availability()  # and so does a missing package or GPU
    if not ok:
        raise BackendUnavailableError(f"target '{to}' | {reason}")
    images = {"calib_images": calib_images, "val_images": val_images, "val_count": val_count,
              "max_drop": None if no_accuracy_control else max_drop}
    if spec.calibrated:  # overlapping calibration and validation images fail before any slow work
        from ppdeploy.converters.accuracy import image_sets

        image_sets(ConvertOptions(**images))
    resolved = resolve_model(model, synthetic=synthetic, fmt=fmt)
    options = default_options(resolved, to, **images, max_batch=max_batch, opset=opset)
    out = convert_model(resolved, to, options=options, out_dir=output, force=force, log=_progress)
    _warn_missed_drop(out, to)
    typer.echo(str(out))


@app.command("export-repo")
def export_repo(model: ModelArg,
                repo_format: Annotated[str, typer.Option("--format", help="triton or ovms (OpenVINO Model "
                                                         "Server).")],
                output: Annotated[Path, typer.Option("-o", "--output", help="Repository folder to write (new or "
                                                     "empty).")],
                targets: Annotated[Optional[str], typer.Option("--targets", help="Comma list of targets, one model "
                                                               "each (default: onnx for triton, openvino for "
                                                               "ovms).")] = None,
                max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Largest batch the server may "
                                                       "form.")] = 8,
                synthetic: SyntheticOpt = False) -> None:
    """Write a model repository for Triton Inference Server or OpenVINO Model Server (see docs/serving.md).

    Example:

      deploy export-repo ResNet50 --format triton --targets onnx,openvino -o model_repository/
    """
    from ppdeploy.models.resolve import resolve_model
    from ppdeploy.serving.repo import check_request
    from ppdeploy.serving.repo import export_repo as write_repo

    names = [name.strip() for name in (targets or "").split(",") if name.strip()]
    names = check_request(repo_format, names, max_batch, output)  # before any download or conversion
    resolved = resolve_model(model, synthetic=synthetic)
    typer.echo(str(write_repo(resolved, repo_format, names, max_batch=max_batch, output=output, log=_progress)))


def _warn_missed_drop(artifact: Path, target: str) -> None:
    from ppdeploy.artifacts import load_manifest

    control = load_manifest(artifact).get("quantization", {}).get("accuracy_control") or {}
    if control.get("reached") is False:
        _err(f"warning: {target}: accuracy control could not meet --max-drop {control['max_drop']}: top-1 agreement "
             f"with fp32 {control['int8_metric']:.3f} (drop {control['drop']:.3f}) on the validation images; "
             f"{control.get('note') or 'see quantization.accuracy_control in the manifest'}")


@app.command()
def run(images: Annotated[str, typer.Option("--images", help="An image file, a folder (recursive) or a glob.")],
        model: Annotated[Optional[str], typer.Option("--model", help="Zoo name or Paddle model folder (default: "
                                                     f"{DEFAULT_MODEL}, said on stderr).")] = None,
        backend: Annotated[str, typer.Option("--backend", help=f"One of: {_names('choices')}.")] = "auto",
        batch_size: BatchSizeOpt = 8,
        topk: Annotated[int, typer.Option("--topk", min=1, help="Classes per image, best first (at most the "
                                          "model's class count).")] = 5,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
        device: Annotated[str, typer.Option("--device", help="cpu or gpu.")] = "cpu",
        threads: ThreadsOpt = None,
        mode: ModeOpt = "throughput",
        fast_decode: Annotated[bool, typer.Option("--fast-decode", help="Decode large JPEGs at 1/2-1/8 size before "
                                                  "the resize (faster on phone photos; not PaddleClas's exact "
                                                  "pixels: its measured effect is in docs/benchmarks.md).")] = False,
        synthetic: SyntheticOpt = False,
        fmt: FormatOpt = "json",
        output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the records to a *.jsonl "
                                                       "or *.parquet file instead of printing them.")] = None,
        engine: EngineOpt = "local",
        actors: Annotated[int, typer.Option("--actors", min=1, help="--engine ray: actors, each with its own "
                                            "model instance.")] = 1,
        actor_cpus: Annotated[float, typer.Option("--actor-cpus", min=0.01, help="--engine ray: CPUs reserved "
                                                  "per actor.")] = 1.0,
        address: AddressOpt = None) -> None:
    """Classify images. Exit 0: all ok; 3: some inputs failed (each has an error record); 1: could not run.

    Examples:

      deploy run --images photos/ --backend openvino-int8 --synthetic

      deploy run --model ./my_model --images "shots/*.jpg" --json > results.jsonl
    """
    from ppdeploy.images import list_images, pixel_limit
    from ppdeploy.results import output_format

    _check_choice("--engine", engine, ENGINES)
    _check_choice("--mode", mode, registry.MODES)
    if output is not None:
        output_format(output)  # a bad suffix fails before the model loads
    pixel_limit()  # and so do a bad $PPDEPLOY_MAX_PIXELS and a missing or empty images path
    if not Path(images).is_file():  # a named file is classified or becomes an error record, whatever its name
        list_images(images)
    if model is None:
        model = DEFAULT_MODEL
        _progress(f"no --model given: using {DEFAULT_MODEL}")
    if engine == "ray":
        from ppdeploy.scaleout.cluster import ModelConfig, require_ray

        require_ray("data")
        from ppdeploy.scaleout.ray_data import classify_on_ray

        config = ModelConfig(model, backend, synthetic, fmt, device, threads, batch_size, topk, mode)
        failed = _emit(classify_on_ray(images, config, actors=actors, actor_cpus=actor_cpus, address=address,
                                       log=_progress), output, as_json)
    else:
        from ppdeploy.classifier import Classifier

        with Classifier(model, backend, synthetic=synthetic, fmt=fmt, device=device, threads=threads,
                        batch_size=batch_size, topk=topk, mode=mode, fast_decode=fast_decode, log=_progress) as clf:
            failed = _emit(clf.predict(images), output, as_json)
    if failed:
        _err(f"{failed} input(s) could not be classified; see their error records")
        raise typer.Exit(EXIT_SOME_FAILED)


@app.command()
def parity(model: ModelArg = "ResNet50",
           backends: Annotated[Optional[str], typer.Option("--backends", help="'all' or a comma list of: "
                                                 f"{_names('choices')} (default: all, or none besides "
                                                 "--artifact)")] = None,
           synthetic: SyntheticOpt = False,
           fmt: FormatOpt = "json",
           artifact: Annotated[Optional[Path], typer.Option("--artifact", help="Judge a model file made by any tool: "
                                                            ".onnx, OpenVINO .xml, TensorRT .engine (no manifest "
                                                            "needed); its profile follows what it computes.")] = None,
           profile: Annotated[Optional[str], typer.Option("--profile", help="Judge --artifact by this profile: "
                                                          "fp32, fp16, bf16, int8.")] = None,
           images: Annotated[Optional[str], typer.Option("--images", help="Your judge images (folder/glob); "
                                                         "default: the built-in judge photos, which never shape "
                                                         "synthetic weights nor calibrate int8.")] = None,
           count: Annotated[Optional[int], typer.Option("--count", min=1, help="Built-in judge images (default "
                                                        "120), or at most this many of --images.")] = None,
           strict: Annotated[bool, typer.Option("--strict", help="Fail a verdict whose judge images overlap the "
                                                "images that shaped or calibrated what it judges.")] = False,
           server: Annotated[Optional[str], typer.Option("--server", help="Judge a running server (deploy serve, "
                                                         "or any KServe v2 server) through the Open Inference "
                                                         "Protocol, e.g. http://127.0.0.1:8000.")] = None,
           server_backend: Annotated[Optional[str], typer.Option("--server-backend", help="--server: the backend "
                                                                 "it serves, if it does not say (not deploy "
                                                                 "serve).")] = None,
           fast_decode: Annotated[bool, typer.Option("--fast-decode", help="Also judge --fast-decode: the reference "
                                                     "model on --images decoded at reduced size (int8 profile).")
                                  ] = False,
           batch_size: BatchSizeOpt = 8,
           threads: ThreadsOpt = None,
           json_file: Annotated[Optional[Path], typer.Option("--json", help="Write the report as JSON.")] = None,
           junit_file: Annotated[Optional[Path], typer.Option("--junit", help="Write JUnit XML.")] = None,
           atol: Annotated[Optional[float], typer.Option("--atol", help="Override every profile's max abs diff.")
                           ] = None,
           max_tv: Annotated[Optional[float], typer.Option("--max-tv", help="Override every profile's largest total "
                                                           "variation distance per image.")] = None,
           min_top1: Annotated[Optional[float], typer.Option("--min-top1", help="Override every profile's top-1 "
                                                             "agreement on decisive images (0-1).")] = None) -> None:
    """Check backends against native Paddle Inference on held-out real images.

    Examples:

      deploy parity ResNet50 --synthetic --backends all --json report.json

      deploy parity ResNet50 --artifact model_from_elsewhere.onnx

      deploy parity ResNet50 --synthetic --server http://127.0.0.1:8000

    Exit 0: every verdict passed; 4: a verdict failed; 1: a backend could not be checked (or a requested one was
    skipped).
    """
    import dataclasses

    from ppdeploy import parity as parity_mod
    from ppdeploy.fsutil import atomic_write_text

    changes = {k: v for k, v in (("max_abs", atol), ("max_tv", max_tv), ("min_top1", min_top1)) if v is not None}
    overrides = {name: dataclasses.replace(p, **changes) for name, p in parity_mod.PROFILES.items()} if changes else None
    report = parity_mod.parity(model, backends if backends is not None else ("" if artifact or server else "all"),
                               synthetic=synthetic, fmt=fmt, images=images, count=count, batch_size=batch_size,
                               threads=threads, overrides=overrides, strict=strict, artifact=artifact,
                               profile=profile, fast_decode=fast_decode, server=server,
                               server_backend=server_backend, log=_progress)
    typer.echo(report.render())
    if json_file:
        atomic_write_text(json_file, report.to_json())
    if junit_file:
        atomic_write_text(junit_file, report.to_junit())
    if any(r.status == "fail" for r in report.results):
        raise typer.Exit(EXIT_VERDICT)
    if not report.passed:
        raise typer.Exit(EXIT_ERROR)


@app.command("eval")
def evaluate(model: ModelArg,
             data: Annotated[Path, typer.Option("--data", help="PaddleClas labelled list: 'relative/path.jpg label' "
                                                "per line (like val_list.txt).")],
             backends: Annotated[str, typer.Option("--backends", help="Comma list; paddle is the reference.")
                                 ] = "paddle,onnx,openvino",
             root: Annotated[Optional[Path], typer.Option("--root", help="Folder the list's paths are relative to "
                                                          "(default: the list's folder).")] = None,
             synthetic: SyntheticOpt = False,
             batch_size: BatchSizeOpt = 8,
             threads: ThreadsOpt = None) -> None:
    """Top-1/Top-5 accuracy of each backend on a labelled list, side by side with Paddle Inference."""
    from ppdeploy.evaluate import evaluate as run_eval

    names = [b.strip() for b in backends.split(",") if b.strip()]
    report = run_eval(model, names, data, root=root, synthetic=synthetic, batch_size=batch_size, threads=threads,
                      log=_progress)
    typer.echo(report.render())
    if any(r.status == "error" for r in report.results):
        raise typer.Exit(EXIT_ERROR)


@app.command()
def bench(model: ModelArg = "ResNet50",
          backends: Annotated[str, typer.Option("--backends", help="'all' or a comma list of: "
                                                f"{_names('choices')} (paddle, the reference, always runs).")
                              ] = "paddle,onnx,openvino",
          batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma list: the table's columns.")
                                 ] = "1,4,8",
          threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="Threads for every backend "
                                                         "(default: all cores).")] = None,
          warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed calls per cell.")] = 5,
          iters: Annotated[int, typer.Option("--iters", min=1, help="Timed calls per backend and batch size.")] = 50,
          rounds: Annotated[int, typer.Option("--rounds", min=1, help="Interleaved rounds the timed calls are "
                                              "split into.")] = 5,
          parity_check: Annotated[bool, typer.Option("--parity/--no-parity", help="Judge every row against its "
                                                     "parity profile on held-out judge photos.")] = True,
          parity_images: Annotated[int, typer.Option("--parity-images", min=1, help="Judge photos for the parity "
                                                     "verdicts (int8 needs >= 100).")] = 120,
          throughput: Annotated[bool, typer.Option("--throughput/--no-throughput", help="Also time every row in "
                                                   "throughput mode (several requests in flight).")] = True,
          e2e: Annotated[bool, typer.Option("--e2e", help="Also time the whole pipeline over --images and a "
                                            "PaddleClas-style serial loop.")] = False,
          images: Annotated[Optional[Path], typer.Option("--images", help="Photo folder for --e2e (the same as "
                                                         "--corpus DIR).")] = None,
          corpus: Annotated[Optional[str], typer.Option("--corpus", help="--e2e photos: imagenet (500x375 JPEGs, "
                                                        "the default), phone (12 MP JPEGs), or a folder.")] = None,
          fast_decode: Annotated[bool, typer.Option("--fast-decode", help="--e2e pipelines decode large JPEGs at "
                                                    "reduced size (the serial-loop anchor stays exact).")] = False,
          passes: Annotated[int, typer.Option("--passes", min=1, help="Timed passes over the folder per pipeline "
                                              "and batch size (--e2e).")] = 3,
          json_file: Annotated[Optional[Path], typer.Option("--json", help="Write the report as JSON.")] = None,
          plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG chart of images/s.")] = None,
          synthetic: SyntheticOpt = False,
          fmt: FormatOpt = "json") -> None:
    """Latency, images/s, memory and load time per backend and batch size, against Paddle Inference fp32.

    Example:

      deploy bench ResNet50 --synthetic --backends all --batch-sizes 1,8 --plot bench.png

    Exit 0: every row ran and passed parity; 4: a row failed its parity verdict; 3: some rows could not run.
    """
    import os

    from ppdeploy.bench import BenchSettings, run_bench, write_chart
    from ppdeploy.bench.corpus import corpus_names
    from ppdeploy.fsutil import atomic_write_text

    try:
        sizes = tuple(int(s) for s in batch_sizes.split(",") if s.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise DeployError(f"--batch-sizes '{batch_sizes}' | not a comma list of positive integers | e.g. 1,4,8")
    settings = BenchSettings(batch_sizes=sizes, threads=threads or os.cpu_count() or 1, warmup=warmup, iters=iters,
                             rounds=min(rounds, iters), parity_images=parity_images if parity_check else 0,
                             e2e_passes=passes if e2e else 0, throughput=throughput, fast_decode=fast_decode)
    if images is not None and corpus is not None:
        raise DeployError("--images and --corpus | both given | give one: --corpus takes a folder too")
    if corpus is not None and corpus not in corpus_names() and not Path(corpus).is_dir():
        raise DeployError(f"--corpus '{corpus}' | neither a corpus nor a folder | choose one of: "
                          f"{', '.join(corpus_names())}, or a folder of photos")
    report = run_bench(model, backends, settings, synthetic=synthetic, fmt=fmt, images=corpus or images,
                       log=_progress)
    typer.echo(report.render())
    if json_file:
        atomic_write_text(json_file, report.to_json())
    if plot:
        write_chart(report, plot)
    if any(b.parity_status == "fail" for b in report.backends):
        _err("some rows fail their parity verdict; see the tables")
        raise typer.Exit(EXIT_VERDICT)
    if any(b.status == "error" for b in report.backends):
        _err("some backends could not be benchmarked; see the tables")
        raise typer.Exit(EXIT_SOME_FAILED)


@app.command()
def optimize(model: ModelArg = "ResNet50",
             targets: Annotated[str, typer.Option("--targets", help="'all' or a comma list of: "
                                                  f"{_names('choices')} (paddle, the reference, always takes "
                                                  "part).")] = "all",
             strategy: Annotated[str, typer.Option("--strategy", help="throughput (most images/s), latency (lowest "
                                                   "p99 at batch 1) or latency-budget=MS (most images/s within "
                                                   "MS).")] = "throughput",
             batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="auto (1,4,8,16,32, stopped when "
                                                      "images/s gains < 5%) or a comma list.")] = "auto",
             images: Annotated[Optional[Path], typer.Option("--images", help="Your judge photos for the parity "
                                                            "verdicts (default: built-in held-out photos).")
                               ] = None,
             output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the deployment package "
                                                            "(artifact, decision, reports, README) here.")] = None,
             threads: ThreadsOpt = None,
             iters: Annotated[int, typer.Option("--iters", min=1, help="Timed calls per candidate, batch size and "
                                                "mode.")] = 12,
             synthetic: SyntheticOpt = False,
             fmt: FormatOpt = "json") -> None:
    """The fastest deployment that passes parity, measured here. Exit 0: chosen; 4: no candidate passed.

    Converts every available target, judges each with the parity checker on held-out photos, times the passing
    ones in latency and throughput mode, picks by strategy, keeps the decision for --backend auto and writes a
    package that 'deploy run --model', 'deploy serve' and Classifier() load.

    Example:

      deploy optimize ResNet50 --synthetic -o resnet50-deploy/ && deploy run --model resnet50-deploy/ --images photos/
    """
    from ppdeploy.optimize import optimize as run_optimize

    result = run_optimize(model, synthetic=synthetic, fmt=fmt, targets=targets, strategy=strategy,
                          batch_sizes=batch_sizes, images=images, output=output, threads=threads, iters=iters,
                          log=_progress)
    typer.echo(result.render())
    if result.chosen is None:
        _err("no candidate passed parity within the strategy; see the table")
        raise typer.Exit(EXIT_VERDICT)


@app.command()
def samples(output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write the photos to (created).")],
            count: Annotated[int, typer.Option("--count", min=1, max=1000, help="How many images.")] = 16,
            role: Annotated[str, typer.Option("--role", help="Which built-in set: judge (default: the held-out "
                                              "parity photos), shape, calibration or validation.")] = "judge",
            corpus: Annotated[Optional[str], typer.Option("--corpus", help="Instead: a bench corpus made from the "
                                                          "judge photos: imagenet (500x375 JPEGs) or phone (12 MP "
                                                          "JPEGs).")] = None) -> None:
    """Write real sample photos (JPEG and PNG) to a folder, to try 'deploy run' on.

    They are crops, flips, scales and JPEG re-encodings of a few photos shipped inside installed packages
    (scikit-image, matplotlib, scikit-learn): --role judge gives variations of matplotlib's grace_hopper.jpg and
    scikit-learn's china.jpg and flower.jpg. Example:

      deploy samples -o photos/ && deploy run --images photos/ --synthetic
    """
    from ppdeploy.errors import one_line
    from ppdeploy.samples import ROLE_PHOTOS, write_sample_folder

    if role not in ROLE_PHOTOS:
        raise DeployError(one_line(f"--role {role}", "unknown", "choose one of: " + ", ".join(ROLE_PHOTOS)))
    if corpus is not None:
        from ppdeploy.bench.corpus import write_corpus

        paths = write_corpus(corpus, output, count)
        _progress(f"wrote {len(paths)} '{corpus}' corpus JPEGs to {output} (made from the judge photos)")
        typer.echo(str(output))
        return
    paths = write_sample_folder(output, count, role=role)
    sources = ", ".join(f"{photo.distribution} {photo.name}" for photo in ROLE_PHOTOS[role])
    _progress(f"wrote {len(paths)} {role} photos to {output} (variations of: {sources})")
    typer.echo(str(output))


@app.command()
def doctor() -> None:
    """Installed backends and versions, CPU ISA and GPUs, the precision each backend really uses here."""
    from ppdeploy.doctor import diagnose

    typer.echo(diagnose().render())


@app.command()
def serve(model: ModelArg,
          backend: Annotated[str, typer.Option("--backend", help=f"One of: {_names('choices')}.")] = "auto",
          host: Annotated[str, typer.Option("--host", help="Address to bind (loopback by default).")] = "127.0.0.1",
          port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free port).")] = 8000,
          max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Most images per batch.")] = 8,
          max_delay_ms: Annotated[float, typer.Option("--max-delay-ms", min=0, help="Longest wait for a batch to "
                                                      "fill, from its first image.")] = 5.0,
          workers: Annotated[int, typer.Option("--workers", min=1, help="Batch workers, each with its own runtime "
                                               "instance (split cores with --threads).")] = 1,
          max_queue: Annotated[int, typer.Option("--max-queue", min=1, help="Images waiting before requests get "
                                                 "503 + Retry-After.")] = 64,
          max_request_bytes: Annotated[int, typer.Option("--max-request-bytes", min=1, help="Largest request body "
                                                         "(413 above it).")] = 20 * 1024 * 1024,
          max_images: Annotated[int, typer.Option("--max-images", min=1, help="Most images per request.")] = 32,
          max_pixels: Annotated[Optional[int], typer.Option("--max-pixels", min=0, help="Largest image, width x "
                                                            "height (default: $PPDEPLOY_MAX_PIXELS or 89,478,485; "
                                                            "0: no limit).")] = None,
          request_timeout: Annotated[float, typer.Option("--request-timeout", min=0.001, help="Seconds to answer "
                                                         "a request (503 after).")] = 30.0,
          max_request_pixels: Annotated[int, typer.Option("--max-request-pixels", min=0, help="Most pixels the "
                                                          "images of one request may decode to in all (413 "
                                                          "above).")] = 256_000_000,
          header_timeout: Annotated[float, typer.Option("--header-timeout", min=0.001, help="Seconds to receive a "
                                                        "request's headers (408 and close after).")] = 10.0,
          max_connections: Annotated[int, typer.Option("--max-connections", min=1, help="Open connections (one "
                                                       "more: 503 and close).")] = 256,
          topk: Annotated[int, typer.Option("--topk", min=1, help="Default classes per image.")] = 5,
          grpc_port: Annotated[Optional[int], typer.Option("--grpc-port", min=0, max=65535, help="Also serve the "
                                                           "Open Inference Protocol over gRPC on this port (0: any "
                                                           "free port; --engine local only).")] = None,
          device: Annotated[str, typer.Option("--device", help="cpu or gpu.")] = "cpu",
          threads: Annotated[Optional[int], typer.Option("--threads", help="Inference threads per worker.")] = None,
          mode: ModeOpt = "latency",
          access_log: Annotated[bool, typer.Option("--access-log", help="Log every request.")] = False,
          synthetic: SyntheticOpt = False,
          fmt: FormatOpt = "json",
          engine: EngineOpt = "local",
          replicas: Annotated[int, typer.Option("--replicas", min=1, help="--engine ray: replicas, each with its "
                                                "own model instance (the minimum with --max-replicas).")] = 1,
          max_replicas: Annotated[Optional[int], typer.Option("--max-replicas", min=1, help="--engine ray: "
                                                              "autoscale up to this many replicas.")] = None,
          replica_cpus: Annotated[float, typer.Option("--replica-cpus", min=0.01, help="--engine ray: CPUs "
                                                      "reserved per replica.")] = 1.0,
          address: AddressOpt = None) -> None:
    """Serve a model over HTTP with dynamic batching: POST /v1/classify, /healthz, /readyz, /metrics, /docs.

    Example (one image as the raw body, or several as multipart file parts under any field name):

      deploy serve ResNet50 --synthetic & curl --data-binary @photo.jpg localhost:8000/v1/classify
    """
    from ppdeploy.serving import ServeSettings

    _check_choice("--engine", engine, ENGINES)
    _check_choice("--mode", mode, registry.MODES)
    settings = ServeSettings(host=host, port=port, max_batch=max_batch, max_delay_ms=max_delay_ms, workers=workers,
                             max_queue=max_queue, max_request_bytes=max_request_bytes, max_images=max_images,
                             max_pixels=max_pixels, request_timeout_s=request_timeout, topk=topk,
                             max_request_pixels=max_request_pixels, header_timeout_s=header_timeout,
                             max_connections=max_connections, grpc_port=grpc_port)
    if engine == "ray":
        from ppdeploy.scaleout.cluster import ModelConfig, require_ray

        if grpc_port is not None:
            from ppdeploy.errors import one_line

            raise DeployError(one_line("--grpc-port", "is served by --engine local only",
                                       "drop --grpc-port, or use --engine local"))

        require_ray("serve")
        from ppdeploy.scaleout.ray_serve import serve_until_stopped

        config = ModelConfig(model, backend, synthetic, fmt, device, threads, max_batch, topk, mode)
        serve_until_stopped(config, settings, replicas=replicas, max_replicas=max_replicas,
                            replica_cpus=replica_cpus, address=address, log=_progress)
        return
    from ppdeploy.registry import require

    require("deploy serve", ("fastapi", "uvicorn", "prometheus_client", "multipart",
                             *(("grpc", "tritonclient") if grpc_port is not None else ())), "serve")
    from ppdeploy.classifier import Classifier
    from ppdeploy.serving.server import bind_socket
    from ppdeploy.serving.server import serve as run_server

    sock = bind_socket(host, port)  # a busy port fails before the model loads
    if grpc_port:  # so does a busy gRPC port (probed here; grpc binds its own socket once the app starts)
        try:
            bind_socket(host, grpc_port).close()
        except DeployError as exc:
            sock.close()
            raise DeployError(str(exc).replace("--port", "--grpc-port")) from None
    if grpc_port is not None:
        _progress(f"gRPC (Open Inference Protocol, inference.GRPCInferenceService) on {host}:{grpc_port or 'any'}")
    try:
        with Classifier(model, backend, synthetic=synthetic, fmt=fmt, device=device, threads=threads,
                        batch_size=max_batch, topk=topk, mode=mode, log=_progress) as clf:
            run_server(clf, settings, sock=sock, access_log=access_log, log=_progress)
    finally:
        sock.close()


def _check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        from ppdeploy.errors import one_line

        raise DeployError(one_line(f"{flag} '{value}'", "unknown", "choose one of: " + ", ".join(choices)))


def _emit(batches, output: Optional[Path], as_json: bool) -> int:
    """Print every record (or write them all to ``output``); return how many are error records."""
    if output is not None:
        from ppdeploy.results import write_results

        total, failed = write_results(batches, output)
        _err(f"wrote {total} record(s) to {output}")
        return failed
    from ppdeploy.results import json_line

    failed = 0
    for batch in batches:
        for record in batch:
            failed += "error" in record
            typer.echo(json_line(record) if as_json else _format_record(record))
    return failed


def _format_record(record: dict) -> str:
    """One text line per record, whatever bytes its file name holds (escaped: see ppdeploy.results)."""
    from ppdeploy.results import text_name

    name = text_name(record["filename"])
    if "error" in record:
        return f"{name}:\terror: {text_name(record['error'])}"
    scores = ", ".join(f"{s:.5f}" for s in record["scores"])
    return (f"{name}:\tclass id(s): {record['class_ids']}, score(s): [{scores}], "
            f"label_name(s): {record['label_names']}")


def main(args: Optional[list[str]] = None) -> None:
    """Console entry point. Exit codes: see ``EXIT_*``.

    A DeployError becomes one line on stderr and exit code 1 (traceback with -v); a usage error one line and 2;
    Ctrl-C one line, ``interrupted``, and 130. Root flags (``-v``, ``-q``) are accepted after the sub-command too.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if not {"--verbose", "-v"} & set(argv):  # third-party C++ logs (Paddle's glog, OpenCV) only with --verbose
        import os

        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    if "--" not in argv:  # root flags go first wherever they were typed (after "--" they are data)
        argv = [a for a in argv if a in ROOT_FLAGS] + [a for a in argv if a not in ROOT_FLAGS]
    try:
        code = _command().main(args=argv, prog_name="deploy", standalone_mode=False)
    except DeployError as exc:
        if _STATE["verbose"]:
            raise
        _err(f"error: {exc}")
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except typer.Abort:
        _err("aborted")
        sys.exit(EXIT_ERROR)
    except typer.TyperException as exc:  # click's usage errors, vendored by Typer
        sys.exit(_usage_error(exc))
    if code == EXIT_INTERRUPTED:
        _err("interrupted")
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _command():
    """The click group behind ``app``; flags show no ``<bool>`` type in help (they take no value)."""
    group = typer.main.get_command(app)
    for command in (group, *group.commands.values()):
        for param in command.params:
            _untyped_flag(param)
        command.get_help_option = lambda ctx, made=command.get_help_option: _untyped_flag(made(ctx))
    return group


def _untyped_flag(param):
    if getattr(param, "is_flag", False):
        param.display_type_rich = lambda ctx: None
    return param


def _usage_error(exc) -> int:
    """One line for a usage error (help when the command line was empty); the exit code."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
        typer.echo(ctx.get_help())
        return 2
    command = ctx.command_path if ctx is not None else "deploy"
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    _err(f"error: {command} | {message} | see '{command} --help'")
    return getattr(exc, "exit_code", 2)


if __name__ == "__main__":
    main()
