"""Reading what ispd delivered: the messages in a mailbox's Maildir, oldest first."""

from __future__ import annotations

from pathlib import Path


def inbox(root: Path, address: str) -> list[bytes]:
    """The messages in new/ of ``address``'s Maildir under ``root`` ([mail] maildir_root)."""
    local, _, domain = address.partition("@")
    new = root / domain / local / "new"
    if not new.is_dir():
        return []
    return [p.read_bytes() for p in sorted(new.iterdir(), key=lambda p: p.stat().st_mtime_ns)]
