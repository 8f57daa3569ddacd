"""MailService's own tables, on a stand-in for the service (its constructor wants a whole store)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from ispd.config import Config
from ispd.mail.config import MailConfig
from ispd.mail.metrics import MailMetrics
from ispd.mail.service import MailService
from ispd.service import ServiceStartError


class IdlingSession:
    def __init__(self, maildir: Path, folder: str = "") -> None:
        self.maildir = SimpleNamespace(path=maildir)
        self.selected = SimpleNamespace(folder=folder)


def test_a_folder_nobody_idles_in_any_more_leaves_the_idle_table() -> None:
    """From a soak review: the table kept a key for every folder anyone ever idled in."""
    service = SimpleNamespace(_idlers={})
    sessions = [IdlingSession(Path(f"/mail/isp.example/user{n}")) for n in range(2)]
    shared = IdlingSession(Path("/mail/isp.example/user0"))
    for session in [*sessions, shared]:
        MailService.watch_imap(service, session)  # type: ignore[arg-type]
    MailService.unwatch_imap(service, sessions[0])  # type: ignore[arg-type]
    assert service._idlers == {(Path("/mail/isp.example/user0"), ""): {shared},
                               (Path("/mail/isp.example/user1"), ""): {sessions[1]}}
    MailService.unwatch_imap(service, sessions[1])  # type: ignore[arg-type]
    MailService.unwatch_imap(service, shared)  # type: ignore[arg-type]
    assert service._idlers == {}


def test_a_reload_refused_for_its_srs_secret_file_leaves_the_certificate_as_it_was(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The new certificate went into 465's live context before the SRS secret file (or a DKIM
    key) was read: a reload refused for an emptied secret file kept the old settings but served
    the new certificate."""
    secret = tmp_path / "srs.secret"
    secret.write_text("# being rotated\n")
    secret.chmod(0o600)
    old = Config(mail=MailConfig(domains=["isp.example"], certificate=tmp_path / "old.pem",
                                 private_key=tmp_path / "old.key", srs_secret_file=secret))
    new = old.model_copy(update={"mail": old.mail.model_copy(update={"certificate": tmp_path / "new.pem",
                                                                     "private_key": tmp_path / "new.key"})})
    loaded: list[Path] = []
    live = SimpleNamespace(load_cert_chain=lambda certificate, key: loaded.append(certificate))
    service = MailService.__new__(MailService)
    service.tls_context = live  # type: ignore[assignment]
    service.metrics = MailMetrics()
    monkeypatch.setattr(MailService, "_tls", staticmethod(lambda config: SimpleNamespace()))
    with pytest.raises(ServiceStartError, match="holds no secret"):
        asyncio.run(service.reload(old, new))
    assert loaded == [] and service.tls_context is live


def test_every_spelling_of_a_login_counts_toward_its_growing_delay() -> None:
    """Spaces around it, a domain's case or final dot reach the same account (authenticate
    strips and reads the address so): each spelling had a count of its own, so a guesser
    spread over addresses answered at the base delay for ever by changing the spelling."""
    from ispd.listeners import AuthThrottle

    service = MailService.__new__(MailService)
    service.throttle = AuthThrottle(per_address=1000, window=900, base_delay=0.01, max_delay=15)
    service.metrics = MailMetrics()
    spellings = [b"alice@isp.example", b" alice@isp.example", b"alice@isp.example  ", b"\talice@isp.example",
                 b"ALICE@ISP.EXAMPLE", b"alice@isp.example.", b"Alice@Isp.Example. "]
    for number, login in enumerate(spellings):
        asyncio.run(service.auth_failed(f"198.51.100.{number}", login))
    assert service.throttle.delay("alice@isp.example", 0.0) >= 0.01 * 2 ** (len(spellings) - 3)
    service.auth_succeeded(b" ALICE@isp.example.")  # the owner logs in: the count starts afresh
    assert service.throttle.delay("alice@isp.example", 0.0) == 0.01


