"""The index IMAP reads a Maildir folder through: UIDs, UIDVALIDITY, flags and sizes, kept
consistent with the files and rebuildable from them.

Files per folder (beside cur/ new/ tmp/):

    ispd-uidlist      "ispd-uidlist 3 V<uidvalidity> N<next uid> M<highest modseq> X<expunge modseq>",
                      then "<uid> <modseq> <flags or -> <base name>" per message, by UID; rewritten
                      whole (tmp, rename) when it changes. Versions 1 (no modseqs) and 2 are read
                      too: they were written by an ispd whose deliveries could name a wrong
                      ``,W=`` (one too many for each CR before a line's end, before 7eb5946), so
                      the first sync that reads one measures each file's ``,W=`` once and
                      renames the file where it is wrong (3: the sizes were checked).
    ispd-modseq       "<uid> <modseq> <flags or ->" per flag change since the uidlist was written:
                      a STORE appends a line instead of rewriting the whole list
    ispd-uidvalidity  "V<uidvalidity> N<next uid> M<highest modseq>": what must survive the
                      uidlist's loss

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
them; a flag change is one rename. The index keeps a copy of each message's flags only to notice
a change made behind its back (by another tool): that, like every arrival, flag change and
expunge, gets the folder's next mod-sequence (CONDSTORE, RFC 7162). One modseq per change
(a STORE over many messages is one change); the highest is the folder's HIGHESTMODSEQ, and the
modseq of the last expunge tells QRESYNC whether a client that last saw modseq M can have missed
one. Losing the uidlist loses the per-message modseqs: all messages then get one new modseq
above any given before (the highest survives in ``ispd-uidvalidity`` and ``ispd-modseq``), and
counting it as an expunge makes resynchronising clients look for vanished UIDs.
Messages seen in new/ by a sync are \\Recent for the session that synced (RFC 3501 §2.3.2).
"""

from __future__ import annotations

import bisect
import dataclasses
import errno
import fcntl
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from ispd.logs import get_logger
from ispd.mail.maildir import PathLocks, crlf_size, fsync_directory, name_field, size_of

log = get_logger("ispd.mail.index")
_UID_FIELD = re.compile(r",U=(\d+)")
# A full disk, a quota, a read-only mount: the folder can be read, not written.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
_UNWRITABLE_LOGGED: set[Path] = set()  # folders whose unwritable index was logged (once each)
_TRUST_AFTER_NS = 2_000_000_000
_MODSEQ_LOG_LIMIT = 256 * 1024  # past this, the next sync folds the log into the uidlist
# A folder's index has one writer at a time in this process (flock keeps other processes out).
_FOLDER_LOCKS = PathLocks(threading.Lock)
MAILDIR_FLAGS = "DFPRST"  # draft, flagged, passed, replied, seen, trashed (Maildir spec)
KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"  # keywords, named in dovecot-keywords (Dovecot's layout)
_FLAG_LETTERS = set(MAILDIR_FLAGS + KEYWORD_LETTERS)
KEYWORDS_FILE = "dovecot-keywords"
LAST_UIDVALIDITY_FILE = "ispd-uidvalidity-last"  # in the Maildir's root: see _new_uidvalidity


class TooManyKeywords(Exception):
    """A folder holds 26 keywords at most (one letter each in the file names)."""


@dataclass(frozen=True, slots=True)
class IndexedMessage:
    uid: int
    name: str  # the file's name in cur/
    flags: str  # Maildir flag letters, sorted
    size: int  # bytes on disk
    virtual_size: int  # with CRLF line ends: RFC822.SIZE
    internal_date: float  # when it was delivered (the file's mtime)
    recent: bool  # moved from new/ by this sync
    modseq: int = 1  # the last change to it (RFC 7162)

    @property
    def base(self) -> str:
        return self.name.partition(":")[0]


@dataclass(slots=True)
class _Snapshot:
    """The last sync of a folder, kept in memory (one per folder per process)."""

    stamp: tuple[int, int, int]
    uidvalidity: int
    next_uid: int
    highest_modseq: int
    expunged_modseq: int
    messages: list[IndexedMessage]  # by UID, none recent
    logged: int  # bytes in ispd-modseq
    deferred: bool = False  # mail left in new/ (no room to index it): never answered from memory


