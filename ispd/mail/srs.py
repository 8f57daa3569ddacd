"""The Sender Rewriting Scheme (SRS): forwarded mail that still passes SPF, and its bounces.

An alias of ours that forwards to an address elsewhere sends the message on from our address. If
the envelope sender stayed the original one (bob@example.com), the target checks SPF for
example.com against our address and fails it: Gmail and most large providers then refuse or junk
it. So, as Postfix does with postsrsd, a forwarded message's sender becomes an address of ours
that carries the original one and a signature:

    SRS0=HHHH=TT=example.com=bob@isp.example

TT is the day (two base32 characters, days since the epoch modulo 1024), HHHH the first four
base64 characters of HMAC-SHA1 over the lowercased TT, domain and local part, keyed with the
first of our secrets. A bounce to that address comes to our MX, which checks the signature with
each secret (so a secret can be rotated: a new first line signs, the old ones still verify) and
the age (``max_age_days``), and sends the bounce on to bob@example.com; a forged or expired one
is refused, so the MX is no open relay for bounces.

A sender that is already an SRS address of another forwarder is not wrapped again (SRS1): its
bounce goes straight back to that forwarder, which holds the original.

    SRS0=HHHH=TT=example.com=bob@fwd.example  ->  SRS1=HHHH=fwd.example==HHHH=TT=example.com=bob@isp.example

Unchanged: the null sender, and a sender at one of our own domains (SPF passes for those from
here already). The scheme is libsrs2's (Shevek's SRS), with RFC 4648's base64 alphabet; the
signature is compared without regard to case, as some MTAs fold a local part's case.

Local parts are signed and undone unquoted, and quoted (RFC 5321 §4.1.2) where they are no
dot-atom: a sender "john doe"@example.com or bob@[192.0.2.1] puts a space or brackets into ours,
which must go out as "SRS0=HHHH=TT=example.com=john doe"@isp.example to be an address at all (and
so come back, as the MX's parser hands it over, quoted).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets as random_secrets
import tempfile
from collections.abc import Collection, Sequence
from pathlib import Path

TIME_PRECISION = 86400  # one TT per day
_TIME_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_TIME_SLOTS = 1024  # two base32 characters
HASH_LENGTH = 4
# SRS0 and SRS1 local parts; libsrs2 accepts "=", "-" and "+" after the tag, "=" between fields.
_SRS0 = re.compile(r"^SRS0[=+-]([^=]+)=([^=]+)=([^=]+)=(.+)$", re.IGNORECASE)
# SRS1's last field keeps the separator that followed the first forwarder's "SRS0".
_SRS1 = re.compile(r"^SRS1[=+-]([^=]+)=([^=]+)=([=+-].+)$", re.IGNORECASE)
_TAG = re.compile(r"^SRS[01][=+-]", re.IGNORECASE)
# RFC 5321 §4.1.2 Dot-string (RFC 6531 §3.3: UTF-8 is atext too): what needs no quotes.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\U0010ffff-]+"
_DOT_STRING = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")


class SRSError(ValueError):
    """An SRS address that cannot be undone: forged, damaged or too old (its text says which)."""


def is_srs(local_part: str) -> bool:
    return _TAG.match(unquoted(local_part)) is not None


def unquoted(local_part: str) -> str:
    """A local part as its text: a Quoted-string's quotes and backslashes taken off."""
    if len(local_part) >= 2 and local_part[0] == local_part[-1] == '"':
        return re.sub(r"\\(.)", r"\1", local_part[1:-1])
    return local_part


def quoted(local_part: str) -> str:
    """A local part as an address writes it: a Dot-string as it is, else a Quoted-string."""
    if _DOT_STRING.fullmatch(local_part):
        return local_part
    return '"' + local_part.replace("\\", "\\\\").replace('"', '\\"') + '"'


