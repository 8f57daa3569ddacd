"""The subscribers' mailstore: Maildir++, laid out as Courier and Dovecot lay it out, so that
operators' tools work on it and a move to Dovecot needs no conversion.

A mailbox is a directory ``<root>/<domain>/<local part>/``:

    cur/ new/ tmp/        the INBOX
    .Sent/ .Drafts/ ...   folders: Maildir++ names them with a leading dot ('.' also separates
                          levels, ``.Archive.2026``); each is a Maildir with a ``maildirfolder`` file
    maildirsize           Maildir++ quota file: a definition line, then "bytes count" lines
    subscriptions         the folders an IMAP client subscribed to (Dovecot's file)

Delivery follows the Maildir rules (cr.yp.to/proto/maildir.html): the message is written under a
unique name in tmp/, fsynced, linked into new/ and new/ fsynced; only then is it delivered, and
readers never see a partial file. Concurrent deliveries need no lock: names are unique.

Names are ``<secs>.M<usecs>P<pid>Q<n>.<host>,S=<bytes>,W=<size with CRLF>[:2,<flags>]``. ``S=``
lets quota be summed from a directory listing; ``W=`` is what IMAP reports as RFC822.SIZE.
Messages are kept with LF line ends, as Dovecot and Postfix's local(8) keep them. UIDs, UIDVALIDITY
and the move from new/ to cur/ are ``ispd.mail.mailindex``'s (IMAP reads through it).

Quota usage (RFC 9208's STORAGE and MESSAGE) is kept in ``maildirsize``: each delivery appends
one line (an O_APPEND write of a short line is atomic), and when the file outgrows 5120 bytes it
is recomputed from the files, as the Maildir++ specification says. The limit itself lives in the
store (the mailbox's or its plan's), not here.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

# RFC 6154 special-use folders every mailbox starts with (the IMAP issue reports them).
SPECIAL_FOLDERS = ("Sent", "Drafts", "Trash", "Junk", "Archive")
_MAILDIRSIZE_LIMIT = 5120  # Maildir++: recompute when the file grows past this
_MODE_DIR = 0o700
_MODE_FILE = 0o600


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    bytes: int
    messages: int


@dataclass(frozen=True, slots=True)
class DeliveredMessage:
    name: str  # the file's name in new/
    size: int  # bytes on disk (S=)
    virtual_size: int  # with CRLF line ends (W=, IMAP's RFC822.SIZE)


def _host_part() -> str:
    # The Maildir spec: '/' and ':' in the host name are written as octal escapes.
    return socket.gethostname().replace("/", r"\057").replace(":", r"\072") or "localhost"


_HOST = _host_part()
_SEQUENCE = itertools.count(1)


def unique_name(size: int, virtual_size: int, now: float | None = None) -> str:
    now = time.time() if now is None else now
    seconds = int(now)
    micros = int((now - seconds) * 1_000_000)
    return f"{seconds}.M{micros}P{os.getpid()}Q{next(_SEQUENCE)}.{_HOST},S={size},W={virtual_size}"


def crlf_size(data: bytes) -> int:
    """The size of ``data`` with CRLF line ends, as IMAP serves it (RFC822.SIZE), whether the file
    has LF line ends (the Maildir norm), CRLF ones (written by other tools) or both."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def with_crlf(data: bytes) -> bytes:
    """``data`` with every line ending in CRLF, whatever ends its lines had (``crlf_size`` long)."""
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    return data.replace(b"\n", b"\r\n")


def _remake_subdirectories(base: Path) -> None:
    """A folder's tmp/, new/ and cur/, made where missing: as the folder is made, and again where
    a copy or backup that skips empty directories lost them. A folder that is gone stays gone
    (no parents are made)."""
    for sub in ("tmp", "new", "cur"):
        (base / sub).mkdir(mode=_MODE_DIR, exist_ok=True)


def size_of(name: str) -> int | None:
    """The S= size in a Maildir file name, or None if the name has none."""
    return name_field(name, "S=")


def name_field(name: str, prefix: str) -> int | None:
    """A number a Maildir file name carries after its base (``S=``, ``W=``, ``U=``), or None."""
    for field in name.partition(":")[0].split(",")[1:]:
        if field.startswith(prefix) and field[len(prefix):].isdigit():
            return int(field[len(prefix):])
    return None


def name_in(error: OSError, path: Path) -> None:
    """Puts ``path`` into ``error`` when it names none: a write() or fsync() that finds the disk
    full fails with a bare "[Errno 28] No space left on device", which tells the operator
    nothing of where."""
    if error.filename is None:
        error.filename = str(path)


def fsync_directory(path: Path) -> None:
    """Make a directory's entries durable (a created, linked or renamed file in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PathLocks:
    """One lock per path for the whole process, whichever object asks for it.

    Held weakly: a path's lock goes once no object refers to it (the Maildir or FolderIndex that
    asked, a thread holding or waiting for it), so a long-running process does not keep one lock
    for every path it ever touched. Nobody can then hold or wait for the old lock, so the next
    asker's new one excludes as well."""

    def __init__(self, factory: Callable[[], AbstractContextManager[object]]) -> None:
        self._factory = factory
        self._locks: weakref.WeakValueDictionary[Path, AbstractContextManager[object]] = (
            weakref.WeakValueDictionary())
        self._guard = threading.Lock()

    def get(self, path: Path) -> AbstractContextManager[object]:
        with self._guard:
            lock = self._locks.get(path)
            if lock is None:
                lock = self._locks[path] = self._factory()
            return lock