class _SnapshotCache:
    """The snapshots of the folders synced last, the least recently used dropped first once they
    hold more than ``_SNAPSHOT_MESSAGES_MAX`` messages in all. A snapshot only spares a sync
    reading the files again, so one dropped costs a rescan, never a wrong answer; kept without a
    bound, every folder ever selected stayed in memory for the life of the process. The snapshot
    just stored is always kept, however large, or its folder would be rescanned at every look.
    Locked: syncs of different folders run at once in the executors."""

    def __init__(self) -> None:
        self._entries: OrderedDict[Path, tuple[_Snapshot, int]] = OrderedDict()  # with its count when stored
        self._held = 0
        self._guard = threading.Lock()

    def get(self, folder: Path) -> _Snapshot | None:
        with self._guard:
            entry = self._entries.get(folder)
            if entry is None:
                return None
            self._entries.move_to_end(folder)
            return entry[0]

    def put(self, folder: Path, snapshot: _Snapshot) -> None:
        with self._guard:
            self._drop(folder)
            size = len(snapshot.messages)
            self._entries[folder] = (snapshot, size)
            self._held += size
            while self._held > _SNAPSHOT_MESSAGES_MAX and len(self._entries) > 1:
                self._drop(next(iter(self._entries)))

    def pop(self, folder: Path) -> None:
        with self._guard:
            self._drop(folder)

    def _drop(self, folder: Path) -> None:
        entry = self._entries.pop(folder, None)
        if entry is not None:
            self._held -= entry[1]

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, folder: Path) -> bool:
        return folder in self._entries


# A snapshot holds about 250 bytes per message (measured with tracemalloc): this many keeps
# the folders in use answered from memory for some 50 MB at most.
_SNAPSHOT_MESSAGES_MAX = 200_000
_SNAPSHOTS = _SnapshotCache()


def forget(folder: Path) -> None:
    """Something was delivered into that folder: its next sync looks at the files."""
    _SNAPSHOTS.pop(folder)


def withdraw(folder: Path, name: str) -> int | None:
    """Takes back a message this process delivered as ``name`` into the folder's new/ and whose
    delivery is being undone (a failed transaction: SMTP's 4xx, IMAP's NO). A sync may have moved
    it to cur/ with a UID meanwhile: it is removed from there too, which a session that saw it
    reads as an expunge. Under the folder's lock, so a sync cannot move it while it is looked
    for. The bytes removed (for the quota count), or None when it was not there (expunged
    already); OSError when it could not be removed."""
    index = FolderIndex(folder)
    with ExitStack() as locks:
        try:
            locks.enter_context(index._locked())
        except OSError:  # the lock file cannot be made (a full disk): this process's lock alone
            locks.enter_context(index._lock)
        removed: Path | None = folder / "new" / name
        assert removed is not None
        try:
            os.unlink(removed)
        except FileNotFoundError:
            removed = None
            prefix = base_name(name)
            for entry in os.scandir(folder / "cur"):
                if _UID_FIELD.sub("", base_name(entry.name)) == prefix:
                    removed = Path(entry.path)
                    os.unlink(removed)
                    break
        forget(folder)
        if removed is None:
            return None
        # Durable before the client is told nothing was taken: after a crash the copy must not
        # come back beside the one the retry brings.
        fsync_directory(removed.parent)
    return size_of(name) or 0


@dataclass(frozen=True, slots=True)
class FolderState:
    uidvalidity: int
    next_uid: int
    messages: list[IndexedMessage]  # by UID
    highest_modseq: int = 1
    expunged_modseq: int = 0  # the modseq of the last expunge seen (0: none since the index began)
    keywords: tuple[str, ...] = ()  # the folder's keyword table, letter a first


@dataclass(frozen=True, slots=True)
class FlagChange:
    """What ``set_flags`` did: the messages it found (changed or not), by UID; the UIDs whose
    flags it changed; those it left alone because they changed after ``unchanged_since``; the
    folder's modseqs afterwards."""

    messages: dict[int, IndexedMessage]
    changed: list[int]
    modified: list[int]
    highest_modseq: int
    expunged_modseq: int


@dataclass(slots=True)
class _Entry:
    uid: int
    modseq: int
    flags: str | None  # None: not known (a version 1 uidlist)


def base_name(name: str) -> str:
    return name.partition(":")[0]


def uid_in_name(name: str) -> int | None:
    match = _UID_FIELD.search(base_name(name))
    return int(match.group(1)) if match else None


