"""``deploy run --engine ray``: classify an image list with Ray Data over a pool of actors, one record per input.

The driver lists the inputs (a file, a folder or a glob, as ``deploy run`` does) into a dataset of paths. Each
actor of the pool holds one :class:`~ppdeploy.classifier.Classifier` and turns a batch of paths into records with
:meth:`~ppdeploy.classifier.Classifier.classify_batch`: the library's own decoding, preprocessing and error
records, so a bad image becomes ``{filename, error}`` and never stops the job. Results come back in input order.

On a multi-node cluster every node reads the paths itself: put the images on a filesystem all nodes share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ppdeploy.scaleout.cluster import ModelConfig, connect, require_ray


class ClassifyActor:
    """A Ray Data actor: loads the model once, then maps a batch of paths to one record per path (Arrow table)."""

    def __init__(self, config: ModelConfig) -> None:
        self.classifier = config.load()

    def __call__(self, batch: Any) -> Any:
        from ppdeploy.results import records_table

        paths = [Path(path) for path in batch["path"].to_pylist()]
        return records_table(self.classifier.classify_batch(paths))


def classify_on_ray(images: Any, config: ModelConfig, *, actors: int = 1, actor_cpus: float = 1.0,
                    address: str | None = None, log: Callable[[str], None] | None = None) -> Iterator[list[dict]]:
    """Classify ``images`` on Ray; yield the records batch by batch, in input order, every input exactly once.

    Args:
        images: a file, a folder (recursive), a glob, or a list of these.
        config: the model every actor loads (checked once here first, before Ray starts).
        actors: actors in the pool, each with its own model instance.
        actor_cpus: CPUs Ray reserves per actor (match ``config.threads``).
        address: a Ray cluster to join (``auto``, ``HOST:6379``, ``ray://HOST:10001``); default: start a local one.
        log: called with progress lines.

    Raises:
        BackendUnavailableError: Ray is not installed.
        ImageError: a path that does not exist, or a folder or glob with no image files.
    """
    from ppdeploy.classifier import expand_inputs

    require_ray("data")
    paths = [str(path) for path in expand_inputs(images)]
    config.check(log)
    started = connect(address)
    try:
        yield from _run(paths, config, actors, actor_cpus)
    finally:
        if started:
            import ray

            ray.shutdown()


def _run(paths: list[str], config: ModelConfig, actors: int, actor_cpus: float) -> Iterator[list[dict]]:
    import ray.data

    from ppdeploy.results import table_records

    context = ray.data.DataContext.get_current()
    keep_order, context.execution_options.preserve_order = context.execution_options.preserve_order, True
    try:
        dataset = ray.data.from_items([{"path": path} for path in paths])
        results = dataset.map_batches(ClassifyActor, fn_constructor_kwargs={"config": config},
                                      batch_size=config.batch_size, batch_format="pyarrow",
                                      compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=actor_cpus)
        for table in results.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield table_records(table)
    finally:
        context.execution_options.preserve_order = keep_order
