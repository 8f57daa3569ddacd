"""The index IMAP reads a Maildir folder through: UIDs, UIDVALIDITY, flags and sizes, kept
consistent with the files and rebuildable from them.

Files per folder (beside cur/ new/ tmp/):

    ispd-uidlist      "ispd-uidlist 1 V<uidvalidity> N<next uid>", then "<uid> <base name>" per
                      message, by UID; rewritten whole (tmp, rename) when it changes
    ispd-uidvalidity  "V<uidvalidity> N<next uid>": what must survive the uidlist's loss

Theory of operation. ``sync`` is the one writer, under a lock per folder (a thread lock, and
flock on ``ispd-uidlist.lock`` for other processes). It moves what delivery put in new/ to cur/,
giving each message the next UID and writing that UID into the file name (``,U=<uid>``, before
the ``:2,<flags>`` info), so that the UIDs can be read back from the files themselves: a lost or
corrupt uidlist is rebuilt with the same UIDs, and UIDVALIDITY stays (RFC 3501 §2.3.1.1: a
UID never changes or is reused while UIDVALIDITY holds). Only losing ``ispd-uidvalidity`` too
starts a new UIDVALIDITY, which tells clients to forget what they cached — the honest answer.
A file in cur/ that another tool put there without ``,U=`` gets the next UID the same way.
Vanished files (expunged, or moved by another tool) leave the index.

Flags and sizes live in the file names (``:2,FS``, ``,S=`` and ``,W=``), as Maildir keeps
them; the index does not copy them, so a flag change is one rename and cannot disagree.
Messages seen in new/ by a sync are \\Recent for the session that synced (RFC 3501 §2.3.2).
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ispd.mail.maildir import PathLocks, fsync_directory, size_of

_UID_FIELD = re.compile(r",U=(\d+)")
_TRUST_AFTER_NS = 2_000_000_000
# A folder's index has one writer at a time in this process (flock keeps other processes out).
_FOLDER_LOCKS = PathLocks(threading.Lock)
MAILDIR_FLAGS = "DFPRST"  # draft, flagged, passed, replied, seen, trashed (Maildir spec)


@dataclass(frozen=True, slots=True)
class IndexedMessage:
    uid: int
    name: str  # the file's name in cur/
    flags: str  # Maildir flag letters, sorted
    size: int  # bytes on disk
    virtual_size: int  # with CRLF line ends: RFC822.SIZE
    internal_date: float  # when it was delivered (the file's mtime)
    recent: bool  # moved from new/ by this sync

    @property
    def base(self) -> str:
        return self.name.partition(":")[0]


@dataclass(slots=True)
class _Snapshot:
    """The last sync of a folder, kept in memory (one per folder per process)."""

    stamp: tuple[int, int, int]
    uidvalidity: int
    next_uid: int
    messages: list[IndexedMessage]  # by UID, none recent


_SNAPSHOTS: dict[Path, _Snapshot] = {}


def forget(folder: Path) -> None:
    """Something was delivered into that folder: its next sync looks at the files."""
    _SNAPSHOTS.pop(folder, None)


@dataclass(frozen=True, slots=True)
class FolderState:
    uidvalidity: int
    next_uid: int
    messages: list[IndexedMessage]  # by UID


def base_name(name: str) -> str:
    return name.partition(":")[0]


def uid_in_name(name: str) -> int | None:
    match = _UID_FIELD.search(base_name(name))
    return int(match.group(1)) if match else None


def _named_with_uid(name: str, uid: int) -> str:
    """The file's name in cur/ once it has ``uid`` (any UID it carried before replaced)."""
    return f"{_UID_FIELD.sub('', base_name(name))},U={uid}:2,{flags_in_name(name)}"


def flags_in_name(name: str) -> str:
    _, sep, info = name.partition(":2,")
    return "".join(sorted(set(info) & set(MAILDIR_FLAGS))) if sep else ""


def _virtual_size(name: str, size: int) -> int:
    for field in base_name(name).split(",")[1:]:
        if field.startswith("W=") and field[2:].isdigit():
            return int(field[2:])
    return size


