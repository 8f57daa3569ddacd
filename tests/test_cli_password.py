"""How `ispd subscriber passwd` (and `add --password-stdin`) read a new password."""

from __future__ import annotations

import argparse
import getpass
import sys

import pytest

from ispd.cli import CommandFailed, read_new_password


def prompted(monkeypatch: pytest.MonkeyPatch, *answers: str | None) -> argparse.Namespace:
    """read_new_password at a terminal whose operator types ``answers`` (None: Ctrl-D)."""
    pending = list(answers)

    def fake_getpass(prompt: str = "") -> str:
        answer = pending.pop(0)
        if answer is None:
            raise EOFError  # what getpass raises on Ctrl-D
        return answer

    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    args = argparse.Namespace(generate_password=False, password_stdin=False)
    read_new_password(args)
    return args


def test_a_password_typed_twice_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    assert prompted(monkeypatch, "n3w-pass-1", "n3w-pass-1").new_password == "n3w-pass-1"
    with pytest.raises(CommandFailed, match="the passwords differ"):
        prompted(monkeypatch, "n3w-pass-1", "n3w-pass-2")


@pytest.mark.parametrize("answers", [(None,), ("n3w-pass-1", None)])
def test_ctrl_d_at_the_prompt_is_no_password_not_an_unexpected_error(
        monkeypatch: pytest.MonkeyPatch, answers: tuple[str | None, ...]) -> None:
    """From a newcomer's first hour: Ctrl-D at "New password:" printed 'ispd: unexpected error:
    EOFError:  (set ISPD_TRACEBACK=1 for details)', the message kept for bugs."""
    with pytest.raises(CommandFailed, match=r"^no password given \(end of input at the prompt\)$"):
        prompted(monkeypatch, *answers)
