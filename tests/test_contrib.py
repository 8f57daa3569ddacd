"""Operator assets shipped in contrib/ stay valid."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROMETHEUS = Path(__file__).resolve().parent.parent / "contrib" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not installed (apt-get install prometheus)", pytrace=False)
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=PROMETHEUS, timeout=60)


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", "ispd.rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_fire_as_intended() -> None:
    result = promtool("test", "rules", "ispd.rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
