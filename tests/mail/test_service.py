"""MailService's own tables, on a stand-in for the service (its constructor wants a whole store)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from ispd.mail.service import MailService


class IdlingSession:
    def __init__(self, maildir: Path, folder: str = "") -> None:
        self.maildir = SimpleNamespace(path=maildir)
        self.selected = SimpleNamespace(folder=folder)


def test_a_folder_nobody_idles_in_any_more_leaves_the_idle_table() -> None:
    """From a soak review: the table kept a key for every folder anyone ever idled in."""
    service = SimpleNamespace(_idlers={})
    sessions = [IdlingSession(Path(f"/mail/isp.example/user{n}")) for n in range(2)]
    shared = IdlingSession(Path("/mail/isp.example/user0"))
    for session in [*sessions, shared]:
        MailService.watch_imap(service, session)  # type: ignore[arg-type]
    MailService.unwatch_imap(service, sessions[0])  # type: ignore[arg-type]
    assert service._idlers == {(Path("/mail/isp.example/user0"), ""): {shared},
                               (Path("/mail/isp.example/user1"), ""): {sessions[1]}}
    MailService.unwatch_imap(service, sessions[1])  # type: ignore[arg-type]
    MailService.unwatch_imap(service, shared)  # type: ignore[arg-type]
    assert service._idlers == {}