def _named_with_uid(name: str, uid: int, path: Path) -> str:
    """The file's name in cur/ once it has ``uid`` (any UID it carried before replaced), with its
    sizes (``,S=`` and ``,W=``) when it came without (delivered by another program): read once
    here, they are never read again."""
    base = _UID_FIELD.sub("", base_name(name))
    if name_field(base, "W=") is None:
        try:
            data = path.read_bytes()
        except OSError:
            data = None
        if data is not None:
            if name_field(base, "S=") is None:
                base += f",S={len(data)}"
            base += f",W={crlf_size(data)}"
    return f"{base},U={uid}:2,{flags_in_name(name)}"



def flags_in_name(name: str) -> str:
    _, sep, info = name.partition(":2,")
    return "".join(sorted(set(info) & _FLAG_LETTERS)) if sep else ""


def _measured_name(path: Path) -> str:
    """``path``'s name with the ``,W=`` it carries made what IMAP serves of the file: an ispd
    before 7eb5946 counted a CR before a line's end twice. A name without ``,W=``, or one that
    cannot be read, is left as it is."""
    name = path.name
    named = name_field(base_name(name), "W=")
    if named is None:
        return name
    try:
        measured = crlf_size(path.read_bytes())
    except OSError:
        return name
    if measured == named:
        return name
    base, sep, info = name.partition(":")
    head, *fields = base.split(",")
    fields = [f"W={measured}" if f.startswith("W=") and f[2:].isdigit() else f for f in fields]
    return ",".join([head, *fields]) + sep + info


# Folders whose files' ,W= this process has checked (``_measured_name``) but whose older uidlist
# could not be rewritten (a full disk): each look would read every file again.
_SIZES_CHECKED: set[Path] = set()


# Sizes with CRLF of files without ,W= that keep their names (a UID given by an older ispd or
# another tool), by file: read once per process.
_MEASURED: dict[tuple[Path, str], int] = {}


def _virtual_size(folder: Path, name: str, size: int) -> int:
    named = name_field(name, "W=")
    if named is not None:
        return named
    key = (folder, base_name(name))
    measured = _MEASURED.get(key)
    if measured is None:
        try:
            measured = crlf_size((folder / "cur" / name).read_bytes())
        except OSError:
            return size
        if len(_MEASURED) >= 100_000:
            _MEASURED.clear()
        _MEASURED[key] = measured
    return measured


