from __future__ import annotations

import builtins
import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest

from ispd.mail import mailindex
from ispd.mail.maildir import Maildir, with_crlf
from ispd.mail.mailindex import FolderIndex, TooManyKeywords, flags_in_name, forget, uid_in_name


@pytest.fixture
def maildir(tmp_path: Path) -> Maildir:
    box = Maildir(tmp_path / "alice")
    box.create()
    return box


def deliver(maildir: Maildir, text: str, at: float, folder: str = "") -> None:
    maildir.deliver(f"Subject: {text}\r\n\r\n{text}\r\n".encode(), folder=folder, now=at)


def subjects(maildir: Maildir, state: object, folder: str = "") -> list[str]:
    cur = maildir.folder_path(folder) / "cur"
    return [(cur / m.name).read_text().split("\n")[0] for m in state.messages]  # type: ignore[attr-defined]


def test_delivered_mail_gets_uids_in_delivery_order_and_moves_to_cur(maildir: Maildir) -> None:
    for index, at in enumerate((100.0, 50.0, 75.0)):
        deliver(maildir, f"m{index}", at)
    index = FolderIndex(maildir.path)
    state = index.sync()
    assert [m.uid for m in state.messages] == [1, 2, 3] and state.next_uid == 4
    assert subjects(maildir, state) == ["Subject: m1", "Subject: m2", "Subject: m0"]
    assert all(m.recent for m in state.messages) and os.listdir(maildir.path / "new") == []
    assert all(uid_in_name(m.name) == m.uid and m.name.endswith(":2,") for m in state.messages)
    assert state.messages[0].virtual_size == len(b"Subject: m1\r\n\r\nm1\r\n")
    again = index.sync()
    assert [m.uid for m in again.messages] == [1, 2, 3] and not any(m.recent for m in again.messages)
    assert again.uidvalidity == state.uidvalidity


def test_flags_are_one_rename_and_survive_a_sync(maildir: Maildir) -> None:
    deliver(maildir, "x", 1.0)
    index = FolderIndex(maildir.path)
    message = index.sync().messages[0]
    flagged = index.set_flags([message.uid], "=", "SF?x").messages[1]  # x: a keyword's letter
    assert flagged.flags == "FSx" and flagged.name.endswith(":2,FSx")
    assert [(m.uid, m.flags) for m in index.sync().messages] == [(1, "FSx")]


def test_a_lost_uidlist_is_rebuilt_with_the_same_uids_and_uidvalidity(maildir: Maildir) -> None:
    for n in range(4):
        deliver(maildir, f"m{n}", float(n))
    index = FolderIndex(maildir.path)
    before = index.sync()
    # Expunge the highest UID, then lose the index: UID 4 must never come back.
    os.unlink(maildir.path / "cur" / before.messages[-1].name)
    (maildir.path / "ispd-uidlist").unlink()
    deliver(maildir, "later", 10.0)
    after = index.sync()
    assert after.uidvalidity == before.uidvalidity
    assert [m.uid for m in after.messages] == [1, 2, 3, 5]
    (maildir.path / "ispd-uidlist").write_text("garbage\n")
    assert [m.uid for m in index.sync().messages] == [1, 2, 3, 5]


def test_losing_everything_gives_a_new_uidvalidity(maildir: Maildir) -> None:
    deliver(maildir, "x", 1.0)
    index = FolderIndex(maildir.path)
    first = index.sync()
    (maildir.path / "ispd-uidlist").unlink()
    (maildir.path / "ispd-uidvalidity").write_text("V1 N2\n")  # a different validity on disk
    assert index.sync().uidvalidity == 1
    (maildir.path / "ispd-uidlist").unlink()
    (maildir.path / "ispd-uidvalidity").unlink()
    fresh = index.sync()
    assert fresh.uidvalidity not in (1, 0) and fresh.uidvalidity >= first.uidvalidity
    assert [m.uid for m in fresh.messages] == [1]  # the UID in the name still stands


