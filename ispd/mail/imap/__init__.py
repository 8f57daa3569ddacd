"""IMAP4rev1 (RFC 3501) with the IMAP4rev2 (RFC 9051) behaviours clients rely on: the command
codec (``framing``, ``parser``), and later the engine and transport over the mailstore."""
