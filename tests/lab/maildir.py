"""Reading what ispd delivered: the messages in a mailbox's Maildir, oldest first."""

from __future__ import annotations

from pathlib import Path


def inbox(root: Path, address: str) -> list[bytes]:
    """The messages in the INBOX (new/ and cur/) of ``address``'s Maildir under ``root`` ([mail]
    maildir_root), in delivery order."""
    local, _, domain = address.partition("@")
    box = root / domain / local
    files = [p for sub in ("new", "cur") if (box / sub).is_dir() for p in (box / sub).iterdir()]
    return [p.read_bytes() for p in sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))]