def test_files_other_tools_put_in_cur_are_numbered_and_vanished_ones_dropped(maildir: Maildir) -> None:
    deliver(maildir, "a", 1.0)
    index = FolderIndex(maildir.path)
    index.sync()
    (maildir.path / "cur" / "555.foreign.host:2,S").write_bytes(b"Subject: foreign\n\nx\n")
    (maildir.path / "cur" / "556.copy.host,U=1:2,").write_bytes(b"Subject: claims uid 1\n\nx\n")
    state = index.sync()
    assert [m.uid for m in state.messages] == [1, 2, 3]
    assert {m.flags for m in state.messages} == {"", "S"}
    assert all(uid_in_name(m.name) == m.uid for m in state.messages)
    os.unlink(maildir.path / "cur" / state.messages[0].name)
    assert [m.uid for m in index.sync().messages] == [2, 3]
    assert (maildir.path / "ispd-uidlist").read_text().count("\n") == 3  # header and two lines


def test_each_folder_has_its_own_index(maildir: Maildir) -> None:
    deliver(maildir, "inbox", 1.0)
    deliver(maildir, "junk", 2.0, folder="Junk")
    assert [m.uid for m in FolderIndex(maildir.folder_path("Junk")).sync().messages] == [1]
    assert [m.uid for m in FolderIndex(maildir.path).sync().messages] == [1]


@pytest.mark.parametrize(("name", "flags"), [("1.x:2,SF", "FS"), ("1.x:2,", ""), ("1.x", ""), ("1.x:2,Sa", "Sa"), ("1.x:2,S?b", "Sb")])
def test_flags_in_name(name: str, flags: str) -> None:
    assert flags_in_name(name) == flags


def test_uids_are_reserved_durably_before_they_are_written_into_names(maildir: Maildir) -> None:
    for n in range(3):
        deliver(maildir, f"m{n}", float(n))
    index = FolderIndex(maildir.path)
    index.sync()
    # As if ispd crashed after reserving and renaming, before the uidlist was written.
    (maildir.path / "ispd-uidlist").unlink()
    assert (maildir.path / "ispd-uidvalidity").read_text().split()[1] == "N4"
    for message in list((maildir.path / "cur").iterdir()):
        if ",U=3" in message.name:
            message.unlink()  # and the highest was expunged
    deliver(maildir, "after", 9.0)
    assert [m.uid for m in index.sync().messages] == [1, 2, 4]


def _age(maildir: Maildir, at: float | None = None) -> None:
    """Directory times as if the last change were a while ago (the fast path trusts only those)."""
    past = time.time() - 10 if at is None else at
    for name in ("new", "cur", "ispd-uidlist"):
        os.utime(maildir.path / name, (past, past))