class FolderIndex:
    """One folder's index (the directory holding cur/ new/ tmp/). Blocking: use an executor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = _FOLDER_LOCKS.get(path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            fd: int | None
            try:
                fd = os.open(self.path / "ispd-uidlist.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                if exc.errno not in _NO_ROOM:
                    raise
                # A read-only mount, or no room to make the file: reading must still work (and
                # flock needs no write access); without the file, this process's lock alone.
                try:
                    fd = os.open(self.path / "ispd-uidlist.lock", os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    fd = None
            try:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                if fd is not None:
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
            snapshot, recent = self._current()
            messages = [dataclasses.replace(m, recent=True) if m.uid in recent else m
                        for m in snapshot.messages] if recent else list(snapshot.messages)
            return FolderState(snapshot.uidvalidity, snapshot.next_uid, messages, snapshot.highest_modseq,
                               snapshot.expunged_modseq, tuple(self.keywords()))

    def _current(self) -> tuple[_Snapshot, set[int]]:
        """The folder as it is (under the lock), and the UIDs this look moved from new/."""
        stamp = self._stamp()
        cached = _SNAPSHOTS.get(self.path)
        # Unchanged since the last look: answer from memory. This process's own changes keep
        # the snapshot current (set_flags) or drop it (``forget``, at every delivery); what
        # another process may do is deliver into new/, and directory times are coarse (a
        # clock tick): new/ must have been still for two seconds.
        if cached is not None and cached.stamp == stamp and time.time_ns() - stamp[0] > _TRUST_AFTER_NS:
            return cached, set()
        snapshot, recent = self._sync(cached)
        # The stamp read before the scan: whatever changed while it ran (a delivery, this
        # sync's own moves) makes the next sync look again rather than miss it. And if new/
        # had changed within two seconds of the scan, a delivery in that same clock tick
        # would leave its time as it was: such a snapshot never answers alone.
        if time.time_ns() - stamp[0] <= _TRUST_AFTER_NS or snapshot.deferred:
            stamp = (-1, stamp[1], stamp[2])
        snapshot.stamp = stamp
        _SNAPSHOTS.put(self.path, snapshot)
        return snapshot, recent

    def _sync(self, cached: _Snapshot | None) -> tuple[_Snapshot, set[int]]:
        known_dates = {m.name: m.internal_date for m in cached.messages} if cached is not None else {}
        # Only when the index is rebuilt are the UIDs in the names believed below next_uid: a file
        # another tool brings in (from another folder, from a backup) may carry a UID that was
        # given and expunged here, and UIDs must never be reused (RFC 3501 §2.3.1.1).
        uidvalidity, next_uid, highest, expunged, by_base, logged, rebuilding, measure = self._load()
        # Every change this look finds is one change: it gets the next modseq, once.
        change_modseq = highest + 1
        # Fold the flag changes logged since the last write into the uidlist; write a version 3.
        changed = logged > 0 or measure or self.path in _SIZES_CHECKED
        modseq_used = expunged == change_modseq  # the uidlist was lost: that counts as a change
        recent: set[int] = set()
        arrived = sorted((e for e in os.scandir(self.path / "new") if not e.name.startswith(".") and e.is_file()),
                         key=_delivery_order)
        deferred = False
        if arrived:
            # The UIDs about to be written into names are reserved durably first: after a
            # crash, none of them can be given again under this UIDVALIDITY.
            try:
                self._replace("ispd-uidvalidity", f"V{uidvalidity} N{next_uid + len(arrived)} M{change_modseq}\n",
                              sync=True)
            except OSError as exc:
                if exc.errno not in _NO_ROOM:
                    raise
                # No room to reserve UIDs (a full disk): the new mail waits in new/ until there
                # is. A UID given in memory only could be given again, after a restart, to
                # another message - a client would then show it the wrong message (RFC 3501
                # §2.3.1.1). Reading what has UIDs already must not fail for it.
                self._unwritable(exc)
                arrived, deferred = [], True
        # Delivered since the last sync: into cur/ with the next UID in the name.
        for entry in arrived:
            uid = next_uid
            next_uid += 1
            target = _named_with_uid(_measured_name(Path(entry.path)) if measure else entry.name, uid,
                                     Path(entry.path))
            try:
                os.rename(entry.path, self.path / "cur" / target)
            except FileNotFoundError:
                continue  # another reader took it
            by_base[base_name(target)] = _Entry(uid, change_modseq, flags_in_name(target))
            recent.add(uid)
            changed = modseq_used = True
        messages: list[IndexedMessage] = []
        present: set[str] = set()
        taken = {e.uid for e in by_base.values()}
        for dir_entry in os.scandir(self.path / "cur"):
            name = dir_entry.name
            if name.startswith(".") or not dir_entry.is_file():
                continue
            base = base_name(name)
            if measure:
                measured = _measured_name(Path(dir_entry.path))
                if measured != name:
                    try:
                        os.rename(dir_entry.path, self.path / "cur" / measured)
                    except FileNotFoundError:
                        continue
                    except OSError:  # a read-only folder is still read, with the size it names
                        measured = name
                if measured != name:
                    if base in by_base:
                        by_base[base_name(measured)] = by_base.pop(base)
                    name, base = measured, base_name(measured)
            known = by_base.get(base)
            flags = flags_in_name(name)
            if known is None:  # put here by another tool, or the index was rebuilt
                named = uid_in_name(name)
                if named is not None and named not in taken and (rebuilding or named >= next_uid):
                    uid = named
                    next_uid = max(next_uid, uid + 1)
                else:
                    uid = next_uid
                    next_uid += 1
                    renamed = _named_with_uid(name, uid, Path(dir_entry.path))
                    try:
                        os.rename(dir_entry.path, self.path / "cur" / renamed)
                    except FileNotFoundError:
                        continue
                    name, base = renamed, base_name(renamed)
                known = by_base[base] = _Entry(uid, change_modseq, flags)
                taken.add(uid)
                changed = modseq_used = True
            elif known.flags != flags:
                if known.flags is not None:  # changed behind our back (None: not recorded yet)
                    known.modseq = change_modseq
                    modseq_used = True
                known.flags = flags
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
            messages.append(IndexedMessage(known.uid, name, flags, size, _virtual_size(self.path, name, size), mtime,
                                           False,
                                           known.modseq))
            present.add(base)
        if set(by_base) - present:
            changed = modseq_used = True
            expunged = change_modseq
            by_base = {b: e for b, e in by_base.items() if b in present}
        if modseq_used:
            highest = change_modseq
        if changed or not (self.path / "ispd-uidlist").exists():
            try:
                self._save(uidvalidity, next_uid, highest, expunged, by_base)
                _SIZES_CHECKED.discard(self.path)  # a version 3 uidlist now says so
            except OSError as exc:
                if exc.errno not in _NO_ROOM:
                    raise
                # The UIDs given are in the file names (and those of new mail were reserved):
                # the next sync with room writes the list. Until then, look again every time.
                self._unwritable(exc)
                deferred = True
        if measure and deferred:  # the older uidlist stays: its files are not read again by this process
            if len(_SIZES_CHECKED) >= 100_000:
                _SIZES_CHECKED.clear()
            _SIZES_CHECKED.add(self.path)
        if not deferred:
            _UNWRITABLE_LOGGED.discard(self.path)
        messages.sort(key=lambda m: m.uid)
        return _Snapshot((0, 0, 0), uidvalidity, next_uid, highest, expunged, messages, 0, deferred), recent

    def _unwritable(self, error: OSError) -> None:
        if self.path not in _UNWRITABLE_LOGGED:
            _UNWRITABLE_LOGGED.add(self.path)
            log.warning("mail.index.unwritable", folder=str(self.path), error=str(error))

    def set_flags(self, uids: Iterable[int], mode: str, letters: str,
                  unchanged_since: int | None = None) -> FlagChange:
        """Sets (mode "="), adds ("+") or removes ("-") Maildir flag letters on messages, each
        a rename, as one change with one new modseq. The flags are changed from what they are
        now, not from what the caller last saw, so two sessions' changes do not undo each other.
        With ``unchanged_since`` (CONDSTORE's UNCHANGEDSINCE), messages changed after that
        modseq are left alone and listed. Expunged messages are left out of the result."""
        wanted_letters = set(letters) & _FLAG_LETTERS
        with self._locked():
            snapshot, _ = self._current()
            found: dict[int, IndexedMessage] = {}
            modified: list[int] = []
            renames: list[tuple[int, IndexedMessage]] = []
            for uid in uids:
                # The snapshot is in UID order: found by bisection, not by a map of the folder.
                position = bisect.bisect_left(snapshot.messages, uid, key=_uid_of)
                if position == len(snapshot.messages) or snapshot.messages[position].uid != uid:
                    continue
                message = snapshot.messages[position]
                if unchanged_since is not None and message.modseq > unchanged_since:
                    modified.append(uid)
                    found[uid] = message
                    continue
                current = set(message.flags)
                wanted = wanted_letters if mode == "=" else (
                    current | wanted_letters if mode == "+" else current - wanted_letters)
                if wanted == current:
                    found[uid] = message
                    continue
                renames.append((position, IndexedMessage(
                    message.uid, f"{message.base}:2,{''.join(sorted(wanted))}", "".join(sorted(wanted)),
                    message.size, message.virtual_size, message.internal_date, False, snapshot.highest_modseq + 1)))
            if renames:
                before = self._stamp()
                was_current = before[1:] == snapshot.stamp[1:]
                # The modseq log first: a NO must mean nothing changed, and the log is what can
                # fail on a full disk (a rename needs no room). A line whose rename then does not
                # happen is harmless: the next sync believes the file's name.
                line = "".join(f"{u.uid} {u.modseq} {u.flags or '-'}\n" for _, u in renames)
                self._log_changes(line)
                snapshot.logged += len(line)
                done = []
                try:
                    for position, updated in renames:
                        try:
                            os.rename(self.path / "cur" / snapshot.messages[position].name,
                                      self.path / "cur" / updated.name)
                        except FileNotFoundError:
                            continue  # removed by another process since the look
                        done.append((position, updated))
                except OSError:
                    # A longer name in a full directory block (ENOSPC), a folder made read-only:
                    # the renames done are undone, and the next sync reads the files again.
                    for position, updated in reversed(done):
                        with suppress(OSError):
                            os.rename(self.path / "cur" / updated.name,
                                      self.path / "cur" / snapshot.messages[position].name)
                    _SNAPSHOTS.pop(self.path)
                    raise
                if done:
                    snapshot.highest_modseq += 1
                    for position, updated in done:
                        snapshot.messages[position] = updated
                        found[updated.uid] = updated
                after = self._stamp()
                # Our own renames keep the snapshot current; anything else since the look, or a
                # long log, makes the next sync read the files again.
                if was_current and snapshot.logged < _MODSEQ_LOG_LIMIT and len(done) == len(renames):
                    snapshot.stamp = (snapshot.stamp[0], after[1], after[2])
                else:
                    _SNAPSHOTS.pop(self.path)
            return FlagChange(found, [u.uid for _, u in done] if renames else [], modified,
                              snapshot.highest_modseq, snapshot.expunged_modseq)

    def _log_changes(self, line: str) -> None:
        """Appends flag changes to ``ispd-modseq``, all or nothing: a write cut short (ENOSPC)
        is cut off again, so that the next line appended does not run on from half a line."""
        fd = os.open(self.path / "ispd-modseq", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            length = os.fstat(fd).st_size
            try:
                data = line.encode("ascii")
                while data:
                    data = data[os.write(fd, data):]
            except OSError:
                with suppress(OSError):
                    os.ftruncate(fd, length)
                raise
        finally:
            os.close(fd)

    # --- keywords

    def keywords(self) -> list[str]:
        """The folder's keywords, in letter order (a, b, c...)."""
        by_index: dict[int, str] = {}
        try:
            lines = (self.path / KEYWORDS_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            number, _, name = line.partition(" ")
            if number.isdigit() and int(number) < len(KEYWORD_LETTERS) and name:
                by_index[int(number)] = name
        # A gap (a hand-edited file) keeps its place: letters must not shift.
        return [by_index.get(i, f"$ispd-unnamed-{i}") for i in range(max(by_index, default=-1) + 1)]

    def keyword_letters(self, names: list[str], *, create: bool) -> str:
        """The letters of these keywords (case-insensitive), added to the folder's table when
        ``create``; unknown ones are left out otherwise. Raises TooManyKeywords."""
        with self._locked():
            known = self.keywords()
            lowered = [k.lower() for k in known]
            letters = []
            for name in names:
                if name.lower() not in lowered:
                    if not create:
                        continue
                    if len(known) >= len(KEYWORD_LETTERS):
                        raise TooManyKeywords(name)
                    known.append(name)
                    lowered.append(name.lower())
                letters.append(KEYWORD_LETTERS[lowered.index(name.lower())])
            if len(known) > len(self.keywords()):
                self._replace(KEYWORDS_FILE, "".join(f"{i} {k}\n" for i, k in enumerate(known)))
            return "".join(sorted(set(letters)))

    # --- the files

    def _load(self) -> tuple[int, int, int, int, dict[str, _Entry], int, bool, bool]:
        """(uidvalidity, next uid, highest modseq, expunge modseq, base name -> entry, bytes of
        logged flag changes, whether the uidlist was lost and is being rebuilt, whether the
        files' ``,W=`` sizes are still to be checked), from what survives."""
        validity, next_uid, saved_highest = self._read_validity()
        logged_changes, logged = self._read_log()
        logged_highest = max((modseq for _, modseq, _ in logged_changes), default=0)
        try:
            lines = (self.path / "ispd-uidlist").read_text(encoding="utf-8").splitlines()
            header = lines[0].split()
            if header[0] != "ispd-uidlist" or header[1] not in ("1", "2", "3"):
                raise ValueError("not our format")
            fields = {f[0]: int(f[1:]) for f in header[2:]}
            listed_validity, listed_next = fields["V"], fields["N"]
            highest, expunged = fields.get("M", 1), fields.get("X", 0)
            by_base: dict[str, _Entry] = {}
            for line in lines[1:]:
                if header[1] == "1":
                    uid_text, _, base = line.partition(" ")
                    by_base[base] = _Entry(int(uid_text), 1, None)
                    continue
                uid_text, modseq_text, flags, base = line.split(" ", 3)
                by_base[base] = _Entry(int(uid_text), int(modseq_text), "" if flags == "-" else flags)
            if validity is None:
                validity = listed_validity
            if validity == listed_validity:
                by_uid = {e.uid: e for e in by_base.values()}
                for uid, modseq, flags in logged_changes:
                    logged_entry = by_uid.get(uid)
                    if logged_entry is not None and modseq > logged_entry.modseq:
                        logged_entry.modseq, logged_entry.flags = modseq, flags
                highest = max(highest, logged_highest, saved_highest or 0)
                return (validity, max(listed_next, next_uid or 0), highest, expunged, by_base, logged, False,
                        header[1] != "3" and self.path not in _SIZES_CHECKED)
        except (FileNotFoundError, IndexError, ValueError, KeyError):
            pass
        if validity is None:  # nothing survived: a new UIDVALIDITY (clients resynchronise)
            return _new_uidvalidity(self.path), next_uid or 1, max(1, logged_highest), 0, {}, logged, True, True
        # The per-message modseqs are gone: every message comes back with one new modseq above
        # any given before, as if all had changed and some had been expunged.
        highest = max(saved_highest or 1, logged_highest)
        return validity, next_uid or 1, highest, highest + 1, {}, logged, True, True

    def _read_validity(self) -> tuple[int | None, int | None, int | None]:
        try:
            fields = (self.path / "ispd-uidvalidity").read_text(encoding="ascii").split()
            values = {f[0]: int(f[1:]) for f in fields}
            return values["V"], values["N"], values.get("M")
        except (FileNotFoundError, IndexError, ValueError, KeyError):
            return None, None, None

    def _read_log(self) -> tuple[list[tuple[int, int, str]], int]:
        try:
            text = (self.path / "ispd-modseq").read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return [], 0
        changes = []
        for line in text.splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[0].isdigit() and fields[1].isdigit():  # a torn last line is skipped
                changes.append((int(fields[0]), int(fields[1]), "" if fields[2] == "-" else fields[2]))
        return changes, len(text)

    def _save(self, uidvalidity: int, next_uid: int, highest: int, expunged: int, by_base: dict[str, _Entry]) -> None:
        lines = [f"ispd-uidlist 3 V{uidvalidity} N{next_uid} M{highest} X{expunged}"]
        lines += [f"{e.uid} {e.modseq} {e.flags or '-'} {base}"
                  for base, e in sorted(by_base.items(), key=lambda item: item[1].uid)]
        self._replace("ispd-uidvalidity", f"V{uidvalidity} N{next_uid} M{highest}\n")
        self._replace("ispd-uidlist", "\n".join(lines) + "\n")
        # What the log held is in the uidlist now.
        with suppress(FileNotFoundError):
            os.unlink(self.path / "ispd-modseq")

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


def _new_uidvalidity(folder: Path) -> int:
    """A UIDVALIDITY no folder of this Maildir has had: the time, or one more than the last one
    given, whichever is more. A folder deleted or renamed and made again within the second must
    not get the old one back with its UIDs starting over (RFC 3501 §2.3.1.1); Dovecot counts up
    the same way. The last one given is kept in the Maildir's root, under a lock."""
    root = folder.parent if folder.name.startswith(".") else folder
    now = max(1, int(time.time()))
    try:
        fd = os.open(root / LAST_UIDVALIDITY_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:  # a root that cannot be written: the time, as before there was this file
        return now
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
        last = int(text) if text.isdigit() and int(text) < _UIDVALIDITY_MAX else 0  # garbage: ignored
        value = max(now, last + 1)
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, f"{value}\n".encode())
        os.fsync(fd)
        return value
    except OSError:
        return now
    finally:
        os.close(fd)  # releases the flock


_UIDVALIDITY_MAX = 0xFFFFFFFF  # a 32-bit number (RFC 3501 §9 nz-number)


def _uid_of(message: IndexedMessage) -> int:
    return message.uid


_DELIVERY_STAMP = re.compile(r"^(\d+)\.(?:M(\d+))?(?:P\d+)?(?:Q(\d+))?")


def _delivery_order(entry: os.DirEntry[str]) -> tuple[int, int, int, str]:
    # Maildir names start with the delivery second, then (ours and Dovecot's) M<microseconds>
    # and Q<sequence>: compared as numbers, since "M99" sorts after "M123" as text.
    match = _DELIVERY_STAMP.match(entry.name)
    if match is None:
        return (0, 0, 0, entry.name)
    return (int(match.group(1)), int(match.group(2) or 0), int(match.group(3) or 0), entry.name)
