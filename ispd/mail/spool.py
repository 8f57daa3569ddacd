"""The outbound queue's message files: ``<queue_directory>/<queue id>``, written to ``tmp/``,
fsynced and renamed into place (then the directory fsynced), so that a queue row in the store
never names a file that a crash could lose. Files without a row (a crash between the file and
the row, or a deletion) are removed by ``orphans``'s caller after a grace period, and so are
files a crash left in ``tmp/`` (``remove_stale_temporaries``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ispd.mail.maildir import fsync_directory, name_in

ORPHAN_GRACE_SECONDS = 3600.0


class Spool:
    """Blocking file I/O: call from an executor."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def prepare(self) -> None:
        (self.directory / "tmp").mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)

    def path(self, queue_id: str) -> Path:
        if not queue_id.isalnum():  # ids are ours (hex), but the CLI passes what it is given
            raise ValueError(f"{queue_id!r} is not a queue id")
        return self.directory / queue_id

    def write(self, queue_id: str, message: bytes) -> None:
        temporary = self.directory / "tmp" / queue_id
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            try:
                view = memoryview(message)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.path(queue_id))
        except BaseException as exc:
            # A full disk, most often: the client is told to try again, and the part written
            # must not stay to keep the disk full.
            temporary.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                name_in(exc, temporary)
            raise
        fsync_directory(self.directory)

    def read(self, queue_id: str) -> bytes:
        return self.path(queue_id).read_bytes()

    def remove(self, queue_id: str) -> None:
        self.path(queue_id).unlink(missing_ok=True)

    def remove_stale_temporaries(self, now: float | None = None) -> list[str]:
        """Removes the files in tmp/ older than the grace period (a crash cut their writing);
        their names."""
        now = time.time() if now is None else now
        removed = []
        for entry in os.scandir(self.directory / "tmp"):
            try:
                if entry.is_file() and now - entry.stat().st_mtime > ORPHAN_GRACE_SECONDS:
                    os.unlink(entry.path)
                    removed.append(entry.name)
            except FileNotFoundError:
                continue
        return removed

    def orphans(self, known: set[str], now: float | None = None) -> list[str]:
        """Files no queue row names, older than the grace period."""
        now = time.time() if now is None else now
        found = []
        for entry in os.scandir(self.directory):
            if not entry.is_file() or entry.name in known:
                continue
            try:
                if now - entry.stat().st_mtime > ORPHAN_GRACE_SECONDS:
                    found.append(entry.name)
            except FileNotFoundError:
                continue  # removed by its delivery while we looked
        return found