def test_an_unchanged_folder_is_answered_from_memory(maildir: Maildir, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(3):
        deliver(maildir, f"m{n}", float(n))
    index = FolderIndex(maildir.path)
    first = index.sync()
    _age(maildir)
    index.sync()  # records the aged stamp

    def no_listing(path: object) -> None:
        raise AssertionError("listed the folder although nothing changed")

    monkeypatch.setattr(os, "scandir", no_listing)
    again = index.sync()
    assert [m.uid for m in again.messages] == [m.uid for m in first.messages]
    assert not any(m.recent for m in again.messages)
    # A flag change made through the index keeps the snapshot current.
    flagged = index.set_flags([again.messages[0].uid], "+", "S").messages[1]
    assert next((m.uid, m.flags) for m in index.sync().messages) == (1, "S")
    assert flagged.name.endswith(":2,S")
    monkeypatch.undo()
    # A delivery is seen: the service forgets the snapshot, and new/ changed anyway.
    deliver(maildir, "new one", 20.0)
    assert [m.uid for m in index.sync().messages] == [1, 2, 3, 4]
    # Even one whose new/ time looks unchanged, once told of it.
    then = time.time() - 10
    _age(maildir, then)
    index.sync()
    deliver(maildir, "sneaky", 21.0)
    _age(maildir, then)  # as if in the same clock tick as the last look
    assert [m.uid for m in index.sync().messages] == [1, 2, 3, 4]  # not seen: nobody said
    forget(maildir.path)
    assert [m.uid for m in index.sync().messages] == [1, 2, 3, 4, 5]


# --- mod-sequences (CONDSTORE / QRESYNC)


def test_every_change_gets_the_next_modseq_once(maildir: Maildir) -> None:
    for n in range(3):
        deliver(maildir, f"m{n}", float(n))
    index = FolderIndex(maildir.path)
    state = index.sync()
    arrived = state.highest_modseq
    assert [m.modseq for m in state.messages] == [arrived] * 3 and state.expunged_modseq == 0
    change = index.set_flags([1, 3], "+", "S")
    assert change.changed == [1, 3] and change.highest_modseq == arrived + 1
    assert [m.modseq for m in index.sync().messages] == [arrived + 1, arrived, arrived + 1]
    # Nothing to change is no change: no new modseq.
    assert index.set_flags([1], "+", "S").changed == [] and index.sync().highest_modseq == arrived + 1
    # Removing a flag from what it is now, not from what a caller last saw.
    index.set_flags([3], "-", "S")
    assert [m.flags for m in index.sync().messages] == ["S", "", ""]
    os.unlink(maildir.path / "cur" / index.sync().messages[1].name)
    forget(maildir.path)
    after = index.sync()
    assert after.expunged_modseq == after.highest_modseq == arrived + 3


def test_unchanged_since_leaves_newer_messages_alone(maildir: Maildir) -> None:
    deliver(maildir, "a", 1.0)
    deliver(maildir, "b", 2.0)
    index = FolderIndex(maildir.path)
    seen_at = index.sync().highest_modseq
    index.set_flags([2], "+", "F")
    change = index.set_flags([1, 2], "+", "T", unchanged_since=seen_at)
    assert change.modified == [2] and change.changed == [1]
    assert [m.flags for m in index.sync().messages] == ["T", "F"]


def test_modseqs_survive_a_restart_and_a_lost_snapshot(maildir: Maildir) -> None:
    deliver(maildir, "a", 1.0)
    index = FolderIndex(maildir.path)
    index.sync()
    change = index.set_flags([1], "+", "S")
    assert (maildir.path / "ispd-modseq").exists()  # logged, not yet folded into the uidlist
    forget(maildir.path)  # as after a restart: the files are read again
    state = FolderIndex(maildir.path).sync()
    assert state.messages[0].modseq == change.highest_modseq == state.highest_modseq
    assert not (maildir.path / "ispd-modseq").exists()  # folded in by the full look


def test_a_flag_changed_by_another_tool_gets_a_new_modseq(maildir: Maildir) -> None:
    deliver(maildir, "a", 1.0)
    index = FolderIndex(maildir.path)
    before = index.sync()
    name = before.messages[0].name
    os.rename(maildir.path / "cur" / name, maildir.path / "cur" / (name + "S"))
    forget(maildir.path)
    after = index.sync()
    assert after.messages[0].flags == "S" and after.messages[0].modseq == before.highest_modseq + 1


def test_a_lost_uidlist_gives_every_message_a_modseq_above_all_before(maildir: Maildir) -> None:
    for n in range(2):
        deliver(maildir, f"m{n}", float(n))
    index = FolderIndex(maildir.path)
    index.sync()
    told = index.set_flags([2], "+", "S").highest_modseq  # in the log only
    (maildir.path / "ispd-uidlist").unlink()
    forget(maildir.path)
    state = index.sync()
    assert [m.uid for m in state.messages] == [1, 2]
    assert all(m.modseq > told for m in state.messages) and state.expunged_modseq > told


def test_a_version_1_uidlist_is_read_and_upgraded(maildir: Maildir) -> None:
    deliver(maildir, "a", 1.0)
    index = FolderIndex(maildir.path)
    name = index.sync().messages[0].name
    (maildir.path / "ispd-uidlist").write_text(f"ispd-uidlist 1 V77 N2\n1 {name.partition(':')[0]}\n")
    (maildir.path / "ispd-uidvalidity").write_text("V77 N2\n")
    forget(maildir.path)
    state = index.sync()
    assert state.uidvalidity == 77 and [m.uid for m in state.messages] == [1]
    assert (maildir.path / "ispd-uidlist").read_text().startswith("ispd-uidlist 3 V77 N2 ")


def test_a_wrong_size_an_older_ispd_named_is_measured_once_and_the_uid_kept(maildir: Maildir) -> None:
    """From an upgrade hunt: an ispd before 7eb5946 named a message with a bare CR before a
    line's end ,W= one too many; after the upgrade its RFC822.SIZE (246) was still one more than
    the BODY[] FETCH sent (245). The first sync of a uidlist an older ispd wrote measures it."""
    maildir.deliver(b"Subject: cr\r\n\r\nline one\r\r\nline two\r\n", now=1.0)
    maildir.deliver(b"Subject: cr\r\n\r\nline one\r\r\nline two\r\n", now=2.0)
    index = FolderIndex(maildir.path)
    index.sync()
    index.set_flags([1], "+", "S")
    forget(maildir.path)
    state = index.sync()
    uidlist = (maildir.path / "ispd-uidlist").read_text()
    cur = maildir.path / "cur"
    served = len(with_crlf((cur / state.messages[0].name).read_bytes()))
    for message in state.messages:  # as the older ispd named them, in cur/ and in its uidlist
        wrong = message.name.replace(f",W={served},", f",W={served + 1},")
        os.rename(cur / message.name, cur / wrong)
        uidlist = uidlist.replace(message.name.partition(":")[0], wrong.partition(":")[0])
    (maildir.path / "ispd-uidlist").write_text(uidlist.replace("ispd-uidlist 3 ", "ispd-uidlist 2 ", 1))
    maildir.deliver(b"Subject: new\r\n\r\nbare\r\r\n", now=3.0)
    forget(maildir.path)
    state = index.sync()
    assert [(m.uid, m.flags) for m in state.messages] == [(1, "S"), (2, ""), (3, "")]
    assert all(m.virtual_size == len(with_crlf((cur / m.name).read_bytes())) for m in state.messages)
    assert state.messages[0].virtual_size == served
    assert (maildir.path / "ispd-uidlist").read_text().startswith("ispd-uidlist 3 ")
    renamed = sorted(os.listdir(cur))
    forget(maildir.path)
    assert [m.uid for m in index.sync().messages] == [1, 2, 3] and sorted(os.listdir(cur)) == renamed


def test_keywords_get_letters_in_a_dovecot_keywords_table(maildir: Maildir) -> None:
    index = FolderIndex(maildir.path)
    assert index.keywords() == [] and index.keyword_letters(["$Forwarded"], create=False) == ""
    assert index.keyword_letters(["$Forwarded", "$Junk"], create=True) == "ab"
    assert index.keyword_letters(["$junk", "work"], create=True) == "bc"  # case-insensitive
    assert index.keywords() == ["$Forwarded", "$Junk", "work"]
    assert (maildir.path / "dovecot-keywords").read_text() == "0 $Forwarded\n1 $Junk\n2 work\n"
    index.keyword_letters([f"k{n}" for n in range(23)], create=True)
    with pytest.raises(TooManyKeywords):
        index.keyword_letters(["one-too-many"], create=True)


def test_mail_delivered_in_one_second_gets_uids_in_microsecond_order(maildir: Maildir) -> None:
    for micros, subject in ((987654, "third"), (99, "first"), (123456, "second")):
        (maildir.path / "new" / f"1800000000.M{micros}P7Q1.host,S=10").write_text(f"Subject: {subject}\n\nx\n")
    state = FolderIndex(maildir.path).sync()
    assert subjects(maildir, state) == ["Subject: first", "Subject: second", "Subject: third"]


def test_a_file_brought_in_with_an_old_uid_gets_a_new_one(maildir: Maildir) -> None:
    for n in range(3):
        deliver(maildir, f"m{n}", float(n))
    index = FolderIndex(maildir.path)
    first = index.sync()
    expunged = first.messages[0]
    os.rename(maildir.path / "cur" / expunged.name, maildir.path / expunged.name)  # taken away...
    forget(maildir.path)
    assert [m.uid for m in index.sync().messages] == [2, 3]
    os.rename(maildir.path / expunged.name, maildir.path / "cur" / expunged.name)  # ...and brought back
    forget(maildir.path)
    assert [m.uid for m in index.sync().messages] == [2, 3, 4]  # UID 1 is never given again


def _disk_full(*args: object, **kwargs: object) -> None:
    raise OSError(28, "No space left on device")


def _three_messages(maildir: Maildir) -> tuple[FolderIndex, Any, list[str]]:
    """Three messages synced: the index, its state, and the file names in cur/."""
    for number in range(3):
        deliver(maildir, f"m{number}", 100.0 + number)
    index = FolderIndex(maildir.path)
    return index, index.sync(), sorted(os.listdir(maildir.path / "cur"))


def test_a_flag_change_that_cannot_be_logged_changes_nothing(maildir: Maildir,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    index, before, names = _three_messages(maildir)
    real_open = os.open

    def open_(path: str | os.PathLike[str], flags: int, *args: int, **kwargs: int) -> int:
        if str(path).endswith("ispd-modseq"):
            _disk_full()
        return real_open(path, flags, *args, **kwargs)

    real_builtin_open = builtins.open

    def builtin_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).endswith("ispd-modseq") and args and args[0] == "a":
            _disk_full()
        return real_builtin_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(builtins, "open", builtin_open)
    with pytest.raises(OSError):
        index.set_flags([1, 2, 3], "+", "S")
    monkeypatch.undo()
    assert sorted(os.listdir(maildir.path / "cur")) == names  # STORE said NO: no file renamed
    after = index.sync()
    assert after.highest_modseq == before.highest_modseq and [m.flags for m in after.messages] == ["", "", ""]
    # And the next change works and counts one modseq up.
    assert index.set_flags([2], "+", "S").highest_modseq == before.highest_modseq + 1


def test_a_flag_change_cut_short_by_a_rename_is_undone(maildir: Maildir, monkeypatch: pytest.MonkeyPatch) -> None:
    index, before, names = _three_messages(maildir)
    real_rename = os.rename
    renamed = [0]

    def rename(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        renamed[0] += 1
        if renamed[0] == 2:  # the second message's longer name finds no room in the directory
            _disk_full()
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError):
        index.set_flags([1, 2, 3], "+", "S")
    monkeypatch.undo()
    assert sorted(os.listdir(maildir.path / "cur")) == names
    after = index.sync()
    assert [m.flags for m in after.messages] == ["", "", ""]
    assert after.highest_modseq >= before.highest_modseq  # never back
    # A torn append is cut off: the log holds whole lines only.
    log = maildir.path / "ispd-modseq"
    assert not log.exists() or log.read_text().endswith("\n")


def test_a_torn_modseq_line_is_cut_off(maildir: Maildir, monkeypatch: pytest.MonkeyPatch) -> None:
    deliver(maildir, "m", 100.0)
    index = FolderIndex(maildir.path)
    index.sync()
    index.set_flags([1], "+", "F")
    real_write = os.write

    def half_then_full(fd: int, data: bytes | memoryview) -> int:
        if len(data) > 2:
            return real_write(fd, bytes(data)[:2])
        _disk_full()
        return 0

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError):
        index.set_flags([1], "+", "S")
    monkeypatch.undo()
    log = maildir.path / "ispd-modseq"
    logged = log.read_text() if log.exists() else ""
    assert "1 " not in logged.replace("1 3 F\n", "")  # whole lines only: no half of "1 4 FS"
    assert [m.flags for m in index.sync().messages] == ["F"]


