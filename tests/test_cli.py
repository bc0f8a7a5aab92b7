"""`fairdiff`: every stage is reachable and documents itself."""

import subprocess
import sys

import pytest

from fairdiffusion.cli import STAGES


def fairdiff(*args):
    return subprocess.run([sys.executable, "-m", "fairdiffusion.cli", *args],
                          capture_output=True, text=True)


def test_help_lists_every_stage():
    out = fairdiff("--help")
    assert out.returncode == 0
    for stage in STAGES:
        assert stage in out.stdout


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_help(stage):
    out = fairdiff(stage, "--help")
    assert out.returncode == 0, out.stderr
    assert "--" in out.stdout  # documents at least one option
