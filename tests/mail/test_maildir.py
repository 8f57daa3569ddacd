from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from ispd.mail.maildir import SPECIAL_FOLDERS, Maildir, crlf_size, size_of, unique_name, with_crlf


def test_a_mailbox_has_the_maildir_plus_plus_layout(tmp_path: Path) -> None:
    maildir = Maildir.for_address(tmp_path, "alice@isp.example")
    assert maildir.path == tmp_path / "isp.example" / "alice"
    assert not maildir.exists()
    maildir.create()
    maildir.create()  # again: nothing changes, nothing fails
    for sub in ("cur", "new", "tmp"):
        assert (maildir.path / sub).is_dir()
    for folder in SPECIAL_FOLDERS:
        assert (maildir.path / f".{folder}" / "maildirfolder").is_file()
        assert stat.S_IMODE((maildir.path / f".{folder}").stat().st_mode) == 0o700
    assert maildir.folders() == sorted(SPECIAL_FOLDERS)
    assert (maildir.path / "subscriptions").read_text().split() == list(SPECIAL_FOLDERS)
    assert stat.S_IMODE(maildir.path.stat().st_mode) == 0o700


def test_delivery_lands_in_new_with_lf_line_ends_and_sizes_in_the_name(tmp_path: Path) -> None:
    maildir = Maildir(tmp_path / "m")
    maildir.create()
    message = b"Subject: hi\r\n\r\n\xc3\xa9t\xc3\xa9\r\n.dot\r\n"
    delivered = maildir.deliver(message, now=1796411197.25)
    assert os.listdir(maildir.path / "tmp") == []
    path = maildir.path / "new" / delivered.name
    assert path.read_bytes() == b"Subject: hi\n\n\xc3\xa9t\xc3\xa9\n.dot\n"
    assert delivered.size == path.stat().st_size == 24
    assert delivered.virtual_size == len(message)
    assert delivered.name.startswith("1796411197.M250000P")
    assert delivered.name.endswith(f",S={delivered.size},W={delivered.virtual_size}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_size_in_the_name_is_what_imap_serves_with_a_cr_before_a_line_end(tmp_path: Path) -> None:
    """From a bug hunt: a CR before a line's CRLF (a bare CR, which some senders still put
    there) stays as CR LF on disk; its W= counted the LF's CR again, so RFC822.SIZE was one
    more than the BODY[] served (FETCH reads the file with ``with_crlf``)."""
    maildir = Maildir(tmp_path / "m")
    maildir.create()
    delivered = maildir.deliver(b"Subject: cr\r\n\r\nbare\rcr and \r\r\n end\r\n")
    served = with_crlf((maildir.path / "new" / delivered.name).read_bytes())
    assert delivered.virtual_size == len(served) == crlf_size(served)


def test_names_are_unique_across_threads(tmp_path: Path) -> None:
    maildir = Maildir(tmp_path / "m")
    maildir.create()

    def deliver_many() -> None:
        for _ in range(50):
            maildir.deliver(b"x\r\n", now=1.0)

    threads = [threading.Thread(target=deliver_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(os.listdir(maildir.path / "new")) == 200
    assert maildir.usage().messages == 200 and maildir.usage().bytes == 400


def test_usage_counts_every_folder_and_survives_a_lost_or_corrupt_maildirsize(tmp_path: Path) -> None:
    maildir = Maildir(tmp_path / "m")
    maildir.create()
    maildir.deliver(b"a" * 100)
    maildir.deliver(b"b" * 50, folder="Archive")
    assert (maildir.usage().bytes, maildir.usage().messages) == (150, 2)
    # A client moved a message to cur/ with flags, and another tool dropped one in without S=.
    name = os.listdir(maildir.path / "new")[0]
    os.rename(maildir.path / "new" / name, maildir.path / "cur" / f"{name}:2,S")
    (maildir.path / ".Sent" / "cur" / "123.abc.host:2,S").write_bytes(b"c" * 30)
    (maildir.path / "maildirsize").unlink()
    assert (maildir.usage().bytes, maildir.usage().messages) == (180, 3)
    (maildir.path / "maildirsize").write_text("0S\nnot numbers\n")
    assert maildir.usage().bytes == 180
    assert (maildir.path / "maildirsize").read_text() == "0S\n180 3\n"


def test_a_maildir_whose_empty_tmp_was_lost_still_counts_and_takes_mail(tmp_path: Path) -> None:
    """A backup or copy that skipped empty directories drops tmp/: the quota recount (`ispd
    mailbox quota`, the admin API) crashed with FileNotFoundError, and so did a delivery to a
    folder (IMAP APPEND) that nothing had made whole again."""
    maildir = Maildir(tmp_path / "m")
    maildir.create()
    maildir.deliver(b"a" * 100)
    (maildir.path / "maildirsize").unlink()
    (maildir.path / "tmp").rmdir()
    assert (maildir.usage().bytes, maildir.usage().messages) == (100, 1)
    assert (maildir.path / "maildirsize").read_text() == "0S\n100 1\n"
    (maildir.path / ".Archive" / "tmp").rmdir()
    maildir.deliver(b"b" * 50, folder="Archive")
    assert (maildir.usage().bytes, maildir.usage().messages) == (150, 2)
    assert stat.S_IMODE((maildir.path / ".Archive" / "tmp").stat().st_mode) == 0o700
    # A folder that is gone is not made again by a delivery to it.
    with pytest.raises(FileNotFoundError):
        maildir.deliver(b"c", folder="Nowhere")
    assert not (maildir.path / ".Nowhere").exists()


def test_maildirsize_is_recomputed_when_it_grows_past_5120_bytes(tmp_path: Path) -> None:
    maildir = Maildir(tmp_path / "m")
    maildir.create()
    for _ in range(600):
        maildir.deliver(b"x" * 10)
    assert (maildir.path / "maildirsize").stat().st_size <= 5120
    assert maildir.usage().bytes == 6000 and maildir.usage().messages == 600


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    maildir = Maildir(tmp_path / "m")
    maildir.create()

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        maildir.deliver(b"x\r\n")
    monkeypatch.undo()
    assert os.listdir(maildir.path / "tmp") == [] and os.listdir(maildir.path / "new") == []
    assert maildir.usage().messages == 0


@pytest.mark.parametrize(("name", "size"), [
    ("1.M1P1Q1.h,S=42,W=44", 42),
    ("1.M1P1Q1.h,S=42,W=44:2,RS", 42),
    ("1.M1P1Q1.h:2,S", None),  # the S flag is not a size
    ("1.M1P1Q1.h,S=x", None),
])
def test_size_of_reads_the_s_field(name: str, size: int | None) -> None:
    assert size_of(name) == size


def test_unique_name_escapes_nothing_it_should_not() -> None:
    name = unique_name(3, 4, now=5.5)
    assert name.startswith("5.M500000P") and "/" not in name and ":" not in name


def test_a_mailboxs_lock_goes_when_nothing_uses_it_and_stays_while_something_does(tmp_path: Path) -> None:
    """From a soak review: a lock per mailbox ever delivered to, never dropped."""
    from ispd.mail import maildir

    before = len(maildir._MAILBOX_LOCKS._locks)
    for n in range(20):
        Maildir(tmp_path / f"gone{n}")
    assert len(maildir._MAILBOX_LOCKS._locks) == before
    kept = Maildir(tmp_path / "kept")
    with kept._lock:
        assert Maildir(tmp_path / "kept")._lock is kept._lock


def test_a_maildir_whose_empty_new_was_lost_still_takes_mail(tmp_path: Path) -> None:
    """new/ is as often empty as tmp/ (a client moves what it reads to cur/), and a copy that
    skips empty directories drops it while keeping a tmp/ with a leftover in it: the delivery
    wrote its file in tmp/ and then failed to link it into new/, for every message, for good."""
    maildir = Maildir(tmp_path / "m")
    maildir.create()
    (maildir.path / "tmp" / "leftover").write_bytes(b"x")
    (maildir.path / "new").rmdir()
    maildir.deliver(b"a" * 100)
    assert [p.stat().st_size for p in (maildir.path / "new").iterdir()] == [100]
    assert stat.S_IMODE((maildir.path / "new").stat().st_mode) == 0o700
    assert (maildir.usage().bytes, maildir.usage().messages) == (100, 1)
    assert sorted(p.name for p in (maildir.path / "tmp").iterdir()) == ["leftover"]


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From the disk-full hunt: a delivery to a full disk was logged as "[Errno 28] No space
    left on device" (a write() error carries no file name), which does not say which disk."""
    maildir = Maildir.for_address(tmp_path, "alice@isp.example")
    maildir.create()

    def full(fd: int, data: object) -> int:
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError) as raised:
        maildir.deliver(b"Subject: x\r\n\r\nbody\r\n")
    assert raised.value.errno == 28
    assert str(raised.value).startswith(f"[Errno 28] No space left on device: '{maildir.path}/tmp/")


def test_dovecots_version_2_subscriptions_file_is_read(tmp_path: Path) -> None:
    """Dovecot 2.3 wrote this file (V<TAB>2, an empty line, levels split by TABs): ispd took
    "V\\t2" and "Tree\\tLeaf" for folder names, so Tree.Leaf was not subscribed after a move
    from Dovecot (and LSUB named two folders that are none)."""
    maildir = Maildir.for_address(tmp_path, "alice@isp.example")
    maildir.create()
    (maildir.path / "subscriptions").write_text("V\t2\n\nTree\tLeaf\nINBOX\nWith Space\n")
    assert maildir.subscriptions() == ["Tree.Leaf", "INBOX", "With Space"]
    maildir.set_subscribed("Sent", True)
    assert maildir.subscriptions() == ["Tree.Leaf", "INBOX", "With Space", "Sent"]
    assert (maildir.path / "subscriptions").read_text() == "Tree.Leaf\nINBOX\nWith Space\nSent\n"
