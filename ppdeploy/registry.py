"""The one place that knows which backends and targets exist.

Each runtime module (``ppdeploy/runtimes/*.py``) registers a :class:`Backend` record and each converter module
(``ppdeploy/converters/*.py``) registers its :class:`Target` records, at import. This module finds them by
importing every module of those two packages once (plugin discovery, cheap: heavy libraries are imported lazily
inside functions), so a new backend is one runtime module, one converter module and one pip extra; the CLI's
choices and help, ``doctor``, the bench rows, the parity matrix, ``--backend auto`` and the extras come from here.

This module is neutral: it imports nothing of ppdeploy but ``errors`` (the discovery is by package name).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ppdeploy.errors import BackendUnavailableError, ConversionError, one_line

PADDLE = "paddle"  # the native reference: runs the Paddle model itself, no artifact
PLUGIN_PACKAGES = ("ppdeploy.runtimes", "ppdeploy.converters")
DEVICES = ("cpu", "gpu")
MODES = ("latency", "throughput")  # a Runtime's modes: one request at a time, or several in flight


def install_hint(extra: str) -> str:
    """The one command that installs an extra."""
    return f"pip install 'ppdeploy[{extra}]'"


def missing_imports(imports: tuple[str, ...]) -> list[str]:
    """The import names in ``imports`` that cannot be found (nothing is imported)."""
    missing = []
    for name in imports:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
            found = False
        if not found:
            missing.append(name)
    return missing


def require(what: str, imports: tuple[str, ...], extra: str) -> None:
    """Fail with one line naming the extra to install when any of ``imports`` is missing (cheap: no import).

    Raises:
        BackendUnavailableError: ``what | package X is not installed | pip install 'ppdeploy[extra]'``.
    """
    missing = missing_imports(imports)
    if missing:
        raise BackendUnavailableError(one_line(what, f"package {', '.join(missing)} is not installed",
                                               install_hint(extra)))


def _availability(imports: tuple[str, ...], extra: str, check: Callable[[], tuple[bool, str]] | None
                  ) -> tuple[bool, str]:
    missing = missing_imports(imports)
    if missing:
        # A package another backend owns (Paddle for the paddle2onnx edge) is installed by that backend's extra.
        owners = {name: record.extra for record in backends().values() for name in record.imports}
        hints = dict.fromkeys(install_hint(owners.get(name, extra)) for name in missing)
        return False, f"package {', '.join(missing)} is not installed | install it: {' and '.join(hints)}"
    return check() if check is not None else (True, "")


@dataclass(frozen=True)
class Variant:
    """A run configuration of a backend besides its targets' defaults, e.g. an fp32 IR computed in bf16.

    Attributes:
        name: what ``--backend`` accepts (``openvino-bf16``).
        target: the artifact it runs.
        options: keyword arguments for the runtime class.
        profile: the parity profile it answers to (what it computes in).
        note: one line for help and reports.
        check: whether this machine can run it (e.g. the CPU computes bf16), after the backend's own checks.
    """

    name: str
    target: str
    options: dict[str, Any]
    profile: str
    note: str = ""
    check: Callable[[], tuple[bool, str]] | None = None


@dataclass(frozen=True)
class Backend:
    """What a runtime module declares about its backend.

    Attributes:
        name: ``--backend`` name (``onnx``, ``openvino``, ``paddle``, ``tensorrt``).
        runtime: its :class:`ppdeploy.runtimes.base.Runtime` subclass.
        imports: import names it needs (checked without importing them).
        extra: the pip extra that installs it (``ppdeploy[extra]``).
        distributions: pip distributions that provide ``imports`` (CPU and GPU builds); the first names the tool.
        exclusive: at most one of ``distributions`` may be installed (e.g. onnxruntime and onnxruntime-gpu share
            one import name: installed together, the GPU provider silently disappears).
        devices: devices it runs on, the preferred first.
        default_target: the artifact ``--backend NAME`` runs (``None``: the Paddle model itself).
        aliases: other names ``--backend`` accepts (``trt``).
        auto: ``{device: (rank, choice)}``: ``--backend auto`` takes the lowest rank available on the device.
        check: a cheap extra availability check (a GPU is present), after the import check.
        precision_probe: one line for ``deploy doctor`` on the precision it really computes in on this machine.
        raw_call: ``(runtime, artifact_dir, threads) -> (label, infer)``: the same artifact through the library's
            own API, for the bench's wrapper-overhead measurement.
        variants: run configurations besides the targets (``openvino-bf16``).
        fix_mixed: ``{"cpu": command, "gpu": command}``: what repairs a mixed install (``exclusive``) on a machine
            without and with an NVIDIA GPU.
        file_suffixes: suffixes of model files made by any tool that this backend runs (``deploy parity --artifact``).
        inspector: ``"module:function"`` that reads such a file and says what it computes (``ppdeploy.foreign``).
    """

    name: str
    runtime: type
    imports: tuple[str, ...]
    extra: str
    distributions: tuple[str, ...]
    exclusive: bool = False
    devices: tuple[str, ...] = ("cpu",)
    default_target: str | None = None
    aliases: tuple[str, ...] = ()
    auto: dict[str, tuple[int, str]] = field(default_factory=dict)
    check: Callable[[], tuple[bool, str]] | None = None
    precision_probe: Callable[[], str] | None = None
    raw_call: Callable[[Any, str, int], tuple[str, Callable[[Any], Any]]] | None = None
    variants: tuple[Variant, ...] = ()
    fix_mixed: dict[str, str] = field(default_factory=dict)
    file_suffixes: tuple[str, ...] = ()
    inspector: str = ""

    @property
    def preferred_device(self) -> str:
        """CPU wherever the backend has it (a GPU-only backend, TensorRT, runs on its GPU)."""
        return "cpu" if "cpu" in self.devices else self.devices[0]

    def availability(self) -> tuple[bool, str]:
        """(available, reason) without importing the backend's library."""
        return _availability(self.imports, self.extra, self.check)

    def installed(self) -> list[tuple[str, str]]:
        """``[(distribution, version), ...]`` of the ``distributions`` that are installed."""
        from importlib import metadata

        found = []
        for dist in self.distributions:
            try:
                found.append((dist, metadata.version(dist)))
            except metadata.PackageNotFoundError:
                continue
        return found

    def mixed_install(self) -> str | None:
        """One line naming the conflict and its fix when more than one exclusive distribution is installed."""
        found = self.installed()
        if not self.exclusive or len(found) < 2:
            return None
        from ppdeploy.gpu import gpu_present

        names = " and ".join(dist for dist, _ in found)
        fix = self.fix_mixed.get("gpu" if gpu_present() else "cpu") or (
            f"pip uninstall -y {' '.join(self.distributions)} && {install_hint(self.extra)}")
        return one_line(f"backend '{self.name}'", f"{names} are both installed (one import name: the last "
                        "installed wins and the other's providers silently disappear)", fix)


