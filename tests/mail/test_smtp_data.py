from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from ispd.mail.smtp import has_long_line

_RUN = re.compile(rb"[^\r\n]{1000}")  # the rule, written as the slow regex it replaced


@given(st.lists(st.tuples(st.integers(0, 1100), st.sampled_from([b"\r\n", b"\n", b"\r", b""])), max_size=12))
def test_long_lines_are_found_as_the_rule_says(lines: list[tuple[int, bytes]]) -> None:
    body = b"".join(b"x" * length + end for length, end in lines)
    assert has_long_line(body) == bool(_RUN.search(body))


def test_a_line_across_the_slices_is_measured_whole() -> None:
    body = (b"y" * 98 + b"\r\n") * 650 + b"z" * 700 + b"w" * 300 + b"\r\n"  # 65 000 octets, then the line
    assert 65_000 < 64 * 1024 < 65_700  # the first slice ends inside the long line
    assert has_long_line(body)  # 1 000 octets, split between two slices
    assert not has_long_line(body.replace(b"w" * 300, b"w" * 299))
    assert has_long_line(b"q" * 200_000) and not has_long_line(b"")
