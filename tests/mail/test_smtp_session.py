"""SMTPSession objects as aiosmtpd builds them: what their making and their logins log."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Iterable
from types import SimpleNamespace
from typing import Any

import pytest
import uvloop
from aiosmtpd.smtp import Session

from ispd.listeners import ConnectionGate
from ispd.mail.dnsbl import Listing
from ispd.mail.engine import MXPolicy
from ispd.mail.service import MailService
from ispd.mail.smtp import MailEnvelope, MXHandler, SMTPSession, SubmissionHandler, without_auth_parameter
from ispd.store import StoreError
from tests.dns.test_streams import reset


def fake_service() -> Any:
    config = SimpleNamespace(max_message_bytes=1 << 20, command_timeout_seconds=300)
    return SimpleNamespace(config=config, queue=SimpleNamespace(server_name="mx.isp.example"), tls_context=None,
                           submission_handler=object(), mx_handler=object())


# ispd.mail.smtp ignores aiosmtpd's Python warning of the same false alarm; pytest resets the
# warning filters for each test.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_sessions_and_logins_on_465_log_no_false_alarm_and_other_warnings_still_show(
        caplog: pytest.LogCaptureFixture) -> None:
    """From a soak review: every connection to 465 logged "auth_required == True but
    auth_require_tls == False" (the whole connection is TLS there), and every AUTH "Session.login_data
    is deprecated" (set by aiosmtpd's own AUTH code)."""
    caplog.set_level(logging.WARNING, logger="mail.log")

    async def make_sessions() -> None:
        for listener in ("mx", "submission", "submissions"):
            SMTPSession(fake_service(), listener)
        Session(asyncio.get_running_loop()).login_data = b"alice"  # as aiosmtpd's AUTH does

    asyncio.run(make_sessions())
    logging.getLogger("mail.log").warning("something else aiosmtpd has to say")
    assert [r.getMessage() for r in caplog.records if r.name == "mail.log"] == ["something else aiosmtpd has to say"]


def serving_service() -> Any:
    stats = SimpleNamespace(connections=0, refused_connections=0)
    service = fake_service()
    service.connection_rate = SimpleNamespace(admit=lambda client, now: True)
    service.gate = ConnectionGate(10, 10, stats)
    service.sessions = set()
    service.metrics = SimpleNamespace(listener=stats)
    service.blocklists = SimpleNamespace(applies_to=lambda client: False)
    return service