@dataclass(frozen=True)
class Target:
    """One conversion target (``deploy convert --to NAME``), declared by the converter module that builds it.

    ``source`` is the target whose artifact this one is made from (``None``: the Paddle model itself);
    ``module`` exposes ``convert(src: Path, dst: Path, options: ConvertOptions) -> ConvertResult`` where
    ``src`` is the source artifact *file* (e.g. ``.../onnx/model.onnx`` or ``.../inference.json``) and ``dst``
    an empty folder to write into.

    Attributes:
        calibrated: built from calibration photos (its cache key includes the calibration and validation sets).
        tools: distributions whose versions shape the artifact (recorded in the manifest, part of the cache key).
        needs_gpu: built on (and for) the GPU it runs on: the cache key includes the GPU's name and compute
            capability.
        paddle_formats/fallback: when ``source`` is None, the Paddle formats read directly, and the target to go
            through otherwise.
        profile: the parity profile it answers to (default: its precision).
        recipe: names how the converter builds it when that changed after artifacts were cached (part of the cache
            key when set: artifacts built the old way are rebuilt, not reused).
    """

    name: str
    backend: str
    precision: str
    module: str
    source: str | None = None
    requires: tuple[str, ...] = ()
    extra: str = ""
    tools: tuple[str, ...] = ()
    needs_gpu: bool = False
    calibrated: bool = False
    paddle_formats: tuple[str, ...] = ("json", "pdmodel")
    fallback: str | None = None
    check: Callable[[], tuple[bool, str]] | None = None
    profile: str = ""
    recipe: str = ""

    @property
    def install_hint(self) -> str:
        return install_hint(self.extra)

    @property
    def parity_profile(self) -> str:
        return self.profile or self.precision

    def availability(self) -> tuple[bool, str]:
        return _availability(self.requires, self.extra, self.check)

    def converter(self):
        return importlib.import_module(self.module)


