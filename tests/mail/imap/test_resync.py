from __future__ import annotations

import pytest

from ispd.mail.imap.parser import SequenceSet
from ispd.mail.imap.session import uid_set, vanished


def test_uid_sets_are_compact() -> None:
    assert uid_set([1, 2, 3, 7, 9, 10]) == b"1:3,7,9:10"
    assert uid_set([4]) == b"4" and uid_set([]) == b""


@pytest.mark.parametrize(("known", "present", "top", "expected"), [
    (((1, None),), [2, 4, 5], 7, b"1,3,6:7"),
    (((1, 4),), [1, 2, 3, 4], 9, b""),
    (((5, 3), (8, 8)), [4], 9, b"3,5,8"),  # ranges in either order; "*" is the highest UID given
    (((1, 4294967295),), [2], 3, b"1,3"),  # never walks past the highest UID ever given
    (((None, None),), [], 6, b"6"),
    (((1, 3), (2, 5)), [], 9, b"1:5"),  # overlapping ranges merged
])
def test_vanished_names_the_gaps(known: tuple[tuple[int | None, int | None], ...], present: list[int], top: int,
                                 expected: bytes) -> None:
    assert vanished(SequenceSet(known), present, top) == expected