@pytest.mark.parametrize(("postmaster", "mailboxes", "aliases", "unreachable"), [
    (None, set(), set(), ["isp.example", "other.example"]),  # the annotated config's default
    ("noc@isp.example", set(), set(), ["isp.example", "other.example"]),  # a mailbox never made
    ("noc@isp.example", {"noc@isp.example"}, set(), None),
    (None, {"postmaster@isp.example"}, {"postmaster@other.example"}, None),
    (None, {"postmaster@isp.example"}, set(), ["other.example"]),
])
def test_a_postmaster_address_that_reaches_nobody_is_warned_about(postmaster: str | None, mailboxes: set[str],
                                                                  aliases: set[str],
                                                                  unreachable: list[str] | None) -> None:
    """RFC 5321 §4.5.1: postmaster@ must take mail. With `postmaster` unset (the default) or
    naming a mailbox that does not exist, and no mailbox or alias at postmaster@, the MX refused
    it 550 5.1.1 and neither check-config nor the log said a word."""
    from structlog.testing import capture_logs

    from ispd.mail.engine import MXPolicy

    async def mail_recipient(address: str) -> object:
        return object() if address in mailboxes else None

    async def mail_alias(address: str) -> object:
        return object() if address in aliases else None

    service = MailService.__new__(MailService)
    service.config = MailConfig(domains=["isp.example", "other.example"], postmaster=postmaster)
    service.policy = MXPolicy(service.config.domains, postmaster=postmaster)
    service.context = SimpleNamespace(store=SimpleNamespace(mail_recipient=mail_recipient,  # type: ignore[assignment]
                                                            mail_alias=mail_alias))
    with capture_logs() as logs:
        asyncio.run(service._warn_unreachable_postmaster())
    warnings = [e for e in logs if e["event"] == "mail.postmaster.unreachable"]
    assert [e["domains"] for e in warnings] == ([unreachable] if unreachable else [])


@pytest.mark.parametrize("body", [b"plain\r\n", b"a bare CR\rin a line\r\n", b"a bare LF\nin a line\r\n"])
def test_a_submitted_message_is_signed_as_it_goes_on_the_wire(body: bytes) -> None:
    """From a code read: a message with a bare CR was signed as submitted, and the queue's
    client (aiosmtplib) then sent that CR as a line end: ispd's own DKIM signature failed at
    the receiver (the mail refused under DMARC p=reject)."""
    from concurrent.futures import ThreadPoolExecutor

    import dkim
    from aiosmtplib.protocol import LINE_ENDINGS_REGEX

    from ispd.mail.authcheck import load_signing_key
    from ispd.mail.smtp import MailEnvelope
    from tests.lab.dnshier import DKIM_LAB_KEY, DKIM_LAB_RECORD

    service = MailService.__new__(MailService)
    service.signing = {"relay.example-a.test": load_signing_key("relay.example-a.test", "lab", DKIM_LAB_KEY)}
    service._signing_executor = ThreadPoolExecutor(1)
    message = b"From: carol@relay.example-a.test\r\nTo: bob@remote.example\r\nSubject: t\r\n\r\n" + body
    signed = asyncio.run(service._dkim_sign(message, MailEnvelope()))
    on_the_wire = LINE_ENDINGS_REGEX.sub(b"\r\n", signed)  # as client.data() writes it
    assert dkim.verify(on_the_wire, dnsfunc=lambda name, timeout=5: DKIM_LAB_RECORD.encode())
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: DKIM_LAB_RECORD.encode())  # the local copies


async def test_a_login_is_a_username_never_an_id(tmp_path: Path) -> None:
    """An account number as the username ("1") that is also another subscriber's id: mail's
    AUTH looked the login up as the CLI names a subscriber, got "names two subscribers" and
    answered every login of it with a temporary failure (454, IMAP [UNAVAILABLE]) and an error
    in the log, for as long as both exist, while RADIUS let it in. And "#4" (or "4" where no
    username is "4") logged subscriber #4 in by its id, a login RADIUS refuses."""
    from ispd.credentials import PasswordChecker, derive_credentials
    from ispd.listeners import AuthThrottle
    from ispd.mail.service import Identity
    from ispd.store import StoreConfig, StoreMetrics, open_store
    from ispd.store.models import CredentialPolicy

    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"), StoreMetrics(), lambda: 1_800_000_000.0)
    try:
        for username in ("alice", "1"):  # #1 and #2
            await store.add_subscriber(username, actor="test", credentials=derive_credentials(
                f"{username}-secret", CredentialPolicy.CLEARTEXT, 0.0))
        service = MailService.__new__(MailService)
        service.context = SimpleNamespace(store=store, clock=lambda: 1_800_000_000.0)  # type: ignore[assignment]
        service.throttle = AuthThrottle(per_address=1000, window=900, base_delay=0.01)
        service.passwords = PasswordChecker(60)
        assert await service.authenticate(b"1", b"1-secret") == Identity(2, "1")
        assert await service.authenticate(b"alice", b"alice-secret") == Identity(1, "alice")
        for by_id, password in ((b"#1", b"alice-secret"), (b"#2", b"1-secret"), (b"2", b"1-secret")):
            assert await service.authenticate(by_id, password) is None
    finally:
        await store.close()