_BACKENDS: dict[str, Backend] = {}
_TARGETS: dict[str, Target] = {}
_LOADED: list[bool] = []


def register_backend(record: Backend) -> Backend:
    """Called by a runtime module at import."""
    _BACKENDS[record.name] = record
    return record


def register_target(record: Target) -> Target:
    """Called by a converter module at import."""
    _TARGETS[record.name] = record
    return record


def _discover() -> None:
    if _LOADED:
        return
    _LOADED.append(True)
    for package_name in PLUGIN_PACKAGES:
        package = importlib.import_module(package_name)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            importlib.import_module(f"{package_name}.{info.name}")


def backends() -> dict[str, Backend]:
    """Every registered backend: the reference ``paddle`` first, then by name (whatever the import order was)."""
    _discover()
    return dict(sorted(_BACKENDS.items(), key=lambda item: (item[0] != PADDLE, item[0])))


def targets() -> dict[str, Target]:
    """Every registered target, by name, in the order of their backends, each chain's source first."""
    _discover()
    order = list(backends())
    ranked = sorted(_TARGETS.values(), key=lambda t: (order.index(t.backend) if t.backend in order else len(order),
                                                      _depth(t), t.name))
    return {t.name: t for t in ranked}


def _depth(target: Target) -> int:
    depth, source = 0, target.source
    while source is not None and source in _TARGETS:
        depth, source = depth + 1, _TARGETS[source].source
    return depth


def variants() -> dict[str, Variant]:
    """Every run variant of every backend, by name."""
    return {v.name: v for record in backends().values() for v in record.variants}


def get_backend(name: str) -> Backend:
    records = backends()
    if name not in records:
        raise BackendUnavailableError(one_line(f"backend '{name}'", "unknown",
                                               "choose one of: " + ", ".join(records)))
    return records[name]


def runtime_class(name: str) -> type:
    """The Runtime class of backend ``name``."""
    return get_backend(name).runtime


def get_target(name: str) -> Target:
    records = targets()
    if name not in records:
        raise ConversionError(one_line(f"target '{name}'", "unknown", "choose one of: " + ", ".join(records)))
    return records[name]


# ------------------------------------------------------------------------------------------------ choices


@dataclass(frozen=True)
class Choice:
    """A runnable configuration: a backend, the artifact target it runs (None: the Paddle model), the runtime's
    extra options and the parity profile it answers to. ``label`` is its canonical name."""

    label: str
    backend: str
    target: str | None
    profile: str = "fp32"
    options: dict[str, Any] = field(default_factory=dict)
    check: Callable[[], tuple[bool, str]] | None = field(default=None, compare=False, repr=False)

    @property
    def record(self) -> Backend:
        return get_backend(self.backend)

    def runtime(self, artifact_dir: Any, *, device: str | None = None, threads: int | None = None,
                mode: str = "latency", requests: int | None = None):
        """Load ``artifact_dir`` with this choice's runtime and options (on its preferred device by default), in
        ``latency`` or ``throughput`` mode (``requests`` in flight; default: the backend's choice)."""
        record = self.record
        return record.runtime(artifact_dir, device=device or record.preferred_device, threads=threads, mode=mode,
                              requests=requests, **self.options)

    def availability(self) -> tuple[bool, str]:
        """Whether the runtime and (if any) the conversion target can run here, and why not."""
        ok, reason = self.record.availability()
        if ok and self.target:
            ok, reason = targets()[self.target].availability()
        if ok and self.check is not None:
            ok, reason = self.check()
        return ok, reason


