"""Password forms: deriving what the store keeps, and checking a password against it.

The verifier is a PHC-style scrypt string (``$scrypt$ln=14,r=8,p=1$<salt>$<hash>``): memory-hard,
in the standard library, and slow enough (~50 ms) that it must run in an executor, never on the
event loop. Which other forms are kept is the subscriber's effective ``CredentialPolicy``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

from Crypto.Hash import MD4

from ispd.store.models import CredentialPolicy, Plan, StoredCredentials

_SCRYPT_LOG2_N = 14
_SCRYPT_R = 8
_SCRYPT_P = 1
_SALT_BYTES = 16
_KEY_BYTES = 32
_MAX_PASSWORD_BYTES = 1024


class PasswordRejected(ValueError):
    """A password that cannot be stored (empty, too long, not text)."""


def effective_policy(own: CredentialPolicy | None, plan: Plan | None) -> CredentialPolicy:
    """The subscriber's own policy when it has one, else its plan's, else the safest."""
    if own is not None:
        return own
    return plan.credential_policy if plan is not None else CredentialPolicy.VERIFIER


def check_password_acceptable(password: str) -> None:
    if not password:
        raise PasswordRejected("the password is empty")
    try:
        encoded = password.encode("utf-8")
    except UnicodeEncodeError:
        raise PasswordRejected("the password is not valid UTF-8") from None
    if len(encoded) > _MAX_PASSWORD_BYTES:
        raise PasswordRejected(f"the password is longer than {_MAX_PASSWORD_BYTES} bytes")
    if any(ch in password for ch in "\r\n\x00"):
        raise PasswordRejected("the password contains a line break or NUL")


def derive_credentials(password: str, policy: CredentialPolicy, now: float) -> StoredCredentials:
    """The forms to store for ``password`` under ``policy``. CPU-heavy: call it in an executor."""
    check_password_acceptable(password)
    return StoredCredentials(
        verifier=make_verifier(password),
        nt_hash=nt_hash(password) if policy in (CredentialPolicy.NT_HASH, CredentialPolicy.CLEARTEXT) else None,
        cleartext=password if policy is CredentialPolicy.CLEARTEXT else None,
        updated_at=now,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def make_verifier(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(_SALT_BYTES)
    key = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=1 << _SCRYPT_LOG2_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=_KEY_BYTES
    )
    return f"$scrypt$ln={_SCRYPT_LOG2_N},r={_SCRYPT_R},p={_SCRYPT_P}${_b64(salt)}${_b64(key)}"


def check_verifier(verifier: str, password: str) -> bool:
    """True when ``password`` matches; False for a mismatch or a verifier we cannot read."""
    try:
        _, scheme, params_text, salt_text, key_text = verifier.split("$")
        if scheme != "scrypt":
            return False
        params = dict(item.split("=", 1) for item in params_text.split(","))
        log2_n, r, p = int(params["ln"]), int(params["r"]), int(params["p"])
        if not (1 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
            return False
        salt, expected = _unb64(salt_text), _unb64(key_text)
        actual = hashlib.scrypt(
            password.encode("utf-8"), salt=salt, n=1 << log2_n, r=r, p=p,
            dklen=len(expected), maxmem=256 * 1024 * 1024,
        )
    except (ValueError, KeyError):
        return False
    return hmac.compare_digest(actual, expected)


def nt_hash(password: str) -> bytes:
    """MD4 of the UTF-16LE password (RFC 2759 NtPasswordHash)."""
    return MD4.new(password.encode("utf-16-le")).digest()


def generate_password(length: int = 16) -> str:
    # No look-alike characters: helpdesk staff read these out over the phone.
    alphabet = "abcdefghijkmnpqrstuvwxyzACDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(length))


class PasswordChecker:
    """Checks a password (PAP, SMTP AUTH) against the cheapest form the store keeps: the
    cleartext, else the NT hash (one MD4), else the scrypt verifier (~50 ms: run ``check_slow``
    in an executor). A password that passed the verifier is remembered for ``cache_seconds`` as
    a keyed BLAKE2b hash under a key that lives only in this process (as Dovecot's auth cache
    does), so that the subscriber's next check costs one hash; a password change (a new
    ``updated_at``) or a restart forgets it."""

    def __init__(self, cache_seconds: float) -> None:
        self.cache_seconds = cache_seconds
        self._key = os.urandom(32)
        # subscriber id → (keyed hash of the password, when it was verified, credentials' updated_at)
        self._verified: dict[int, tuple[bytes, float, float]] = {}

    def _digest(self, password: bytes) -> bytes:
        return hashlib.blake2b(password, key=self._key, digest_size=32).digest()

    def check_fast(self, subscriber_id: int, credentials: StoredCredentials, password: bytes,
                   now: float) -> bool | None:
        """True or False when a cheap form decides; None when only the verifier can."""
        if credentials.cleartext is not None:
            return hmac.compare_digest(credentials.cleartext.encode("utf-8"), password)
        if credentials.nt_hash is not None:
            try:
                text = password.decode("utf-8")
            except UnicodeDecodeError:
                return False
            return hmac.compare_digest(nt_hash(text), credentials.nt_hash)
        remembered = self._verified.get(subscriber_id)
        if (remembered is not None and remembered[2] == credentials.updated_at
                and now - remembered[1] < self.cache_seconds):
            if hmac.compare_digest(remembered[0], self._digest(password)):
                return True
            return None  # perhaps a new password the cache has not seen: ask the verifier
        if credentials.verifier is None:
            return False
        return None

    @staticmethod
    def check_slow(verifier: str, password: bytes) -> bool:
        """The scrypt check: run it in an executor."""
        try:
            return check_verifier(verifier, password.decode("utf-8"))
        except UnicodeDecodeError:
            return False

    def remember(self, subscriber_id: int, credentials: StoredCredentials, password: bytes, now: float) -> None:
        if self.cache_seconds <= 0:
            return
        if len(self._verified) > 1_000_000:
            self._verified.clear()
        self._verified[subscriber_id] = (self._digest(password), now, credentials.updated_at)

    def forget(self, subscriber_id: int) -> None:
        self._verified.pop(subscriber_id, None)
