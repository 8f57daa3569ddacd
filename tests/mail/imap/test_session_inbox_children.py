"""Folders made as inbox.x by an older ispd, and subscriptions of folders that are gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from ispd.mail.maildir import Maildir
from tests.mail.imap.test_session_failures import run_commands


@pytest.fixture()
def maildir(tmp_path: Path) -> Maildir:
    maildir = Maildir.for_address(tmp_path, "alice@isp.example")
    maildir.create()
    return maildir


@pytest.mark.parametrize("name", ["inbox.old", "INBOX.old", "Inbox.old"])
def test_a_folder_made_as_inbox_x_before_is_not_made_again_beside_it(maildir: Maildir, name: str) -> None:
    """CREATE made .INBOX.old beside .inbox.old, which no name reached any more: its mail was lost."""
    maildir.create_folder("inbox.old")
    maildir.deliver(b"Subject: kept\r\n\r\nbody\r\n", folder="inbox.old")
    answer = run_commands(maildir, ["LOGIN alice@isp.example secret", f"CREATE {name}"], lambda: None)
    assert answer == b"t1 NO [ALREADYEXISTS] mailbox exists\r\n"
    assert "INBOX.old" not in maildir.folders()
    selected = run_commands(maildir, ["LOGIN alice@isp.example secret", f"SELECT {name}"], lambda: None)
    assert b"* 1 EXISTS" in selected, selected


def test_a_folder_renamed_to_the_name_of_one_made_as_inbox_x_is_refused(maildir: Maildir) -> None:
    maildir.create_folder("inbox.old")
    answer = run_commands(maildir, ["LOGIN alice@isp.example secret", "CREATE Other", "RENAME Other INBOX.old"],
                          lambda: None)
    assert answer == b"t2 NO [ALREADYEXISTS] mailbox exists\r\n"
    assert "INBOX.old" not in maildir.folders()


def test_a_folder_made_as_inbox_x_before_is_listed_below_the_inbox(maildir: Maildir) -> None:
    """The INBOX is listed \\HasChildren for it: a client walking the tree asks for INBOX.%."""
    maildir.create_folder("inbox.old")
    answer = run_commands(maildir, ["LOGIN alice@isp.example secret", 'LIST "" "INBOX.%"'], lambda: None)
    assert answer == b'* LIST (\\HasNoChildren) "." "inbox.old"\r\nt1 OK LIST completed\r\n'


def test_a_subscription_to_a_gone_inbox_x_folder_can_be_removed(maildir: Maildir) -> None:
    """An older ispd kept "inbox.old" as it was written; LSUB names it, and UNSUBSCRIBE by that
    name must remove it (it removed "INBOX.old" instead, so it stayed for ever)."""
    (maildir.path / "subscriptions").write_text("inbox.old\n")
    answer = run_commands(maildir, ["LOGIN alice@isp.example secret", "UNSUBSCRIBE inbox.old", 'LSUB "" "*"'],
                          lambda: None)
    assert b"inbox.old" not in answer, answer
    assert maildir.subscriptions() == []


def test_lsub_marks_a_subscription_whose_folder_is_gone_noselect(maildir: Maildir) -> None:
    """Dovecot 2.3's LSUB turns \\NonExistent into \\Noselect (it has no \\NonExistent): LSUB ()
    says the name can be selected, and a client that SELECTs it gets NO."""
    answer = run_commands(maildir, ["LOGIN alice@isp.example secret", "CREATE Gone", "SUBSCRIBE Gone",
                                    "DELETE Gone", 'LSUB "" "*"'], lambda: None)
    assert b'* LSUB (\\Noselect) "." "Gone"' in answer.split(b"\r\n"), answer
