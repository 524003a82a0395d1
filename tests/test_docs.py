"""The README and --help texts keep up with the code."""

from __future__ import annotations

import re
import subprocess
import sys

import click
import pytest
from conftest import ROOT

from slimmer.cli import main
from slimmer.errors import SlimmerError

README = (ROOT / "README.md").read_text()
SOURCES = [name for name in ("slimmer", "tests", "bench") if (ROOT / name).is_dir()]


def commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        path = (*prefix, name)
        if isinstance(command, click.Group):
            yield from commands(command, path)
        else:
            yield path, command


@pytest.mark.parametrize("path", [" ".join(p) for p, _ in commands(main)])
def test_every_command_is_in_the_readme(path):
    assert f"slimmer {path}" in README


@pytest.mark.parametrize("path", [" ".join(p) for p, _ in commands(main)])
def test_every_command_help_has_an_example(path):
    command = dict((" ".join(p), c) for p, c in commands(main))[path]
    assert "Example" in (command.help or "")


def test_every_exit_code_is_in_the_readme():
    codes = {cls.exit_code for cls in _subclasses(SlimmerError)}
    table = re.findall(r"^\| (\d+) \|", README, flags=re.M)
    assert codes <= {int(code) for code in table}


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_readme_test_command_is_the_one_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m pytest -ra" in README and "python3 -m pytest -ra" in ci


@pytest.mark.parametrize("tool", [["check"], ["format", "--check"]])
def test_code_is_ruff_clean(tool):
    assert "slimmer" in SOURCES and "tests" in SOURCES
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *tool, *SOURCES],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
