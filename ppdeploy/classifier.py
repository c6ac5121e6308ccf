"""A PaddleClas-like classifier: one model, one backend, ``predict()`` yielding result records per batch."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ppdeploy.errors import BackendUnavailableError, DeployError, ImageError, InputSpecError, one_line

Log = Callable[[str], None]


@dataclass
class InputItem:
    """One input of a classification: its display name and either its preprocessed tensor or why it has none."""

    filename: str
    tensor: np.ndarray | None = None  # preprocessed CHW float32
    error: str | None = None


class Classifier:
    """Classify images with a zoo model (or a model folder) on any backend.

    Example:
        >>> clf = Classifier("ResNet50", backend="openvino", synthetic=True)
        >>> for batch in clf.predict("photos/"):
        ...     print(batch[0]["class_ids"], batch[0]["scores"])

    Args:
        model: a zoo name or a Paddle inference model folder.
        backend: ``auto``, ``paddle``, a backend (``onnx``, ``openvino``, ``tensorrt``) or a target
            (``openvino-int8``, ``onnx-fp16``, ...). A missing artifact is converted and cached first.
        synthetic: with a zoo name, use seeded synthetic weights instead of downloading (meaningless predictions).
        fmt: Paddle format for synthetic exports (``json`` or ``pdmodel``).
        device: ``cpu`` or ``gpu``.
        threads: inference threads (default: the backend's choice).
        batch_size: images per batch.
        topk: classes per result record.
        mode: ``latency`` (one batch at a time) or ``throughput`` (several batches in flight: higher images/s
            for folders and servers; see ``Runtime``).
        requests: throughput mode's batches in flight (default: the backend's choice).
        fast_decode: decode large JPEGs at 1/2-1/8 size (libjpeg DCT scaling) before the resize: faster on phone
            photos, not PaddleClas's exact pixels (its cost is measured: docs/benchmarks.md). Off by default.
        log: called with progress lines (conversion, backend choice).
    """

    def __init__(self, model: str | Path = "ResNet50", backend: str = "auto", *, synthetic: bool = False,
                 fmt: str = "json", device: str = "cpu", threads: int | None = None, batch_size: int = 8,
                 topk: int = 5, mode: str = "latency", requests: int | None = None, fast_decode: bool = False,
                 log: Log | None = None) -> None:
        from ppdeploy.models.resolve import resolve_model
        from ppdeploy.optimize.package import is_package
        from ppdeploy.preprocess import PreprocessConfig
        from ppdeploy.registry import resolve

        say = log or (lambda line: None)
        self.decision = None
        if is_package(model):  # a deployment package made by 'deploy optimize': its choice, its artifact
            self._open_package(Path(model), backend, device, say)
            self.model = None
            self.preprocess = PreprocessConfig.for_model_dir(model, PreprocessConfig.for_model_dir(
                self.artifact_dir, PreprocessConfig()))
        else:
            self.choice = resolve(backend, device)  # an unknown or missing backend fails before any export
            self._check_available()
            self.model = resolve_model(model, synthetic=synthetic, fmt=fmt)
            if backend == "auto":
                self._auto(device, say)
            default = self.model.spec.preprocess_config() if self.model.spec else PreprocessConfig()
            self.preprocess = PreprocessConfig.for_model_dir(self.model.paddle.directory, default)
            self.artifact_dir = self._artifact(log)
        self.reduce_to = self.preprocess.resize_short if fast_decode else None
        self.runtime = self.choice.runtime(self.artifact_dir, device=device, threads=threads, mode=mode,
                                           requests=requests)
        try:
            self._check_input_size()
            classes = self.runtime.outputs[0].shape[-1] if self.runtime.outputs else None
            if classes and topk > classes:
                raise InputSpecError(one_line(f"--topk {topk}", f"more than the model's {classes} classes",
                                              f"use at most {classes}"))
        except InputSpecError:
            self.runtime.close()
            raise
        self.batch_size = batch_size
        self.topk = topk

    @property
    def model_name(self) -> str:
        """The model's name (a package's: the one it was decided for)."""
        return self.model.name if self.model is not None else self.decision.data["model"]["name"]

    def _check_available(self) -> None:
        ok, reason = self.choice.availability()
        if not ok:
            raise BackendUnavailableError(one_line(f"backend '{self.choice.label}'", reason))

    def _open_package(self, folder: Path, backend: str, device: str, say: Log) -> None:
        from ppdeploy.optimize.package import load_package
        from ppdeploy.registry import resolve

        self.decision = load_package(folder)
        if backend not in ("auto", self.decision.label):
            raise DeployError(one_line(f"--backend {backend}", f"the package {folder} holds "
                                       f"'{self.decision.label}'", "drop --backend, or use the model itself"))
        self.choice = resolve(self.decision.label, device)
        self._check_available()
        self.artifact_dir = self.decision.artifact_dir
        say(f"package {folder}: {self.decision.describe()}")
        if self.decision.data.get("model", {}).get("synthetic"):
            from ppdeploy.models.resolve import warn_synthetic

            warn_synthetic()  # the package's weights are the seeded synthetic ones: so are its predictions
        self._warn_if_elsewhere(folder)

    def _auto(self, device: str, say: Log) -> None:
        """``--backend auto``: this model's measured decision on this machine if there is one, else the static
        order; says which."""
        from ppdeploy.converters.pipeline import model_key
        from ppdeploy.optimize.package import cached_decision
        from ppdeploy.registry import resolve

        decision = cached_decision(model_key(self.model))
        if decision is not None and device == "cpu" and decision.mismatch() is None:
            measured = resolve(decision.label, device)
            if measured.availability()[0]:
                self.choice, self.decision = measured, decision
                say(f"--backend auto: measured decision {decision.describe()}")
                return
        why = ("its measured decision was made on another machine" if decision is not None
               else "no measured decision for this model; 'deploy optimize' makes one")
        say(f"--backend auto chose '{self.choice.label}' for device '{device}' from the static order ({why})")

    def _warn_if_elsewhere(self, folder: Path) -> None:
        from ppdeploy import progress

        difference = self.decision.mismatch()
        if difference:
            progress.warn(f"{folder} was decided on another machine ({difference}); the choice may not be the "
                          f"fastest here: re-run the decision with '{self.decision.data.get('command')} -o "
                          f"{folder}'")

    def _artifact(self, log: Log | None) -> Path:
        if self.choice.target is None:
            return self.model.paddle.directory
        from ppdeploy.converters.pipeline import convert_model

        return convert_model(self.model, self.choice.target, log=log)

    def _check_input_size(self) -> None:
        """Refuse a crop size the model cannot take once, here, rather than on every batch."""
        from ppdeploy.preprocess import YAML_NAMES

        shape = self.runtime.inputs[0].shape if self.runtime.inputs else ()
        crop = self.preprocess.crop_size
        if len(shape) != 4 or None in shape[2:] or shape[2:] == (crop, crop):
            return
        directory = self.model.paddle.directory if self.model else self.artifact_dir.parent  # a package's root
        model_size = f"{shape[2]}x{shape[3]}"
        yaml = next((directory / name for name in YAML_NAMES if (directory / name).is_file()), None)
        if yaml is not None:
            model_file = self.model.paddle.model_file.name if self.model else self.artifact_dir.name
            raise InputSpecError(one_line(str(yaml), f"CropImage size {crop} does not fit the model's {model_size} "
                                          f"input ({model_file})",
                                          f"set CropImage size to {shape[2]} in it, or use the model it was "
                                          "written for"))
        raise InputSpecError(one_line(str(directory), f"the default preprocessing crops {crop}x{crop} but the "
                                      f"model's input is {model_size}",
                                      f"add an inference_cls.yaml with CropImage size {shape[2]} to the folder"))

    def predict(self, inputs: Any, batch_size: int | None = None) -> Iterator[list[dict]]:
        """Yield one list of result records per batch, in input order.

        ``inputs`` is a file, a folder (recursive), a glob, an RGB ``uint8`` array (HWC), or a list of these.
        Every input appears exactly once: as ``{class_ids, scores, label_names, filename}``, or, when it
        cannot be read, as ``{filename, error}``.

        Raises:
            ImageError: a path that does not exist, or a folder or glob with no image files.
            DeployError: ``$PPDEPLOY_MAX_PIXELS`` is not a pixel count (checked before the first image).
        """
        from ppdeploy.images import pixel_limit

        pixel_limit()  # a bad $PPDEPLOY_MAX_PIXELS stops the run here, instead of becoming every image's error
        size = batch_size or self.batch_size
        order: deque[tuple[list[InputItem], list[InputItem]]] = deque()  # batches fed, not yet answered

        def feed() -> Iterator[np.ndarray]:
            for items in self._decoded(_chunks(expand_inputs(inputs), size)):
                good = [item for item in items if item.error is None]
                order.append((items, good))
                if good:
                    yield np.stack([item.tensor for item in good])

        for probs in self.runtime.infer_stream(feed()):
            while True:  # batches with no readable image get their error records in their turn
                items, good = order.popleft()
                yield self._records(items, good, probs if good else None)
                if good:
                    break
        while order:
            items, good = order.popleft()
            yield self._records(items, good, None)

    def _decoded(self, chunks: Iterator[list[Any]]) -> Iterator[list[InputItem]]:
        """Decoded and preprocessed batches, in order, from a pool of one thread per core (OpenCV and the backends
        release the GIL), each image its own task; a few batches ahead of the consumer, never more."""
        import os

        workers = max(2, os.cpu_count() or 1)
        ahead = 2 + (self.runtime.requests or 1)  # batches decoded ahead: enough to keep every request fed
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ppdeploy-decode") as pool:
            def submit(chunk):
                return [pool.submit(load_input, source, self.preprocess, self.reduce_to) for source in chunk]

            pending = [submit(chunk) for chunk in _take(chunks, ahead)]
            while pending:
                futures = pending.pop(0)
                pending.extend(submit(chunk) for chunk in _take(chunks, 1))
                yield [future.result() for future in futures]

    def classify_batch(self, sources: list[Any]) -> list[dict]:
        """Decode, preprocess and classify one batch of files (paths) as one runtime call, in order.

        Each source gets one record, as in :meth:`predict`: its result, or ``{filename, error}`` when it cannot
        be read (a missing, empty or corrupt file never raises). ``(name, RGB array)`` pairs are accepted too.
        """
        return self._classify_items([load_input(source, self.preprocess, self.reduce_to) for source in sources])

    def _classify_items(self, items: list[InputItem]) -> list[dict]:
        good = [item for item in items if item.error is None]
        probs = self.runtime.infer(np.stack([i.tensor for i in good])) if good else None
        return self._records(items, good, probs)

    def _records(self, items: list[InputItem], good: list[InputItem], probs: np.ndarray | None) -> list[dict]:
        from ppdeploy.postprocess import top_k

        scored = iter(top_k(probs, self.topk, filenames=[i.filename for i in good])) if good else iter(())
        return [next(scored) if item.error is None else {"filename": item.filename, "error": item.error}
                for item in items]

    def close(self) -> None:
        self.runtime.close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def expand_inputs(inputs: Any) -> list[Any]:
    """Flatten inputs into a list of paths and ``(name, array)`` pairs (folders and globs listed, sorted).

    ``inputs`` is what :meth:`Classifier.predict` takes: a file, a folder, a glob, an array, or a list of these.

    Raises:
        ImageError: a path that does not exist, or a folder or glob with no image files.
    """
    from ppdeploy.images import list_images

    if isinstance(inputs, np.ndarray) or isinstance(inputs, (str, Path)):
        inputs = [inputs]
    expanded: list[Any] = []
    for index, item in enumerate(inputs):
        if isinstance(item, np.ndarray):
            expanded.append((f"array_{index}", item))
        elif Path(item).is_file():
            expanded.append(Path(item))
        else:
            expanded.extend(list_images(item))
    return expanded


def load_input(source: Any, cfg: Any, reduce_to: int | None = None) -> InputItem:
    """Decode and preprocess one input (a path or a ``(name, array)`` pair) with ``cfg``, a ``PreprocessConfig``;
    ``reduce_to``: fast decoding of large JPEGs (see :func:`ppdeploy.images.decode_image`).

    Any failure becomes the item's error, never an exception.
    """
    from ppdeploy.images import decode_image
    from ppdeploy.preprocess import preprocess, to_rgb_uint8

    name = source[0] if isinstance(source, tuple) else str(source)
    try:
        image = to_rgb_uint8(source[1]) if isinstance(source, tuple) else decode_image(source, reduce_to=reduce_to)
        return InputItem(name, tensor=preprocess(image, cfg))
    except ImageError as exc:
        return InputItem(name, error=str(exc))
    except (DeployError, ValueError, TypeError, cv2_error()) as exc:
        return InputItem(name, error=f"{name} | cannot preprocess: {exc}")


def cv2_error() -> type[BaseException]:
    import cv2

    return cv2.error


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _take(iterator: Iterator[list[Any]], count: int) -> Iterable[list[Any]]:
    for _ in range(count):
        chunk = next(iterator, None)
        if chunk is None:
            return
        yield chunk
