"""What the first DNS process keeps of the files it loaded, and what a worker reads from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ispd.dns.datafiles import DiskFiles, FileStore, HandedFiles, write_manifest


def test_a_worker_reads_what_the_first_read_not_the_file_now(tmp_path: Path) -> None:
    zone, key = tmp_path / "a.zone", tmp_path / "server.key"
    zone.write_bytes(b"loaded")
    key.write_bytes(b"secret")
    disk = DiskFiles(remember=True)
    assert disk.read(zone) == b"loaded"
    assert disk.file(key) == key
    store = FileStore(tmp_path / "handed")
    store.use(store.put(disk.take()))
    manifest = tmp_path / "worker.files.json"
    write_manifest(store.manifest(), manifest)
    zone.write_bytes(b"edited, not reloaded")
    key.unlink()  # (a renewal half done)
    handed = HandedFiles(manifest)
    assert handed.read(zone) == b"loaded"
    assert handed.file(key).read_bytes() == b"secret"
    with pytest.raises(FileNotFoundError, match="not handed over"):
        handed.read(tmp_path / "other.zone")
    # Private, as the config snapshot: a key is among them.
    assert store.directory.stat().st_mode & 0o777 == 0o700
    assert manifest.stat().st_mode & 0o777 == 0o600
    assert {entry.stat().st_mode & 0o777 for entry in store.directory.iterdir()} == {0o600}


def test_a_reload_keeps_the_content_of_a_file_it_did_not_read_again_and_prunes_the_rest(tmp_path: Path) -> None:
    anchors, policy = tmp_path / "anchors", tmp_path / "policy.rpz"
    store = FileStore(tmp_path / "handed")
    store.use(store.put({anchors: b"anchors v1", policy: b"policy v1"}))
    # The reload read the policy again, not the anchors (its validator was kept).
    store.use(store.put({policy: b"policy v2"}, keep=[anchors, policy]))
    store.prune()
    manifest = tmp_path / "m.json"
    write_manifest(store.manifest(), manifest)
    handed = HandedFiles(manifest)
    assert handed.read(anchors) == b"anchors v1" and handed.read(policy) == b"policy v2"
    assert len(list(store.directory.iterdir())) == 2  # policy v1 is gone
    # A file the new config no longer names is not handed.
    store.use(store.put({policy: b"policy v2"}, keep=[policy]))
    write_manifest(store.manifest(), manifest)
    handed.refresh()
    with pytest.raises(FileNotFoundError):
        handed.read(anchors)


def test_a_certificate_that_changes_while_it_loads_is_refused(tmp_path: Path) -> None:
    certificate = tmp_path / "server.pem"
    certificate.write_bytes(b"old")
    disk = DiskFiles(remember=True)
    disk.file(certificate)
    certificate.write_bytes(b"new")  # (ssl may have read either)
    with pytest.raises(OSError, match="changed while it was being loaded"):
        disk.check_unchanged([certificate])
    DiskFiles().check_unchanged([certificate])  # (one process alone hands nothing: no check)


def test_a_copy_the_disk_has_no_room_for_leaves_no_part_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From the verification: a reload refused on a full disk left its partial copy, which kept
    the disk full, so every later reload and worker restart failed too."""
    import errno
    import os

    store = FileStore(tmp_path / "handed")
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fd: int, *args: object) -> None:
            self.file = real_fdopen(fd, "wb")

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

        def write(self, data: bytes) -> int:
            self.file.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", FullDisk)
    with pytest.raises(OSError):
        store.put({tmp_path / "big.rpz": b"x" * 1000})
    with pytest.raises(OSError):
        write_manifest({"files": {}}, tmp_path / "worker.files.json")
    monkeypatch.undo()
    assert list(store.directory.iterdir()) == [] and list(tmp_path.glob(".*.tmp")) == []