class FolderIndex:
    """One folder's index (the directory holding cur/ new/ tmp/). Blocking: use an executor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = _FOLDER_LOCKS.get(path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            fd = os.open(self.path / "ispd-uidlist.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def _stamp(self) -> tuple[int, int, int]:
        """What changes when the folder does: the mtimes of new/, cur/ and the uidlist."""
        stamps = []
        for name in ("new", "cur", "ispd-uidlist"):
            try:
                stamps.append(os.stat(self.path / name).st_mtime_ns)
            except FileNotFoundError:
                stamps.append(0)
        return stamps[0], stamps[1], stamps[2]

    def sync(self, now: float | None = None) -> FolderState:
        with self._locked():
            stamp = self._stamp()
            cached = _SNAPSHOTS.get(self.path)
            # Unchanged since the last look: answer from memory. This process's own changes keep
            # the snapshot current (set_flags) or drop it (``forget``, at every delivery); what
            # another process may do is deliver into new/, and directory times are coarse (a
            # clock tick): new/ must have been still for two seconds.
            if cached is not None and cached.stamp == stamp and time.time_ns() - stamp[0] > _TRUST_AFTER_NS:
                return FolderState(cached.uidvalidity, cached.next_uid, list(cached.messages))
            state = self._sync(cached)
            fresh = [m if not m.recent else dataclasses.replace(m, recent=False) for m in state.messages]
            # The stamp read before the scan: whatever changed while it ran (a delivery, this
            # sync's own moves) makes the next sync look again rather than miss it. And if new/
            # had changed within two seconds of the scan, a delivery in that same clock tick
            # would leave its time as it was: such a snapshot never answers alone.
            if time.time_ns() - stamp[0] <= _TRUST_AFTER_NS:
                stamp = (-1, stamp[1], stamp[2])
            _SNAPSHOTS[self.path] = _Snapshot(stamp, state.uidvalidity, state.next_uid, fresh)
            return state

    def _sync(self, cached: _Snapshot | None) -> FolderState:
        known_dates = {m.name: m.internal_date for m in cached.messages} if cached is not None else {}
        uidvalidity, next_uid, by_base = self._load()
        changed = False
        recent: set[str] = set()
        arrived = sorted((e for e in os.scandir(self.path / "new") if not e.name.startswith(".") and e.is_file()),
                         key=_delivery_order)
        if arrived:
            # The UIDs about to be written into names are reserved durably first: after a
            # crash, none of them can be given again under this UIDVALIDITY.
            self._replace("ispd-uidvalidity", f"V{uidvalidity} N{next_uid + len(arrived)}\n", sync=True)
        # Delivered since the last sync: into cur/ with the next UID in the name.
        for entry in arrived:
            uid = next_uid
            next_uid += 1
            target = _named_with_uid(entry.name, uid)
            try:
                os.rename(entry.path, self.path / "cur" / target)
            except FileNotFoundError:
                continue  # another reader took it
            by_base[base_name(target)] = uid
            recent.add(base_name(target))
            changed = True
        messages: list[IndexedMessage] = []
        present: set[str] = set()
        taken = set(by_base.values())
        for entry in os.scandir(self.path / "cur"):
            name = entry.name
            if name.startswith(".") or not entry.is_file():
                continue
            base = base_name(name)
            known = by_base.get(base)
            if known is not None:
                uid = known
            else:  # put here by another tool, or the index was rebuilt
                named = uid_in_name(name)
                if named is not None and named not in taken:
                    uid = named
                    next_uid = max(next_uid, uid + 1)
                else:
                    uid = next_uid
                    next_uid += 1
                    renamed = _named_with_uid(name, uid)
                    try:
                        os.rename(entry.path, self.path / "cur" / renamed)
                    except FileNotFoundError:
                        continue
                    name, base = renamed, base_name(renamed)
                by_base[base] = uid
                taken.add(uid)
                changed = True
            mtime = known_dates.get(name)
            if mtime is None:
                try:
                    mtime = os.stat(self.path / "cur" / name).st_mtime
                except FileNotFoundError:
                    continue
            size = size_of(name)
            if size is None:
                size = os.stat(self.path / "cur" / name).st_size
            messages.append(IndexedMessage(uid, name, flags_in_name(name), size, _virtual_size(name, size), mtime,
                                           base in recent))
            present.add(base)
        if set(by_base) - present:
            changed = True
            by_base = {b: u for b, u in by_base.items() if b in present}
        if changed or not (self.path / "ispd-uidlist").exists():
            self._save(uidvalidity, next_uid, by_base)
        messages.sort(key=lambda m: m.uid)
        return FolderState(uidvalidity, next_uid, messages)

    def set_flags(self, message: IndexedMessage, flags: str) -> IndexedMessage:
        """A new flag set (Maildir letters) for one message: one rename. Raises
        FileNotFoundError when the message was expunged meanwhile."""
        wanted = "".join(sorted(set(flags) & set(MAILDIR_FLAGS)))
        name = f"{message.base}:2,{wanted}"
        updated = IndexedMessage(message.uid, name, wanted, message.size, message.virtual_size,
                                 message.internal_date, message.recent)
        if name == message.name:
            return updated
        with self._locked():
            before = self._stamp()
            os.rename(self.path / "cur" / message.name, self.path / "cur" / name)
            cached = _SNAPSHOTS.get(self.path)
            if cached is not None and cached.stamp == before:
                # The snapshot was current and this rename is the only change: keep it current.
                cached.messages = [dataclasses.replace(updated, recent=False) if m.uid == message.uid else m
                                   for m in cached.messages]
                cached.stamp = self._stamp()
            else:
                _SNAPSHOTS.pop(self.path, None)
        return updated

    # --- the files

    def _load(self) -> tuple[int, int, dict[str, int]]:
        """(uidvalidity, next uid, base name -> uid), rebuilt from what survives."""
        validity, next_uid = self._read_validity()
        try:
            lines = (self.path / "ispd-uidlist").read_text(encoding="utf-8").splitlines()
            header = lines[0].split()
            if header[:2] != ["ispd-uidlist", "1"]:
                raise ValueError("not our format")
            listed_validity = int(header[2].removeprefix("V"))
            listed_next = int(header[3].removeprefix("N"))
            by_base = {}
            for line in lines[1:]:
                uid_text, _, base = line.partition(" ")
                by_base[base] = int(uid_text)
            if validity is None:
                validity = listed_validity
            if validity == listed_validity:
                return validity, max(listed_next, next_uid or 0), by_base
        except (FileNotFoundError, IndexError, ValueError):
            pass
        if validity is None:  # nothing survived: a new UIDVALIDITY (clients resynchronise)
            validity = max(1, int(time.time()))
        return validity, next_uid or 1, {}

    def _read_validity(self) -> tuple[int | None, int | None]:
        try:
            fields = (self.path / "ispd-uidvalidity").read_text(encoding="ascii").split()
            return int(fields[0].removeprefix("V")), int(fields[1].removeprefix("N"))
        except (FileNotFoundError, IndexError, ValueError):
            return None, None

    def _save(self, uidvalidity: int, next_uid: int, by_base: dict[str, int]) -> None:
        lines = [f"ispd-uidlist 1 V{uidvalidity} N{next_uid}"]
        lines += [f"{uid} {base}" for base, uid in sorted(by_base.items(), key=lambda item: item[1])]
        self._replace("ispd-uidvalidity", f"V{uidvalidity} N{next_uid}\n")
        self._replace("ispd-uidlist", "\n".join(lines) + "\n")

    def _replace(self, name: str, text: str, *, sync: bool = False) -> None:
        temporary = self.path / "tmp" / f".{name}.{os.getpid()}.{threading.get_ident()}"
        with temporary.open("w", encoding="utf-8") as f:
            f.write(text)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(temporary, self.path / name)
        if sync:
            fsync_directory(self.path)


def _delivery_order(entry: os.DirEntry[str]) -> tuple[int, str]:
    # Maildir names start with the delivery second; ties keep the name's order.
    head = entry.name.partition(".")[0]
    return (int(head) if head.isdigit() else 0, entry.name)
