"""Top-1/Top-5 accuracy of several backends on a PaddleClas-format labelled list (``path label`` per line)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ppdeploy.errors import DeployError, one_line

Log = Callable[[str], None]


@dataclass
class Accuracy:
    """One backend's accuracy on the list."""

    backend: str
    top1: float
    top5: float
    images: int
    unreadable: int = 0
    status: str = "ok"  # "ok", "skipped" or "error"
    reason: str = ""


@dataclass
class EvalReport:
    model: str
    data: str
    results: list[Accuracy] = field(default_factory=list)

    def render(self) -> str:
        reference = next((r for r in self.results if r.backend == "paddle" and r.status == "ok"), None)
        lines = [f"Accuracy of {self.model} on {self.data}", "backend  top-1  top-5  images  d(top-1) vs paddle"]
        for r in self.results:
            if r.status != "ok":
                lines.append(f"{r.backend}  {r.status}: {r.reason}")
                continue
            delta = f"{(r.top1 - reference.top1) * 100:+.2f} pt" if reference else "-"
            lines.append(f"{r.backend}  {r.top1:.4f}  {r.top5:.4f}  {r.images}  {delta}")
        return "\n".join(lines)


def read_label_list(path: str | Path, root: str | Path | None = None) -> list[tuple[Path, int]]:
    """Parse ``relative/path.jpg label`` lines; paths are relative to ``root`` (default: the list's folder)."""
    path = Path(path)
    root = Path(root) if root else path.parent
    items = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DeployError(one_line(f"{path}:{number}", f"cannot parse {line!r}", "write 'path label' per line"))
        items.append((root / parts[0], int(parts[1])))
    if not items:
        raise DeployError(one_line(str(path), "holds no labelled images", "write 'path label' per line"))
    return items


def evaluate(model: str | Path, backends: Sequence[str], data: str | Path, *, root: str | Path | None = None,
             synthetic: bool = False, batch_size: int = 8, threads: int | None = None,
             log: Log | None = None) -> EvalReport:
    """Run every backend over the labelled list and measure top-1/top-5 accuracy."""
    from ppdeploy.classifier import Classifier
    from ppdeploy.registry import resolve

    items = read_label_list(data, root)
    paths = [str(p) for p, _ in items]
    labels = dict(zip(paths, (label for _, label in items)))
    report = EvalReport(str(model), str(data))
    for name in backends:
        ok, reason = resolve(name).availability()
        if not ok:
            report.results.append(Accuracy(name, 0.0, 0.0, 0, status="skipped", reason=reason))
            continue
        try:
            with Classifier(model, name, synthetic=synthetic, threads=threads, batch_size=batch_size,
                            log=log) as clf:
                records = [r for batch in clf.predict(paths) for r in batch]
        except DeployError as exc:
            report.results.append(Accuracy(name, 0.0, 0.0, 0, status="error", reason=str(exc)))
            continue
        report.results.append(_score(name, records, labels))
    return report


def _score(name: str, records: list[dict], labels: dict[str, int]) -> Accuracy:
    top1 = sum(1 for r in records if "error" not in r and r["class_ids"][0] == labels[r["filename"]])
    top5 = sum(1 for r in records if "error" not in r and labels[r["filename"]] in r["class_ids"][:5])
    total = len(records)
    return Accuracy(name, top1 / total, top5 / total, total, unreadable=sum("error" in r for r in records))