@contextlib.asynccontextmanager
async def smtp_client(service: Any, listener: str = "mx", *,
                      ehlo: bool = True) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A client of an SMTPSession on loopback, past its greeting (and EHLO's reply)."""
    server = await asyncio.get_running_loop().create_server(lambda: SMTPSession(service, listener), "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        await reader.readline()  # 220
        if ehlo:
            writer.write(b"EHLO client.example\r\n")
            while not (await reader.readline()).startswith(b"250 "):
                pass
        yield reader, writer
    finally:
        server.close()


async def replies_to(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, lines: Iterable[bytes]) -> list[bytes]:
    """The first line of the reply to each of ``lines``, sent one after the other."""
    replies = []
    for line in lines:
        writer.write(line + b"\r\n")
        replies.append(await reader.readline())
    return replies


async def quit_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"QUIT\r\n")
    await reader.read()
    writer.close()


@pytest.mark.parametrize("leave", ["QUIT", "reset"])
def test_a_session_goes_with_its_connection(leave: str, without_cycle_collection: None) -> None:
    """aiosmtpd's session refers to itself (its writer, its tables of bound methods, the callback
    it gave asyncio), and the daemon collects such cycles rarely: on 465, clients that connected
    and went grew it by 38 kB a connection (TLS state and buffers) until it did (measured)."""
    service = serving_service()
    sessions: list[weakref.ref[SMTPSession]] = []

    def make_session() -> SMTPSession:
        session = SMTPSession(service, "mx")
        sessions.append(weakref.ref(session))
        return session

    async def run() -> None:
        server = await asyncio.get_running_loop().create_server(make_session, "127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
            await reader.readline()  # 220
            writer.write(b"EHLO client.example\r\nNOOP\r\n" + (b"QUIT\r\n" if leave == "QUIT" else b""))
            while not (await reader.readline()).startswith(b"250 "):  # the end of EHLO's reply
                pass
            session = sessions[0]()
            assert session is not None and session._handler_coroutine is not None
            task, session = session._handler_coroutine, None
            if leave == "QUIT":
                await reader.read()  # NOOP's 250, QUIT's 221, then the end
                writer.close()
            else:
                reset(writer)
            await asyncio.wait([task], timeout=5)
            await asyncio.sleep(0)  # its done callbacks
        finally:
            server.close()

    uvloop.run(run())
    assert len(sessions) == 1
    assert sessions[0]() is None


def test_a_listed_client_s_relay_attempt_is_refused_as_relaying_not_as_listed() -> None:
    """Postfix checks reject_unauth_destination before reject_rbl_client: a listed client asking
    to relay got the blocklist's 554 and was counted as dnsbl, hiding relay probes in the metrics."""
    refusals: list[str] = []

    async def run() -> list[str]:
        service = fake_service()
        service.policy = MXPolicy(["isp.example"], postmaster="bob@isp.example")
        service.metrics = SimpleNamespace(refusals=SimpleNamespace(inc=refusals.append))
        handler = MXHandler(service)
        session = SMTPSession(service, "mx")
        session.client = "192.0.2.1"
        session.blocklisting = asyncio.ensure_future(asyncio.sleep(0, Listing("bl.example", "127.0.0.2", None)))
        smtp_session = Session(asyncio.get_running_loop())
        return [await handler.handle_RCPT(session, smtp_session, MailEnvelope(), address, [])
                for address in ("x@elsewhere.example", "alice@isp.example")]

    relayed, local = asyncio.run(run())
    assert relayed == "554 5.7.1 <x@elsewhere.example>: Relay access denied", relayed
    assert local.startswith("554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using bl.example")
    assert refusals == ["relay_denied", "dnsbl"]


@pytest.mark.parametrize(("arg", "expected"), [
    ("FROM:<a@isp.example> AUTH=<>", "FROM:<a@isp.example>"),
    ("FROM:<a@isp.example> SIZE=10 auth=a+2Bx@isp.example BODY=8BITMIME", "FROM:<a@isp.example> SIZE=10 BODY=8BITMIME"),
    ("FROM:<a@isp.example> SIZE=10", "FROM:<a@isp.example> SIZE=10"),
    ("FROM:<\"AUTH=<>\"@isp.example>", "FROM:<\"AUTH=<>\"@isp.example>"),  # in the path: not a parameter
    ("FROM:<a@isp.example> XAUTH=1", "FROM:<a@isp.example> XAUTH=1"),
])
def test_the_auth_parameter_of_mail_is_left_out(arg: str, expected: str) -> None:
    assert without_auth_parameter(arg) == expected


def test_a_size_parameter_in_other_digits_than_ascii_is_a_syntax_error(without_cycle_collection: None) -> None:
    """RFC 1870: size-value is 1*20DIGIT (ASCII). aiosmtpd took str.isdigit() for a number:
    "SIZE=²" passed it and int() raised (451, and an error in the log for each such MAIL), and
    "SIZE=٣" (an Arabic-Indic three) was taken for 3 octets. Postfix answers 501 5.5.4."""
    service = serving_service()

    async def run() -> list[bytes]:
        async with smtp_client(service) as (reader, writer):
            replies = []
            for size in ("\u00b2", "\u0663", "1" * 21, "10"):
                writer.write(f"MAIL FROM:<a@elsewhere.example> size={size}\r\nRSET\r\n".encode())
                replies.append(await reader.readline())
                await reader.readline()  # RSET's 250
            await quit_session(reader, writer)
            return replies

    replies = uvloop.run(run())
    assert [r[:9] for r in replies] == [b"501 5.5.4"] * 3 + [b"250 2.0.0"], replies


@pytest.mark.parametrize("stage", ["greeting", "after_ehlo"])
def test_a_silent_client_is_told_421_before_the_close(stage: str, without_cycle_collection: None) -> None:
    """command_timeout_seconds closed the connection without a reply (aiosmtpd's own timeout),
    after a command as in the middle of DATA: the client saw a lost connection where Postfix
    says 421 4.4.2 timeout exceeded (RFC 5321 §3.8: a server that must close says 421)."""
    service = serving_service()
    service.config.command_timeout_seconds = 0.2

    async def run() -> bytes:
        async with smtp_client(service, ehlo=stage == "after_ehlo") as (reader, _):
            return await asyncio.wait_for(reader.read(), 5)

    assert uvloop.run(run()) == b"421 4.4.2 mx.isp.example Error: timeout exceeded\r\n"


def test_auth_on_the_mx_is_refused_as_not_enabled(without_cycle_collection: None) -> None:
    """The MX announces no AUTH, but aiosmtpd ran its own exchange all the same: a subscriber's
    mail client set to port 25 was told 538 5.7.11 "Encryption required" before STARTTLS and,
    after it, 535 5.7.8 "credentials invalid" for the right password (so the subscriber
    changed a password that was right). Postfix's smtpd without SASL answers 503 5.5.1."""
    service = serving_service()

    async def run() -> list[bytes]:
        async with smtp_client(service) as (reader, writer):
            replies = await replies_to(reader, writer, (b"AUTH PLAIN AGFsaWNlAHNlY3JldA==", b"AUTH LOGIN", b"NOOP"))
            await quit_session(reader, writer)
            return replies

    replies = uvloop.run(run())
    assert replies == [b"503 5.5.1 Error: authentication not enabled\r\n"] * 2 + [b"250 2.0.0 OK\r\n"], replies


def test_a_message_of_exactly_the_size_limit_fits_whatever_dots_it_has(without_cycle_collection: None) -> None:
    """RFC 1870 §3: a message's size does not count the dots stuffed before lines that start
    with one. They were counted: a message of exactly max_message_bytes, announced so with
    SIZE= and accepted at MAIL, was refused 552 after its whole transfer when one of its lines
    started with a dot (found with a 25 MiB message on a running daemon)."""
    service = serving_service()
    service.config.max_message_bytes = 1024
    service.replying = set()
    refusals: list[str] = []
    service.metrics.refusals = SimpleNamespace(inc=refusals.append)
    service.metrics.messages = SimpleNamespace(inc=lambda outcome: None)

    def message(size: int) -> bytes:
        text = b"Subject: dots\r\n\r\n" + b".a dotted line\r\n" * 40
        return text + b"z" * (size - len(text) - 2) + b"\r\n"

    async def run() -> list[bytes]:
        async with smtp_client(service) as (reader, writer):
            replies = []
            for size in (1024, 1025):
                declared = " SIZE=1024" if size == 1024 else ""  # (a larger one is refused at MAIL)
                writer.write(f"MAIL FROM:<a@elsewhere.example>{declared}\r\nRCPT TO:<b@isp.example>\r\nDATA\r\n"
                             .encode())
                for _ in range(3):
                    await reader.readline()  # 250, 250, 354
                # The stuffed text first, alone (over the limit on the wire), then the end.
                writer.write(message(size).replace(b"\r\n.", b"\r\n.."))
                await writer.drain()
                await asyncio.sleep(0.2)
                writer.write(b".\r\n")
                replies.append(await reader.readline())
            await quit_session(reader, writer)
            return replies

    replies = uvloop.run(run())
    assert [r[:9] for r in replies] == [b"250 2.0.0", b"552 5.3.4"], replies
    assert refusals == ["too_large"]


class _StoreDown:
    async def mail_recipient(self, address: str) -> None:
        raise StoreError("cannot connect to the PostgreSQL store")

    async def get_subscriber(self, ref: str, *, login: bool = False) -> None:
        raise StoreError("cannot connect to the PostgreSQL store")


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_a_login_the_store_cannot_check_is_a_temporary_failure(without_cycle_collection: None) -> None:
    """With the store down (PostgreSQL stopped, shown on a running daemon), AUTH with the right
    password was answered 535 5.7.8 "credentials invalid": the subscriber's mail client asked for
    a new password, and each try counted as a failed login against the client's address (its
    growing delay, then the block). RFC 4954 §6: 454 4.7.0 Temporary authentication failure."""
    service = serving_service()
    stand_in = MailService.__new__(MailService)
    stand_in.throttle = SimpleNamespace(blocked=lambda client, now: False)  # type: ignore[assignment]
    stand_in.context = SimpleNamespace(store=_StoreDown())  # type: ignore[assignment]
    service.authenticate = stand_in.authenticate
    failures: list[bytes] = []

    async def auth_failed(client: str, login: bytes) -> None:
        failures.append(login)

    service.auth_failed = auth_failed
    service.config.max_auth_failures = 3
    service.submission_handler = SubmissionHandler(service)

    async def run() -> list[bytes]:
        # (465's session: the whole connection counts as TLS, so AUTH needs no STARTTLS here)
        async with smtp_client(service, "submissions") as (reader, writer):
            replies = await replies_to(reader, writer, (  # an address, a username
                b"AUTH PLAIN AGFsaWNlQGlzcC5leGFtcGxlAHNlY3JldA==", b"AUTH PLAIN AGJvYgBzZWNyZXQ="))
            await quit_session(reader, writer)
            return replies

    replies = uvloop.run(run())
    assert replies == [b"454 4.7.0 Temporary authentication failure, try again later\r\n"] * 2, replies
    assert failures == []


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_a_long_auth_line_is_taken_and_a_longer_one_refused_as_too_long(without_cycle_collection: None) -> None:
    """RFC 4954 §4: an AUTH command line may be 12288 octets. aiosmtpd held it to 512 like any
    command: a long password's PLAIN initial response was "500 Command line too long"; and a
    response to 334 over its reader's limit (1001) raised out of AUTH: 451 4.3.0 "Local error"
    and an error-level mail.session.error line, for any client that sent one."""
    from ispd.mail.smtp import Identity

    service = serving_service()
    password = b"p" * 1200

    async def authenticate(login: bytes, given: bytes, client: str = "") -> Identity | None:
        return Identity(1, "alice") if given == password else None

    service.authenticate = authenticate
    service.auth_succeeded = lambda login: None
    service.metrics.auth = SimpleNamespace(inc=lambda result: None)
    service.submission_handler = SubmissionHandler(service)
    response = base64.b64encode(b"\0alice@isp.example\0" + password)

    async def exchange(lines: list[bytes]) -> list[bytes]:
        async with smtp_client(service, "submissions") as (reader, writer):
            replies = await replies_to(reader, writer, lines)
            writer.close()
            return replies

    async def run() -> tuple[list[bytes], list[bytes]]:
        return (await exchange([b"AUTH PLAIN " + response]),
                await exchange([b"AUTH PLAIN", base64.b64encode(b"x" * 15000), b"NOOP"]))

    with_initial_response, too_long = uvloop.run(run())
    assert len(response) > 1001
    assert with_initial_response == [b"235 2.7.0 Authentication successful\r\n"], with_initial_response
    assert too_long == [b"334 \r\n", b"500 5.5.6 Authentication Exchange line is too long\r\n", b"250 2.0.0 OK\r\n"], \
        too_long
