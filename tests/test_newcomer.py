"""What a newcomer meets first: the README's test command never touches their cache, and help explains itself."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path → sha256 and mode): byte-identical means equal dicts."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_tests_never_touch_an_exported_ppdeploy_home(tmp_path):
    """A user with PPDEPLOY_HOME exported runs the README's test command: their cache is byte-identical afterwards
    and the session's own temporary home is gone (a test that exports ResNet18 into "the cache" stands in for the
    suite)."""
    home = tmp_path / "user-cache"
    (home / "models" / "ResNet18-synthetic-r3-json").mkdir(parents=True)
    (home / "models" / "ResNet18-synthetic-r3-json" / "inference.json").write_text('{"mine": true}')
    (home / "artifacts" / "mine" / "onnx").mkdir(parents=True)
    (home / "artifacts" / "mine" / "onnx" / "manifest.json").write_text("{}")
    before = _tree(home)
    scratch = Path(tempfile.gettempdir())
    homes_before = set(scratch.glob("ppdeploy-test-home-*"))
    env = {**os.environ, "PPDEPLOY_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_parity.py::test_report_names_every_set_and_finds_no_overlap_on_builtin_sets"],
                          cwd=Path(__file__).parents[1], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:]
    assert _tree(home) == before
    assert set(scratch.glob("ppdeploy-test-home-*")) <= homes_before, "the session's own home must be removed"


COMMANDS_WITH_EXAMPLES = ("run", "convert", "parity", "bench", "serve", "samples", "optimize")


def test_every_option_of_every_command_has_a_description():
    import typer

    from ppdeploy.cli import app

    group = typer.main.get_command(app)
    missing = [f"{name} {param.opts[0]}" for name, command in group.commands.items() for param in command.params
               if param.opts and param.opts[0].startswith("-") and not getattr(param, "help", None)]
    assert not missing, missing


@pytest.mark.parametrize("command", COMMANDS_WITH_EXAMPLES)
def test_help_shows_an_example(command):
    done = subprocess.run([sys.executable, "-m", "ppdeploy.cli", command, "--help"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0
    description = done.stdout.split("Usage:", 1)[1].split("Options")[0]
    assert "Example" in description and f"deploy {command} " in description.split("Example", 1)[1]