# A recount and a delivery of one mailbox must not interleave, or the count would miss or
# double the new message (re-entrant: a recount may happen inside a delivery's count).
_MAILBOX_LOCKS = PathLocks(threading.RLock)


class Maildir:
    """One subscriber mailbox. Methods block (file I/O, fsync): call them in an executor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = _MAILBOX_LOCKS.get(path)

    @classmethod
    def for_address(cls, root: Path, address: str) -> Maildir:
        """The mailbox of a canonical address (``ispd.store.validation.mail_address``), whose
        parts cannot climb out of the root."""
        local, _, domain = address.rpartition("@")
        return cls(root / domain / local)

    def exists(self) -> bool:
        return (self.path / "new").is_dir()

    def set_aside(self) -> Path | None:
        """A deleted mailbox's Maildir, renamed under a name no address can have ('~'), so that
        whoever gets the address next starts empty (owner and modes stay as they were); where it
        went, or None when there was none."""
        if not self.path.exists():
            return None
        archive = self.path.with_name(f"{self.path.name}~deleted-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}")
        self.path.rename(archive)
        return archive

    def left_over(self) -> str | None:
        """Why a new mailbox must not be made here: a directory under the address (a former
        owner's mail, by hand or from an old ispd) would hand that mail to the new owner."""
        if not self.path.exists():
            return None
        return (f"{self.path} already exists (the mail of a former owner of this address?): move it away first, "
                "so that the new owner does not get that mail")

    def create(self) -> None:
        """The INBOX and the special-use folders, subscribed; safe to repeat, and completes a
        mailbox some other tool made in part."""
        created = not self.exists()
        self.path.parent.mkdir(mode=_MODE_DIR, parents=True, exist_ok=True)
        self.path.mkdir(mode=_MODE_DIR, exist_ok=True)
        for folder in ("", *SPECIAL_FOLDERS):
            base = self.folder_path(folder)
            base.mkdir(mode=_MODE_DIR, exist_ok=True)
            _remake_subdirectories(base)
            if folder:
                (base / "maildirfolder").touch(mode=_MODE_FILE, exist_ok=True)
        if not (self.path / "subscriptions").exists():
            self._write_subscriptions(list(SPECIAL_FOLDERS))
        if created:
            fsync_directory(self.path)
            fsync_directory(self.path.parent)

    def folder_path(self, folder: str) -> Path:
        """The directory of a folder ("" is the INBOX; "Archive.2026" a subfolder of Archive)."""
        return self.path / f".{folder}" if folder else self.path

    def folders(self) -> list[str]:
        """The folder names besides the INBOX, sorted."""
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return []
        return sorted(e.name[1:] for e in entries
                      if e.name.startswith(".") and e.name not in (".", "..") and e.is_dir()
                      and os.path.isdir(os.path.join(e.path, "cur")))

    def subscriptions(self) -> list[str]:
        """The subscribed folder names. Dovecot 2.3 writes its file as version 2: a "V<TAB>2"
        line, an empty line, then each name with TABs between its levels (A<TAB>B for A.B);
        ispd reads that too, and writes version 1 (one name a line), which Dovecot reads."""
        try:
            lines = (self.path / "subscriptions").read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        if lines and lines[0].startswith("V\t"):
            return [line.replace("\t", ".") for line in lines[1:] if line]
        return [line for line in lines if line]

    def set_subscribed(self, folder: str, subscribed: bool) -> None:
        with self._lock:
            names = [n for n in self.subscriptions() if n != folder]
            if subscribed:
                names.append(folder)
            self._write_subscriptions(names)

    def _write_subscriptions(self, names: list[str]) -> None:
        self._replace(self.path / "subscriptions", "".join(f"{n}\n" for n in names).encode())

    def create_folder(self, folder: str) -> None:
        """A new folder (FileExistsError if there is one of that name)."""
        base = self.folder_path(folder)
        base.mkdir(mode=_MODE_DIR)
        for sub in ("tmp", "new", "cur"):
            (base / sub).mkdir(mode=_MODE_DIR)
        (base / "maildirfolder").touch(mode=_MODE_FILE)
        fsync_directory(self.path)

    def delete_folder(self, folder: str) -> None:
        """The folder and its mail; the quota usage is counted again."""
        shutil.rmtree(self.folder_path(folder))
        fsync_directory(self.path)
        self.recompute_usage()

    def rename_folder(self, old: str, new: str) -> None:
        """A folder and its subfolders (``old.x`` becomes ``new.x``)."""
        for name in sorted((f for f in self.folders() if f == old or f.startswith(old + ".")), key=len):
            os.rename(self.folder_path(name), self.folder_path(new + name[len(old):]))
        fsync_directory(self.path)
        with self._lock:  # subscriptions follow the folders
            self._write_subscriptions([new + n[len(old):] if n == old or n.startswith(old + ".") else n
                                       for n in self.subscriptions()])

    def deliver(self, message: bytes, *, folder: str = "", now: float | None = None,
                received_at: float | None = None) -> DeliveredMessage:
        """Store a message durably in the folder's new/. ``message`` may have CRLF line ends
        (as SMTP carries it); it is kept with LF. ``received_at``: its IMAP internal date (the
        file's mtime, as Dovecot keeps it) when not now - an APPEND's date-time."""
        data = message.replace(b"\r\n", b"\n")
        # Not len + one per LF: a CR before a line's CRLF (a bare CR) is left as CR LF, which
        # IMAP serves as it is (with_crlf), without a second CR.
        virtual_size = crlf_size(data)
        base = self.folder_path(folder)
        while True:
            name = unique_name(len(data), virtual_size, now)
            temporary = base / "tmp" / name
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            try:
                fd = os.open(temporary, flags, _MODE_FILE)
            except FileNotFoundError:
                _remake_subdirectories(base)
                fd = os.open(temporary, flags, _MODE_FILE)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if received_at is not None:
                    os.utime(fd, (received_at, received_at))
                os.fsync(fd)
            except BaseException as exc:
                os.close(fd)
                temporary.unlink(missing_ok=True)
                if isinstance(exc, OSError):
                    name_in(exc, temporary)
                raise
            os.close(fd)
            try:
                with self._lock:  # the message and its maildirsize line appear together
                    # link(), not rename(): it never replaces a message that has the same name.
                    try:
                        os.link(temporary, base / "new" / name)
                    except FileNotFoundError:  # new/ lost as tmp/ can be (its tmp/ file is there)
                        _remake_subdirectories(base)
                        os.link(temporary, base / "new" / name)
                    try:
                        self._count(len(data), 1)
                    except OSError:
                        # The message is delivered: failing now would make the sender send it
                        # again. A stale count is mended by the next recount.
                        (self.path / "maildirsize").unlink(missing_ok=True)
            except FileExistsError:
                continue
            finally:
                temporary.unlink(missing_ok=True)
            break
        fsync_directory(base / "new")
        return DeliveredMessage(name=name, size=len(data), virtual_size=virtual_size)

    # --- quota

    def usage(self, quota_bytes: int | None = None) -> QuotaUsage:
        """Bytes and messages in every folder, from ``maildirsize`` (recomputed if missing, and,
        as Maildir++ says, when it shows the mailbox full and is over 15 minutes old: mail
        removed by other tools would otherwise keep it full)."""
        path = self.path / "maildirsize"
        try:
            text = path.read_text(encoding="ascii", errors="replace")
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return self.recompute_usage()
        total_bytes = total_messages = 0
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) != 2:
                continue
            try:
                total_bytes += int(fields[0])
                total_messages += int(fields[1])
            except ValueError:
                return self.recompute_usage()  # a corrupt file: the files on disk are the truth
        if quota_bytes is not None and total_bytes >= quota_bytes and age > 900:
            return self.recompute_usage()
        return QuotaUsage(max(total_bytes, 0), max(total_messages, 0))

    def recompute_usage(self) -> QuotaUsage:
        with self._lock:
            total_bytes = total_messages = 0
            for folder in ("", *self.folders()):
                base = self.folder_path(folder)
                for sub in ("new", "cur"):
                    try:
                        entries = os.scandir(base / sub)
                    except FileNotFoundError:
                        continue
                    with entries:
                        for entry in entries:
                            if entry.name.startswith("."):
                                continue
                            size = size_of(entry.name)
                            if size is None:
                                try:
                                    size = entry.stat().st_size
                                except FileNotFoundError:
                                    continue  # moved or expunged while we looked
                            total_bytes += size
                            total_messages += 1
            if self.exists():
                self._replace(self.path / "maildirsize", f"0S\n{total_bytes} {total_messages}\n".encode())
            return QuotaUsage(total_bytes, total_messages)

    def uncount(self, size: int) -> None:
        """A message of ``size`` bytes was expunged."""
        with self._lock:
            try:
                self._count(-size, -1)
            except OSError:
                (self.path / "maildirsize").unlink(missing_ok=True)  # recounted at the next look

    def _count(self, size: int, messages: int) -> None:
        """Called with the lock held."""
        path = self.path / "maildirsize"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            self.recompute_usage()  # counts what was just delivered
            return
        try:
            os.write(fd, f"{size} {messages}\n".encode())
            grown = os.fstat(fd).st_size > _MAILDIRSIZE_LIMIT
        finally:
            os.close(fd)
        if grown:
            self.recompute_usage()

    def _replace(self, path: Path, content: bytes) -> None:
        temporary = self.path / "tmp" / f".{path.name}.{os.getpid()}.{threading.get_ident()}"
        try:
            temporary.write_bytes(content)
        except FileNotFoundError:
            _remake_subdirectories(self.path)
            temporary.write_bytes(content)
        os.chmod(temporary, _MODE_FILE)
        os.replace(temporary, path)