class SenderRewriter:
    """Signs forwarded senders into addresses at ``domain`` and undoes them.

    ``secrets``: the first signs, all verify. ``local_domains``: senders at these stay as they are."""

    def __init__(self, secrets: Sequence[bytes], domain: str, local_domains: Collection[str], *,
                 max_age_days: int = 21) -> None:
        if not secrets:
            raise ValueError("SRS needs at least one secret")
        self.secrets = list(secrets)
        self.domain = domain.lower()
        self.local_domains = frozenset(d.lower() for d in local_domains)
        self.max_age_days = max_age_days

    def forward(self, sender: str, now: float) -> str:
        """The envelope sender a message forwarded elsewhere goes out with."""
        local, at, domain = sender.rpartition("@")
        if not at or not local or not domain or domain.lower() in self.local_domains:
            return sender
        local = unquoted(local)
        if (srs1 := _SRS1.match(local)) is not None:  # someone's SRS1: re-signed, the first forwarder kept
            _, first_forwarder, rest = srs1.groups()
            return self._srs1(first_forwarder, rest)
        if _SRS0.match(local) is not None:  # another forwarder's SRS0: it holds the original
            return self._srs1(domain, local[4:])
        stamp = _timestamp(now)
        return f"{quoted(f'SRS0={self._hash(0, stamp, domain, local)}={stamp}={domain}={local}')}@{self.domain}"

    def _srs1(self, forwarder: str, rest: str) -> str:
        # ``rest`` keeps its leading separator: SRS1=HHHH=fwd.example==HHHH=TT=domain=local.
        return f"{quoted(f'SRS1={self._hash(0, forwarder, rest)}={forwarder}={rest}')}@{self.domain}"

    def reverse(self, address: str, now: float, *, check_age: bool = True) -> str | None:
        """Where a bounce to ``address`` goes: None if it is no SRS address of ours; ``SRSError``
        if it is one that fails its signature or (``check_age``) is older than max_age_days. Any
        of our domains is ours (the signature does not cover it): addresses made before the
        SRS domain changed still come back."""
        local, at, domain = address.rpartition("@")
        domain = domain.lower().removesuffix(".")
        if not at or (domain != self.domain and domain not in self.local_domains) or not is_srs(local):
            return None
        local = unquoted(local)
        if (srs0 := _SRS0.match(local)) is not None:
            given, stamp, original_domain, original_local = srs0.groups()
            if len(stamp) != 2 or any(c not in _TIME_ALPHABET for c in stamp.upper()):
                raise SRSError("its timestamp is damaged")
            self._verify(given, stamp, original_domain, original_local)
            if check_age and _age_days(stamp.upper(), now) > self.max_age_days:
                raise SRSError(f"it is older than {self.max_age_days} days")
            return f"{quoted(original_local)}@{original_domain}"
        if (srs1 := _SRS1.match(local)) is not None:
            given, forwarder, rest = srs1.groups()
            self._verify(given, forwarder, rest)
            return f"{quoted('SRS0' + rest)}@{forwarder}"
        raise SRSError("it is no SRS0 or SRS1 address")

    def _verify(self, given: str, *fields: str) -> None:
        if len(given) != HASH_LENGTH:
            raise SRSError("its signature is damaged")
        # As bytes: compare_digest refuses str with non-ASCII in it (TypeError), and an SMTPUTF8
        # client may put any UTF-8, or bytes that are none (surrogate escapes), where HHHH goes.
        given_bytes = given.lower().encode("utf-8", "surrogateescape")
        for index in range(len(self.secrets)):
            if hmac.compare_digest(self._hash(index, *fields).lower().encode(), given_bytes):
                return
        raise SRSError("its signature is wrong")

    def _hash(self, secret_index: int, *fields: str) -> str:
        mac = hmac.new(self.secrets[secret_index], digestmod=hashlib.sha1)
        for text in fields:
            mac.update(text.lower().encode("utf-8", "surrogateescape"))
        return base64.b64encode(mac.digest()).decode()[:HASH_LENGTH]


def _timestamp(now: float) -> str:
    day = int(now // TIME_PRECISION) % _TIME_SLOTS
    return _TIME_ALPHABET[day >> 5] + _TIME_ALPHABET[day & 31]


def _age_days(stamp: str, now: float) -> int:
    then = (_TIME_ALPHABET.index(stamp[0]) << 5) | _TIME_ALPHABET.index(stamp[1])
    age = (int(now // TIME_PRECISION) - then) % _TIME_SLOTS
    # A day ahead: made before the wall clock was stepped back across midnight UTC (NTP, an
    # operator; a step of two hours at 00:30 does it), not 1023 days ago.
    return 0 if age == _TIME_SLOTS - 1 else age


def load_secrets(path: Path) -> list[bytes]:
    """The secrets in ``path``, one per line (blank lines and ``#`` comments skipped), the
    signing one first; a missing file is made, mode 0600, with one random secret, as postsrsd's
    package does. Raises ``OSError`` or ``ValueError`` (a file with no secret in it, or one that
    others than its owner may read).

    Two processes may find it missing at once (nodes sharing the directory, started together):
    the file is written whole under a temporary name and linked into place, so that neither
    reads it half-written, and the one whose link comes second reads the other's, so that both
    sign with the same secret."""
    try:
        return read_secrets(path)
    except FileNotFoundError:
        secret = base64.b64encode(random_secrets.token_bytes(24))
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # (mode 0600)
        try:
            try:
                os.write(fd, secret + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(temporary, path)
        except FileExistsError:  # made by another process since: its secret
            pass
        else:
            return [secret]
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        return read_secrets(path)


def read_secrets(path: Path) -> list[bytes]:
    """The secrets of an existing file; ``ValueError`` for one with none, or that others than
    its owner may read (whoever reads it can sign addresses that the MX relays)."""
    with path.open("rb") as file:
        mode = os.fstat(file.fileno()).st_mode
        text = file.read()
    if mode & 0o077:
        raise ValueError(f"{path} may be read by others than its owner (mode {mode & 0o777:o}): chmod 600 it")
    found = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(b"#")]
    if not found:
        raise ValueError(f"{path} holds no secret (one per line; the first signs)")
    return found