def test_a_folder_that_cannot_be_written_is_read_and_its_new_mail_waits(maildir: Maildir,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    deliver(maildir, "m1", 100.0)
    deliver(maildir, "m2", 101.0)
    index = FolderIndex(maildir.path)
    assert [m.uid for m in index.sync().messages] == [1, 2]
    deliver(maildir, "m3", 102.0)
    monkeypatch.setattr(FolderIndex, "_replace", _disk_full)  # the uidvalidity file, the uidlist
    for _ in range(2):
        state = index.sync()
        # What had UIDs is served; the new message gets none it could lose (no UID given in
        # memory that a later session could give to another message).
        assert [m.uid for m in state.messages] == [1, 2] and state.next_uid == 3
        assert len(os.listdir(maildir.path / "new")) == 1
    monkeypatch.undo()
    state = index.sync()  # room again: the message waiting gets the next UID
    assert [m.uid for m in state.messages] == [1, 2, 3] and os.listdir(maildir.path / "new") == []
    assert subjects(maildir, state)[2] == "Subject: m3"


def test_a_read_only_folder_is_read(maildir: Maildir, monkeypatch: pytest.MonkeyPatch) -> None:
    deliver(maildir, "m1", 100.0)
    index = FolderIndex(maildir.path)
    index.sync()
    forget(maildir.path)
    real_open = os.open

    def read_only(path: str | os.PathLike[str], flags: int, *args: int, **kwargs: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(30, "Read-only file system")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    assert [m.uid for m in index.sync().messages] == [1]


def test_a_read_only_folder_an_older_ispd_indexed_is_read_with_the_sizes_it_names(
        maildir: Maildir, monkeypatch: pytest.MonkeyPatch) -> None:
    maildir.deliver(b"Subject: cr\r\n\r\nline one\r\r\n", now=1.0)
    index = FolderIndex(maildir.path)
    name = index.sync().messages[0].name
    uidlist = (maildir.path / "ispd-uidlist").read_text()
    (maildir.path / "ispd-uidlist").write_text(uidlist.replace("ispd-uidlist 3 ", "ispd-uidlist 2 ", 1))
    forget(maildir.path)
    real_open = os.open

    def read_only(path: str | os.PathLike[str], flags: int, *args: int, **kwargs: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(30, "Read-only file system")
        return real_open(path, flags, *args, **kwargs)

    def no_rename(*args: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "open", read_only)
    monkeypatch.setattr(os, "rename", no_rename)
    monkeypatch.setattr(mailindex, "_measured_name", lambda path: path.name.replace(",W=", ",W=1"))
    assert [(m.uid, m.name) for m in index.sync().messages] == [(1, name)]


def test_the_folder_snapshots_kept_stay_within_their_bound(maildir: Maildir, monkeypatch: pytest.MonkeyPatch) -> None:
    """From a soak review: the snapshot of every folder synced since start stayed in memory (35 MB
    for one SELECT of a 25,000-message folder). Past the bound the least recently used go; one
    dropped is read again from the files, flags and mod-sequences as they were."""
    monkeypatch.setattr(mailindex, "_SNAPSHOT_MESSAGES_MAX", 10, raising=False)
    folders = [f"Box{n}" for n in range(5)]
    for number, folder in enumerate(folders):
        maildir.create_folder(folder)
        for n in range(4):
            deliver(maildir, f"{folder} m{n}", float(10 * number + n), folder)
    first = FolderIndex(maildir.folder_path(folders[0]))
    first.sync()
    flagged = first.set_flags([2], "+", "S")
    for folder in folders:
        FolderIndex(maildir.folder_path(folder)).sync()
    assert len(mailindex._SNAPSHOTS) <= 2  # 4 messages each, 10 at most in all
    assert maildir.folder_path(folders[0]) not in mailindex._SNAPSHOTS
    again = first.sync()
    assert [m.uid for m in again.messages] == [1, 2, 3, 4]
    assert [m.flags for m in again.messages] == ["", "S", "", ""]
    assert subjects(maildir, again, folders[0]) == [f"Subject: {folders[0]} m{n}" for n in range(4)]
    assert again.highest_modseq == flagged.highest_modseq
    assert maildir.folder_path(folders[0]) in mailindex._SNAPSHOTS


def test_a_folders_lock_goes_when_nothing_uses_it_and_stays_while_something_does(maildir: Maildir) -> None:
    """From a soak review: a lock per folder ever synced, never dropped."""
    before = len(mailindex._FOLDER_LOCKS._locks)
    for n in range(20):
        FolderIndex(maildir.path / f".gone{n}")
    assert len(mailindex._FOLDER_LOCKS._locks) == before
    kept = FolderIndex(maildir.path)
    with kept._lock:
        assert FolderIndex(maildir.path)._lock is kept._lock


def test_an_older_uidlist_that_cannot_be_written_is_not_measured_at_every_look(
        maildir: Maildir, monkeypatch: pytest.MonkeyPatch) -> None:
    """From a review: a version 2 uidlist on a full disk (or over its quota) stays version 2, and
    every look at the folder (each NOOP, each minute of IDLE) read every message file again to
    check its ,W=: a 2 GB mailbox read whole once a minute per idling client."""
    for number in range(3):
        maildir.deliver(b"Subject: %d\r\n\r\nbody\r\n" % number, now=1.0 + number)
    index = FolderIndex(maildir.path)
    index.sync()
    uidlist = (maildir.path / "ispd-uidlist").read_text()
    (maildir.path / "ispd-uidlist").write_text(uidlist.replace("ispd-uidlist 3 ", "ispd-uidlist 2 ", 1))
    forget(maildir.path)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FolderIndex, "_replace", full)
    measured: list[Path] = []
    real = mailindex._measured_name
    monkeypatch.setattr(mailindex, "_measured_name", lambda path: measured.append(path) or real(path))
    for _ in range(3):
        assert [m.uid for m in index.sync().messages] == [1, 2, 3]
    assert len(measured) == 3, measured
    monkeypatch.undo()
    forget(maildir.path)
    assert [m.uid for m in index.sync().messages] == [1, 2, 3]  # room again: the list is written
    assert (maildir.path / "ispd-uidlist").read_text().startswith("ispd-uidlist 3 ")