def configurations(record: Backend) -> list[str]:
    """A backend's targets, each followed by the variants that run it (``openvino-bf16`` beside ``openvino``)."""
    names = []
    for name, target in targets().items():
        if target.backend == record.name:
            names += [name, *(v.name for v in record.variants if v.target == name)]
    return names + [v.name for v in record.variants if v.name not in names]


def choice_names() -> list[str]:
    """Every value ``--backend`` accepts besides ``auto`` and aliases: the reference, backends, targets, variants."""
    names = [PADDLE]
    for name, record in backends().items():
        names += [name, *configurations(record)]
    return list(dict.fromkeys(names))


def matrix_names() -> list[str]:
    """Every distinct configuration, once (``all`` in parity and bench): the reference, targets, variants."""
    names = [PADDLE]
    for record in backends().values():
        names += configurations(record)
    return list(dict.fromkeys(names))


def resolve(name: str, device: str = "cpu") -> Choice:
    """Turn ``paddle``, a backend name or alias (``onnx``, ``trt``), a target (``openvino-int8``) or a variant
    (``openvino-bf16``) into a Choice; ``auto`` picks the fastest available for ``device``."""
    if name == "auto":
        return auto_choice(device)
    records = backends()
    for record in records.values():
        if name == record.name or name in record.aliases:
            if record.default_target is None:
                return Choice(record.name, record.name, None)
            return _target_choice(record.default_target)
    if name in targets():
        return _target_choice(name)
    found = variants().get(name)
    if found is not None:
        return Choice(found.name, targets()[found.target].backend, found.target, found.profile, dict(found.options),
                      found.check)
    raise BackendUnavailableError(one_line(f"backend '{name}'", "unknown",
                                           "choose one of: auto, " + ", ".join([*choice_names(), *aliases()])))


def aliases() -> list[str]:
    """Every backend's other names (``trt``, ``ort``, ...)."""
    return [alias for record in backends().values() for alias in record.aliases]


def _target_choice(name: str) -> Choice:
    target = targets()[name]
    return Choice(name, target.backend, name, target.parity_profile)


def auto_order(device: str = "cpu") -> list[str]:
    """The choices ``--backend auto`` tries on ``device``, fastest first (each backend's declared rank)."""
    ranked = sorted((rank, choice) for record in backends().values()
                    for dev, (rank, choice) in record.auto.items() if dev == device)
    return [choice for _, choice in ranked]


def auto_choice(device: str = "cpu") -> Choice:
    """The fastest configuration available for ``device``."""
    for name in auto_order(device):
        choice = resolve(name, device)
        if choice.availability()[0] and device in choice.record.devices:
            return choice
    raise BackendUnavailableError(one_line("--backend auto", f"no backend available for device '{device}'",
                                           f"{install_hint('cpu')} (CPU stack) or {install_hint('gpu')}"))


def extras() -> dict[str, list[str]]:
    """``{extra: [backend or target names]}``: what each pip extra enables."""
    found: dict[str, list[str]] = {}
    for name, record in backends().items():
        found.setdefault(record.extra, []).append(name)
    for name, target in targets().items():
        if target.extra:
            found.setdefault(target.extra, []).append(name)
    return found


def tool_distributions() -> dict[str, tuple[str, ...]]:
    """``{tool: distributions}`` for every library that can shape an artifact (backends and targets' tools)."""
    tools: dict[str, tuple[str, ...]] = {}
    for record in backends().values():
        tools.setdefault(record.distributions[0], record.distributions)
    for target in targets().values():
        for tool in target.tools:
            tools.setdefault(tool, (tool,))
    return tools
