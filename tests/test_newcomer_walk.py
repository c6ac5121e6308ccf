"""The README walked as a newcomer walks it on a fresh machine: its own commands, read from README.md, run with the
installed ``deploy`` in a fresh temporary HOME (no ``PPDEPLOY_HOME``, a private TMPDIR).

What the walk checks (issue 17): the main job passes with progress on stderr, a clean stdout and no third-party
log noise; the report explains itself; ``deploy samples`` + ``deploy run`` from the README classify every photo;
``--quiet`` leaves stderr empty; the README's test command leaves the cache the walk filled byte-identical (the
test selected is one that frees a zoo model's cache entries, the model the main job just cached); nothing is left
in TMPDIR. It costs one ResNet50 conversion to every target (about 3-5 minutes on 2 cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DEPLOY = Path(sys.executable).parent / "deploy"
# Third-party lines that must not reach an ordinary run (Paddle's glog, OpenCV's logger, Paddle's build notes).
NOISE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d|\[ ?WARN:|ccache|eager_utils|PIR not support", re.MULTILINE)


def readme_commands() -> dict[str, str]:
    """The Quickstart block's commands by their comment (set-up, main job, tests) and the 'try' line."""
    text = README.read_text(encoding="utf-8")
    block = text.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = {}
    for line in block.splitlines():
        command, _, comment = line.partition("#")
        if command.strip():
            commands[comment.strip()] = command.strip()
    found = re.search(r"To try `deploy run` on real photos:\s*`([^`]+)`", text)
    assert found, "README must say how to try `deploy run` on real photos"
    commands["try"] = found.group(1)
    return commands


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path → sha256 and mode): byte-identical means equal dicts."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
            for p in sorted(root.rglob("*")) if p.is_file()}


class Walk:
    def __init__(self, base: Path):
        self.home, self.tmp, self.work = base / "home", base / "tmp", base / "work"
        for folder in (self.home, self.tmp, self.work):
            folder.mkdir()
        self.env = {key: value for key, value in os.environ.items()
                    if key not in ("PPDEPLOY_HOME", "XDG_CACHE_HOME")}
        self.env.update(HOME=str(self.home), TMPDIR=str(self.tmp), COLUMNS="160")
        self.cache = self.home / ".cache" / "ppdeploy"

    def run(self, command: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """``command`` as the README writes it, with this environment's ``deploy`` and ``python``."""
        argv = shlex.split(command)
        argv[0] = {"deploy": str(DEPLOY), "python": sys.executable}.get(argv[0], argv[0])
        return subprocess.run(argv, cwd=cwd or self.work, env=self.env, capture_output=True, text=True,
                              timeout=1200)


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    walk = Walk(tmp_path_factory.mktemp("newcomer"))
    walk.commands = readme_commands()
    walk.main = walk.run(walk.commands["main job, offline"])
    return walk


def test_the_readme_commands_are_the_ones_ci_runs():
    commands, ci = readme_commands(), (ROOT / ".ci" / "run").read_text()
    setup = [command for comment, command in commands.items() if comment.startswith("set-up")]
    assert setup and all(command in ci for command in setup) and commands["tests"] in ci


def test_main_job_passes_with_progress_on_stderr_and_no_noise(walk):
    main = walk.main
    assert main.returncode == 0, main.stdout[-3000:] + main.stderr[-3000:]
    assert "Exporting ResNet50" in main.stderr and "Converting ResNet50 to onnx-int8" in main.stderr
    assert "parity: openvino-int8" in main.stderr
    assert not NOISE.search(main.stdout + main.stderr), NOISE.search(main.stdout + main.stderr).group(0)
    assert "Exporting" not in main.stdout and "Converting" not in main.stdout  # stdout: the report only
    assert (walk.cache / "models").is_dir(), "the default cache is ~/.cache/ppdeploy"


def test_the_report_explains_itself(walk):
    report = walk.main.stdout
    assert "openvino-int8" in report and "PASS" in report
    int8_row = next(line for line in report.splitlines() if "openvino-int8" in line)
    assert "runs as f32" not in int8_row
    if "max rel" in report:  # a relative error near 1 on a PASS row needs its explanation in the report itself
        assert re.search(r"max rel[^\n]*(probabilit|near zero|tiny|below)", report, re.IGNORECASE), report[-2000:]
    assert "judge" in report and "synthetic" in (report + walk.main.stderr)


def test_samples_then_run_classify_every_photo_and_json_is_clean(walk):
    first, _, second = walk.commands["try"].partition("&&")
    made = walk.run(first.strip())
    assert made.returncode == 0, made.stderr
    photos = sorted(p for p in (walk.work / "photos").iterdir() if p.is_file())
    assert photos
    ran = walk.run(second.strip())
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert not NOISE.search(ran.stdout + ran.stderr)
    as_json = walk.run(second.strip() + " --json")
    records = [json.loads(line) for line in as_json.stdout.splitlines()]  # every stdout line is a JSON record
    assert sorted(Path(r["filename"]).name for r in records) == [p.name for p in photos]
    assert all(r.get("class_ids") for r in records)


def test_quiet_leaves_stderr_empty_on_success(walk):
    quiet = walk.run("deploy run --images photos/ --synthetic --json --quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "" and quiet.stdout.strip()


def test_the_test_command_leaves_the_filled_cache_byte_identical(walk):
    """The data-loss case: with PPDEPLOY_HOME exported at the cache the walk filled, a zoo parity test that frees
    ResNet50's entries (as the suite does after each model) runs; the user's cache must not change at all."""
    assert any(walk.cache.glob("artifacts/*ResNet50*/openvino/manifest.json")), "the main job cached ResNet50"
    before = _tree(walk.cache)
    walk.env["PPDEPLOY_HOME"] = str(walk.cache)
    try:
        selection = " -p no:cacheprovider tests/test_zoo_parity.py -k 'test_zoo_fp32 and ResNet50-json'"
        done = walk.run(walk.commands["tests"] + selection, cwd=ROOT)
    finally:
        del walk.env["PPDEPLOY_HOME"]
    assert done.returncode == 0 and " passed" in done.stdout, done.stdout[-2000:]
    assert _tree(walk.cache) == before


def test_nothing_is_left_in_tmpdir(walk):
    left = [p.name for p in walk.tmp.iterdir() if p.name.startswith(("ppdeploy", "tmp"))]
    assert not left, left
