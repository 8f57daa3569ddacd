from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netns import Lab, lab
from tests.lab.process import IspdProcess, base_config


@pytest.fixture
def ispd(tmp_path: Path) -> Iterator[IspdProcess]:
    """A running ispd with its own store and metrics port; killed at the end if still up."""
    with IspdProcess(tmp_path, base_config(tmp_path)) as process:
        process.start()
        yield process


@pytest.fixture
def netlab() -> Iterator[Lab]:
    with lab() as built:
        yield built
