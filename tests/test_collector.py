from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from ispd.collector import collection_paused


@pytest.fixture
def collection_restored() -> Iterator[None]:
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_collection_comes_back_when_the_last_of_overlapping_pauses_ends(collection_restored: None) -> None:
    gc.enable()
    first_in = threading.Event()
    release = threading.Event()
    seen: list[bool] = []

    def build() -> None:
        with collection_paused():
            first_in.set()
            release.wait(5)
            seen.append(gc.isenabled())

    thread = threading.Thread(target=build)
    thread.start()
    assert first_in.wait(5)
    with collection_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the thread's pause is still under way
    release.set()
    thread.join(5)
    assert seen == [False] and gc.isenabled()


def test_a_pause_leaves_collection_off_if_it_was_off(collection_restored: None) -> None:
    gc.disable()
    with collection_paused():
        pass
    assert not gc.isenabled()
    gc.enable()
    with pytest.raises(ValueError), collection_paused():
        raise ValueError("the build failed")
    assert gc.isenabled()
