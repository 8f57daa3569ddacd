"""LIST with RFC 5258 options: the SPECIAL-USE selection (RFC 6154 §2) lists only the special-use
folders, SUBSCRIBED only the subscribed ones, marked \\Subscribed; an option ispd does not
implement is BAD rather than ignored (an ignored one answers with every folder)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ispd.mail.maildir import Maildir
from tests.mail.imap.test_session_failures import run_commands


@pytest.fixture()
def maildir(tmp_path: Path) -> Maildir:
    maildir = Maildir.for_address(tmp_path, "alice@isp.example")
    maildir.create()
    return maildir


def listed(maildir: Maildir, command: str) -> list[bytes]:
    answer = run_commands(maildir, ["LOGIN alice@isp.example secret", "CREATE Projects", "CREATE A.B",
                                    "UNSUBSCRIBE Junk", command], lambda: None)
    return [line for line in answer.split(b"\r\n") if line]


def test_the_special_use_selection_lists_only_the_special_use_folders(maildir: Maildir) -> None:
    assert listed(maildir, 'LIST (SPECIAL-USE) "" "*"') == [
        b'* LIST (\\HasNoChildren \\Archive) "." "Archive"', b'* LIST (\\HasNoChildren \\Drafts) "." "Drafts"',
        b'* LIST (\\HasNoChildren \\Junk) "." "Junk"', b'* LIST (\\HasNoChildren \\Sent) "." "Sent"',
        b'* LIST (\\HasNoChildren \\Trash) "." "Trash"', b"t4 OK LIST completed"]


def test_the_subscribed_selection_lists_only_subscribed_folders_marked_so(maildir: Maildir) -> None:
    lines = listed(maildir, 'LIST (SUBSCRIBED) "" "*"')
    assert b'* LIST (\\HasNoChildren \\Subscribed) "." "INBOX"' in lines
    assert b'* LIST (\\HasNoChildren \\Sent \\Subscribed) "." "Sent"' in lines
    assert not any(b'"Junk"' in line or b'"Projects"' in line or b'"A.B"' in line for line in lines), lines
    everything = listed(maildir, 'LIST "" "*" RETURN (SUBSCRIBED)')
    assert b'* LIST (\\HasNoChildren \\Junk) "." "Junk"' in everything
    assert b'* LIST (\\HasNoChildren \\Trash \\Subscribed) "." "Trash"' in everything


@pytest.mark.parametrize("command", ['LIST (REMOTE) "" "*"', 'LIST (SUBSCRIBED RECURSIVEMATCH) "" "*"',
                                     'LIST "" "*" RETURN (MYRIGHTS)'])
def test_an_option_not_implemented_is_bad(maildir: Maildir, command: str) -> None:
    assert listed(maildir, command)[-1].startswith(b"t4 BAD LIST option ")


def test_a_plain_list_is_unchanged(maildir: Maildir) -> None:
    lines = listed(maildir, 'LIST "" "*"')
    assert b'* LIST (\\Noselect \\HasChildren) "." "A"' in lines and b'* LIST (\\HasNoChildren) "." "Projects"' in lines
    assert not any(b"\\Subscribed" in line for line in lines)


def test_a_pattern_of_many_wildcards_is_answered_at_once(maildir: Maildir) -> None:
    """The pattern was a regular expression that backtracked: with a folder named with 80 a's,
    LIST "" "*a*a*a*a*a*a*b" took 29 s in the daemon's event loop (every client of every
    service waited), and each '*' more multiplied that."""
    folder = b"a" * 70

    def lines(pattern: str) -> list[bytes]:
        answer = run_commands(maildir, ["LOGIN alice@isp.example secret", "CREATE " + folder.decode(),
                                        f'LIST "" "{pattern}"'], lambda: None)
        return [line for line in answer.split(b"\r\n") if line]

    started = time.perf_counter()
    assert lines("*a" * 6 + "*b") == [b"t2 OK LIST completed"]
    assert time.perf_counter() - started < 2
    assert lines("%a" * 6 + "%") == [b'* LIST (\\HasNoChildren) "." "' + folder + b'"', b"t2 OK LIST completed"]
    assert lines("inbox") == [b'* LIST (\\HasNoChildren) "." "INBOX"', b"t2 OK LIST completed"]
    assert lines("A%.%") == [b"t2 OK LIST completed"]


def test_a_subscription_outlives_its_folder(maildir: Maildir) -> None:
    """RFC 3501 §6.3.9: the server does not drop a subscription when the folder goes; LSUB names
    it still (\\Noselect), LIST (SUBSCRIBED) marks it \\NonExistent (RFC 5258 §3.1), as Dovecot does. They
    hid it, and a client could never see (or unsubscribe) what it was subscribed to."""
    def lines(command: str) -> list[bytes]:
        answer = run_commands(maildir, ["LOGIN alice@isp.example secret", "CREATE Gone", "SUBSCRIBE Gone",
                                        "DELETE Gone", command], lambda: None)
        return [line for line in answer.split(b"\r\n") if line]

    assert b'* LSUB (\\Noselect) "." "Gone"' in lines('LSUB "" "*"')
    assert b'* LIST (\\NonExistent \\Subscribed) "." "Gone"' in lines('LIST (SUBSCRIBED) "" "*"')
    assert not any(b'"Gone"' in line for line in lines('LIST "" "*"'))
    assert not any(b'"Gone"' in line for line in lines('LIST (SPECIAL-USE) "" "*"'))


def test_subscribing_to_a_folder_that_does_not_exist_is_refused(maildir: Maildir) -> None:
    """It was answered OK and then never listed anywhere (Dovecot: NO Mailbox doesn't exist);
    UNSUBSCRIBE of a name whose folder is gone still works, to clean it up."""
    assert listed(maildir, "SUBSCRIBE Nothere") == [b"t4 NO [NONEXISTENT] no such mailbox"]
    answer = run_commands(maildir, ["LOGIN alice@isp.example secret", "CREATE Gone", "SUBSCRIBE Gone", "DELETE Gone",
                                    "UNSUBSCRIBE Gone", 'LSUB "" "*"'], lambda: None)
    assert b'"Gone"' not in answer and answer.endswith(b"t5 OK LSUB completed\r\n")


def test_a_folder_below_the_inbox_is_its_child_however_inbox_is_spelt(maildir: Maildir) -> None:
    """RFC 3501 §5.1: INBOX is case-insensitive, so "inbox.Sub" is INBOX.Sub, and the INBOX has
    children (Dovecot: INBOX \\HasChildren, INBOX.Sub). It was a folder named "inbox.Sub" beside
    an INBOX listed \\HasNoChildren, so clients showed no subfolder under the INBOX."""
    answer = run_commands(maildir, ["LOGIN alice@isp.example secret", "CREATE inbox.Sub", "SELECT Inbox.Sub"],
                          lambda: None)
    assert (maildir.folder_path("INBOX.Sub") / "cur").is_dir()
    assert answer.endswith(b"t2 OK [READ-WRITE] SELECT completed\r\n")
    full = run_commands(maildir, ["LOGIN alice@isp.example secret", 'LIST "" "*"'], lambda: None).split(b"\r\n")
    assert b'* LIST (\\HasChildren) "." "INBOX"' in full and b'* LIST (\\HasNoChildren) "." "INBOX.Sub"' in full
    below = run_commands(maildir, ["LOGIN alice@isp.example secret", 'LIST "" "inbox.%"'], lambda: None)
    assert below == b'* LIST (\\HasNoChildren) "." "INBOX.Sub"\r\nt1 OK LIST completed\r\n'


def test_a_folder_cannot_be_renamed_under_itself(maildir: Maildir) -> None:
    """RENAME r.q r.q.s was accepted and left r.q an empty \\Noselect level above the folder
    (with r.q.x it made r.q.s.x); Dovecot: NO Can't rename mailbox under its own child."""
    answer = run_commands(maildir, ["LOGIN alice@isp.example secret", "CREATE r.q", "CREATE r.q.x", "RENAME r.q r.q.s"],
                          lambda: None)
    assert answer == b"t3 NO [CANNOT] cannot rename a mailbox under itself\r\n"
    assert sorted(maildir.folders())[-2:] == ["r.q", "r.q.x"]


def test_renaming_a_folder_that_does_not_exist_says_so(maildir: Maildir) -> None:
    """It was NO [CANNOT] "the INBOX, or a bad name", for a good name of no folder (Dovecot:
    NO [NONEXISTENT]); the INBOX and bad names still get [CANNOT]."""
    assert listed(maildir, "RENAME Nothere Elsewhere") == [b"t4 NO [NONEXISTENT] no such mailbox"]
    assert listed(maildir, "RENAME INBOX Elsewhere")[0].startswith(b"t4 NO [CANNOT]")
    assert listed(maildir, "RENAME Projects a..b")[0].startswith(b"t4 NO [CANNOT]")


def test_a_folder_made_as_inbox_x_before_is_still_reached_and_subscribed_by_that_name(maildir: Maildir) -> None:
    maildir.create_folder("inbox.old")
    answer = run_commands(maildir, ["LOGIN alice@isp.example secret", "SUBSCRIBE inbox.old", 'LSUB "" "*"',
                                    "SELECT inbox.old"], lambda: None, before=0)
    assert answer.endswith(b"t3 OK [READ-WRITE] SELECT completed\r\n")
    assert "inbox.old" in maildir.subscriptions()
    lines = run_commands(maildir, ["LOGIN alice@isp.example secret", 'LSUB "" "*"'], lambda: None).split(b"\r\n")
    assert b'* LSUB () "." "inbox.old"' in lines


def test_the_inbox_in_a_subscriptions_file_is_the_inbox(maildir: Maildir) -> None:
    """Dovecot writes INBOX into the subscriptions file: a mailbox moved from it must not list
    the INBOX twice, once \\NonExistent."""
    (maildir.path / "subscriptions").write_text("INBOX\nSent\n")
    lines = listed(maildir, 'LIST (SUBSCRIBED) "" "*"')
    assert [line for line in lines if line.endswith(b'"INBOX"')] == [b'* LIST (\\HasNoChildren \\Subscribed) "." "INBOX"']
    assert not any(b"NonExistent" in line for line in lines), lines
    assert [line for line in listed(maildir, 'LSUB "" "*"') if b"INBOX" in line] == [b'* LSUB () "." "INBOX"']
