"""The files DNS reads besides its config, and how a worker gets the very bytes the first process loaded.

Besides the config, the DNS service reads local zones, policy zones (RPZ), the root hints, the
DNSSEC trust anchors and the encrypted listeners' certificates and keys. With ``[dns]
processes`` every process must answer from the same data, and that is what the first process
loaded at its last good start or reload: a file edited since (not yet reloaded, or refused by
SIGHUP, or half-written in a certificate renewal) must not reach a worker that restarts.

Theory of operation
-------------------
first process  ``DiskFiles`` reads the disk and, with workers to feed, remembers each file's
               bytes as it read them. When a start or a reload has read everything, the service
               puts what was read into a ``FileStore`` (``<store>.dns-files/`` beside the store:
               on disk rather than in /run's memory, and one per store, which one daemon holds;
               whatever a killed daemon left there goes at the next start; mode 0700: one file
               per content, named by its SHA-256, mode 0600 like the config snapshot, since a
               private key is among them) and gets a manifest, path → content name. A file the
               reload did not read again (the trust anchors when ``[dns.dnssec]`` is unchanged:
               the validator is kept) keeps the content the last manifest gave it. Each worker
               is handed the manifest with its config snapshot (``WorkerService.handed``), at
               every start and at every reload it follows; contents no manifest names any more
               are removed once the workers have followed.
worker         ``HandedFiles`` answers every read from the manifest beside its snapshot (read
               again at each start and reload), never from the disk; a file missing from it is an
               error, as an unreadable one would be. ssl loads certificates from files only: the
               worker gives it the content's file.

A certificate is the one file the first process does not parse from the bytes it keeps (ssl reads
the path): it reads the bytes before and after ssl loads the file, and refuses the load when they
differ (a renewal under way), so the bytes handed are those it uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from ispd.config import write_private_file

MANIFEST_VERSION = 1


class DataFiles(Protocol):
    def read(self, path: Path) -> bytes:
        """The bytes of ``path``; ``OSError`` when there are none to have."""

    def file(self, path: Path) -> Path:
        """A file holding the bytes of ``path`` (for ssl, which reads files only)."""

    def check_unchanged(self, paths: Iterable[Path]) -> None:
        """``OSError`` when one of ``paths`` (read with ``file``) changed since."""


class DiskFiles:
    """The disk, as the first process (or a lone one) reads it; with ``remember`` each file's
    bytes are kept for ``take``."""

    def __init__(self, *, remember: bool = False) -> None:
        self.remember = remember
        self._read: dict[Path, bytes] = {}

    def read(self, path: Path) -> bytes:
        data = Path(path).read_bytes()
        if self.remember:
            self._read[Path(path)] = data
        return data

    def file(self, path: Path) -> Path:
        with contextlib.suppress(OSError):  # (ssl says why it cannot read it, naming the file)
            self.read(path)
        return path

    def check_unchanged(self, paths: Iterable[Path]) -> None:
        if not self.remember:
            return
        for path in paths:
            if Path(path).read_bytes() != self._read.get(Path(path)):
                raise OSError(f"{path} changed while it was being loaded (a renewal under way?): try again")

    def take(self) -> dict[Path, bytes]:
        """What was read since the last ``take`` (or ``forget``)."""
        taken, self._read = self._read, {}
        return taken

    def forget(self) -> None:
        self._read = {}


class HandedFiles:
    """A worker's files: those the first process handed over (``FileStore.manifest``)."""

    def __init__(self, manifest_path: Path) -> None:
        self.manifest_path = manifest_path
        self._manifest: dict[str, Any] | None = None

    def refresh(self) -> None:
        """Read the manifest again at the next read (a start or reload is beginning)."""
        self._manifest = None

    def _content(self, path: Path) -> Path:
        if self._manifest is None:
            try:
                self._manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise OSError(f"the files handed over by the main process ({self.manifest_path}) "
                              f"cannot be read: {exc}") from None
        manifest = self._manifest
        assert manifest is not None
        name = manifest.get("files", {}).get(str(path))
        if not isinstance(name, str):
            raise FileNotFoundError(f"{path} was not handed over by the main process")
        return Path(manifest["directory"]) / name

    def read(self, path: Path) -> bytes:
        return self._content(path).read_bytes()

    def file(self, path: Path) -> Path:
        return self._content(path)

    def check_unchanged(self, paths: Iterable[Path]) -> None:
        pass  # (the contents are never changed: a new content is a new file)


class FileStore:
    """The first process's copies of what it loaded, for its workers: one file per content."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)  # (one left by a killed daemon: ours again)
        self.files: dict[str, str] = {}  # the current manifest: path -> content name

    def put(self, read: dict[Path, bytes], keep: Iterable[Path] = ()) -> dict[str, str]:
        """The manifest of ``read``, the contents written; a path in ``keep`` that was not read
        again keeps the content the current manifest gives it. Not yet current (``use``)."""
        files = {str(path): self.files[str(path)] for path in keep if str(path) in self.files}
        for path, data in read.items():
            name = hashlib.sha256(data).hexdigest()
            target = self.directory / name
            if not target.exists():
                write_private_file(target, data)
            files[str(path)] = name
        return files

    def use(self, files: dict[str, str]) -> None:
        self.files = files

    def manifest(self) -> dict[str, Any]:
        """What a worker is handed (``HandedFiles`` reads it)."""
        return {"version": MANIFEST_VERSION, "directory": str(self.directory), "files": dict(self.files)}

    def prune(self) -> None:
        """Remove the contents the current manifest does not name (older ones, refused ones)."""
        wanted = set(self.files.values())
        for entry in self.directory.iterdir():
            if entry.name not in wanted:
                with contextlib.suppress(OSError):
                    entry.unlink()

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def write_manifest(manifest: dict[str, Any], path: Path) -> None:
    """``manifest`` as JSON in ``path`` (mode 0600, as the config snapshot beside it), replaced at once."""
    write_private_file(path, json.dumps(manifest).encode("utf-8"))
