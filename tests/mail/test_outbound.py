from __future__ import annotations

import asyncio
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ispd.mail import outbound
from ispd.mail.config import MailConfig
from ispd.mail.outbound import QueueRunner
from ispd.mail.queue import Outcome, Verdict
from ispd.mail.spool import Spool
from ispd.store.errors import StoreUnavailable
from ispd.store.models import QueuedMail, QueuedRecipient, QueuedRecipientState


class RecordingStore:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, dict[str, Any], float, str | None]] = []
        self.queued: list[QueuedMail] = []
        self.deleted: set[str] = set()
        self.delivered: list[tuple[str, dict[str, str]]] = []

    async def enqueue_mail(self, mail: QueuedMail) -> None:
        self.queued.append(mail)

    async def get_queued_mail(self, queue_id: str) -> QueuedMail | None:
        return None if queue_id in self.deleted else QueuedMail(queue_id, 900.0, "alice@isp.example", 10, 900.0, ())

    async def record_mail_attempt(self, queue_id: str, outcomes: dict[str, Any], *, next_attempt_at: float,
                                  error: str | None) -> QueuedMail | None:
        self.recorded.append((queue_id, outcomes, next_attempt_at, error))
        return None

    async def record_mail_delivered(self, queue_id: str, delivered: dict[str, str]) -> None:
        self.delivered.append((queue_id, delivered))


async def no_local_delivery(address: str, message: bytes) -> bool:
    return False


@pytest.fixture
def runner(tmp_path: Path) -> QueueRunner:
    config = MailConfig(domains=["isp.example"], queue_directory=tmp_path / "queue", retry_initial_seconds=60,
                        retry_max_seconds=600)
    spool = Spool(config.queue_directory)
    spool.prepare()
    spool.write("Q1", b"Subject: x\r\n\r\nx\r\n")
    return QueueRunner(config, RecordingStore(), spool, ThreadPoolExecutor(1),  # type: ignore[arg-type]
                       no_local_delivery, lambda: 1000.0)


def mail(*recipients: str) -> QueuedMail:
    return QueuedMail(id="Q1", created_at=900.0, sender="alice@isp.example", size=10, next_attempt_at=900.0,
                      recipients=tuple(QueuedRecipient(r) for r in recipients))


async def test_one_domains_surprise_defers_it_and_the_others_still_settle(runner: QueueRunner,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    async def deliver(domain: str, sender: str, recipients: list[str], message: bytes, **_: Any) -> dict[str, Outcome]:
        if domain == "broken.example":
            raise RuntimeError("a library surprise")
        return dict.fromkeys(recipients, Outcome(Verdict.DELIVERED, "250 ok"))

    monkeypatch.setattr(outbound, "deliver_to_domain", deliver)
    await runner._attempt_now(mail("a@fine.example", "b@broken.example"))
    store = runner.store
    assert isinstance(store, RecordingStore)
    [(queue_id, outcomes, next_attempt_at, error)] = store.recorded
    assert queue_id == "Q1" and outcomes == {
        "a@fine.example": (QueuedRecipientState.DELIVERED, "250 ok"),
        "b@broken.example": (QueuedRecipientState.PENDING, "local error: RuntimeError('a library surprise')")}
    assert next_attempt_at == 1060.0 and error is not None and "a library surprise" in error
    assert runner.attempts == {"delivered": 1, "bounced": 0, "deferred": 1}


async def test_a_missing_spool_file_defers_until_the_lifetime_ends_then_bounces(runner: QueueRunner) -> None:
    """From a bug hunt: a missing file bounced the message at once, so a queue_directory changed
    without moving its files bounced the whole queue at the next start. It waits (the files may
    be put back); a file truly lost bounces when the message's lifetime ends."""
    runner.spool.remove("Q1")
    await runner._attempt_now(mail("a@fine.example"))
    store = runner.store
    assert isinstance(store, RecordingStore)
    [(_, outcomes, next_attempt_at, _)] = store.recorded
    assert outcomes == {"a@fine.example": (QueuedRecipientState.PENDING, "the queued message's file is missing")}
    assert next_attempt_at == 1060.0 and store.queued == []

    runner.clock = lambda: 900.0 + runner.config.queue_lifetime_seconds
    await runner._attempt_now(mail("a@fine.example"))
    assert store.recorded[-1][1]["a@fine.example"][0] == QueuedRecipientState.BOUNCED
    # The sender still hears of it: a bounce, queued (alice is not a local mailbox here).
    [bounce] = store.queued
    assert bounce.sender == "" and bounce.pending == ["alice@isp.example"]
    assert b"Status: 4.4.7" in runner.spool.read(bounce.id)
    # Which directory ispd looked in is the operator's (the log says it), not the sender's.
    assert str(runner.spool.directory).encode() not in runner.spool.read(bounce.id)


async def test_an_unreadable_spool_file_is_retried_later_and_bounces_when_the_lifetime_ends(
        runner: QueueRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    """From a code read: a queue file that is there but cannot be read (its permissions after
    a restore, an I/O error; here a directory in its place) raised out of the attempt, which was
    then never recorded: the message was tried again at every poll, never backed off, and never
    bounced, whatever its age. It is deferred as a missing one is."""
    runner.spool.remove("Q1")
    (runner.spool.directory / "Q1").mkdir()
    monkeypatch.setattr(runner.store, "get_queued_mail", lambda queue_id: _row(mail("a@fine.example")))
    await runner._attempt("Q1")
    store = runner.store
    assert isinstance(store, RecordingStore)
    [(_, outcomes, next_attempt_at, _)] = store.recorded
    assert outcomes == {"a@fine.example": (QueuedRecipientState.PENDING, "the queued message's file cannot be read")}
    assert next_attempt_at == 1060.0

    runner.clock = lambda: 900.0 + runner.config.queue_lifetime_seconds
    await runner._attempt("Q1")
    assert store.recorded[-1][1]["a@fine.example"][0] == QueuedRecipientState.BOUNCED
    [bounce] = store.queued
    assert bounce.sender == "" and bounce.pending == ["alice@isp.example"]


async def _row(queued: QueuedMail) -> QueuedMail:
    return queued


async def test_an_entry_settled_since_the_poll_is_not_tried_again(runner: QueueRunner,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[str] = []

    async def deliver(domain: str, sender: str, recipients: list[str], message: bytes, **_: Any) -> dict[str, Outcome]:
        tried.extend(recipients)
        return dict.fromkeys(recipients, Outcome(Verdict.DELIVERED, "250 ok"))

    monkeypatch.setattr(outbound, "deliver_to_domain", deliver)
    now_rows: dict[str, QueuedMail | None] = {"Q1": None}

    async def get_queued_mail(queue_id: str) -> QueuedMail | None:
        return now_rows[queue_id]

    runner.store.get_queued_mail = get_queued_mail  # type: ignore[attr-defined]
    await runner._attempt("Q1")  # gone since the poll
    later = mail("a@fine.example")
    now_rows["Q1"] = QueuedMail(**{**{f: getattr(later, f) for f in later.__slots__}, "next_attempt_at": 1500.0})
    await runner._attempt("Q1")  # rescheduled since the poll
    assert tried == []
    now_rows["Q1"] = later
    await runner._attempt("Q1")
    assert tried == ["a@fine.example"]


@pytest.mark.parametrize(("data_reply", "accepted"), [
    ("554 5.7.1 content rejected", Verdict.BOUNCED), ("451 4.3.0 try again", Verdict.DEFERRED),
    ("250 OK queued", Verdict.DELIVERED),
])
async def test_each_recipient_keeps_its_rcpt_answer_whatever_data_gets(data_reply: str, accepted: Verdict) -> None:
    """A DATA refusal is for the recipients the server took; one refused for good at RCPT
    bounces at once, one deferred at RCPT is tried again (before: all got the DATA answer)."""
    from tests.lab.ports import free_tcp_port
    from tests.lab.remotemx import RemoteMX

    port = free_tcp_port()
    remote = RemoteMX("127.0.0.1", port, data_reply)
    remote.start()
    try:
        outcomes = await outbound._transaction("127.0.0.1", port, "alice@isp.example",
                                               ["ok@remote.example", "later@remote.example", "refuse@remote.example"],
                                               b"Subject: x\r\n\r\nbody\r\n", helo="mx.isp.example", command_timeout=5)
    finally:
        remote.stop()
    assert {r: o.verdict for r, o in outcomes.items()} == {
        "ok@remote.example": accepted, "later@remote.example": Verdict.DEFERRED,
        "refuse@remote.example": Verdict.BOUNCED}
    assert "no such user" in outcomes["refuse@remote.example"].detail


async def test_a_message_deleted_during_its_attempt_is_not_bounced(runner: QueueRunner) -> None:
    """`ispd mail queue delete` says no bounce is sent; an attempt under way then refused for
    good must not send one after all."""
    from ispd.mail.queue import AttemptResult

    store = runner.store
    assert isinstance(store, RecordingStore)
    refused = AttemptResult({"bob@remote.example": (QueuedRecipientState.BOUNCED, "550 no")},
                            {"bob@remote.example": Outcome(Verdict.BOUNCED, "550 no", "5.1.1")}, 2000.0, None)
    store.deleted.add("Q1")
    await runner._record(mail("bob@remote.example"), b"Subject: x\r\n\r\nx\r\n", refused, 1000.0)
    assert runner.bounces == 0
    store.deleted.clear()
    await runner._record(mail("bob@remote.example"), b"Subject: x\r\n\r\nx\r\n", refused, 1000.0)
    assert runner.bounces == 1


async def test_a_domain_that_took_the_message_is_written_down_before_the_slowest_domain_ends(
        runner: QueueRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    """From a review: the outcomes were recorded when every domain of the attempt was done, so
    ispd stopping (or dying) while one domain was slow sent the message again to those that had
    already taken it."""
    slow_started = asyncio.Event()

    async def deliver(domain: str, sender: str, recipients: list[str], message: bytes, *,
                      delivered: outbound.Delivered | None = None, **_: Any) -> dict[str, Outcome]:
        if domain == "slow.example":
            slow_started.set()
            await asyncio.sleep(3600)
        taken = dict.fromkeys(recipients, Outcome(Verdict.DELIVERED, "250 ok"))
        if delivered is not None:
            delivered(taken)
        await asyncio.sleep(0.05)  # QUIT
        return taken

    monkeypatch.setattr(outbound, "deliver_to_domain", deliver)
    attempt = asyncio.ensure_future(runner._attempt_now(mail("a@fast.example", "b@slow.example")))
    await slow_started.wait()
    await asyncio.sleep(0.2)
    attempt.cancel()  # the supervisor's grace is over
    with pytest.raises(asyncio.CancelledError):
        await attempt
    await runner.drain()
    store = runner.store
    assert isinstance(store, RecordingStore)
    assert store.delivered == [("Q1", {"a@fast.example": "250 ok"})] and store.recorded == []


@pytest.mark.parametrize("on_its_way", [False, True])
async def test_a_stop_cancels_attempts_that_sent_nothing_and_waits_for_the_others(
        runner: QueueRunner, monkeypatch: pytest.MonkeyPatch, on_its_way: bool) -> None:
    """From the kill -9 bug hunt: a stop waited for every attempt in flight, so one waiting on a
    dead MX (its lookup, its connection) held ispd past its shutdown grace (exit 1). One that
    has sent no message yet is cancelled: it loses nothing and goes again after the restart.
    One whose message is on its way still gets its reply and its record."""
    started = asyncio.Event()

    async def deliver(domain: str, sender: str, recipients: list[str], message: bytes, *,
                      delivered: outbound.Delivered | None = None, sending: outbound.Sending | None = None,
                      **_: Any) -> dict[str, Outcome]:
        if on_its_way:
            assert sending is not None
            sending()
        started.set()
        await asyncio.sleep(0.3 if on_its_way else 3600)  # the DATA reply, or a dead MX's connect
        taken = dict.fromkeys(recipients, Outcome(Verdict.DELIVERED, "250 ok"))
        assert delivered is not None
        delivered(taken)
        return taken

    monkeypatch.setattr(outbound, "deliver_to_domain", deliver)
    store = runner.store
    assert isinstance(store, RecordingStore)

    async def due(queue_id: str) -> QueuedMail:
        return mail("bob@remote.example")

    monkeypatch.setattr(store, "get_queued_mail", due)
    runner._active["Q1"] = asyncio.create_task(runner._attempt("Q1"))
    await started.wait()
    async with asyncio.timeout(2):
        await runner.drain()
    if on_its_way:
        assert store.delivered == [("Q1", {"bob@remote.example": "250 ok"})] and len(store.recorded) == 1
    else:
        assert store.delivered == [] and store.recorded == []  # as it was: tried again after the restart
    assert runner._active == {}


async def test_a_message_given_up_on_mid_transfer_never_reaches_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """From a review: a receiver reading slowly got the whole message and its final dot after
    the client had timed out (the library's close sends what is buffered), so every retry left
    one more copy there. The connection is now cut: the receiver never sees the end."""
    from tests.lab.ports import free_tcp_port

    monkeypatch.setattr(outbound, "DATA_REPLY_SECONDS", 0.5)
    monkeypatch.setattr(outbound, "DATA_MIN_RATE", 1e12)
    taken: list[int] = []

    async def slow_receiver(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 slow.example ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    received = bytearray()
                    while not received.endswith(b"\r\n.\r\n"):
                        chunk = await reader.read(65536)
                        if not chunk:
                            return
                        received += chunk
                        await asyncio.sleep(0.05)  # about 1 MB/s
                    taken.append(len(received))
                    writer.write(b"250 queued\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    return
                else:
                    writer.write(b"250 ok\r\n")
        except ConnectionError:
            return
        finally:
            writer.close()

    port = free_tcp_port()
    server = await asyncio.start_server(slow_receiver, "127.0.0.1", port)
    for sock in server.sockets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    try:
        message = b"Subject: big\r\n\r\n" + b"x" * 76 + b"\r\n" + (b"y" * 76 + b"\r\n") * 30000  # 2.3 MB
        outcomes = await outbound._transaction("127.0.0.1", port, "alice@isp.example", ["bob@slow.example"],
                                               message, helo="mx.isp.example", command_timeout=0.5)
        assert outcomes["bob@slow.example"].verdict is Verdict.DEFERRED
        await asyncio.sleep(3)  # the rest of the transfer, at the receiver's pace
    finally:
        server.close()
    assert taken == []


async def test_eight_bit_mail_is_returned_rather_than_sent_to_a_server_without_8bitmime() -> None:
    """From a review: an 8-bit body went raw, without BODY=, to a server whose EHLO offered no
    8BITMIME (RFC 6152 §3: convert it or return it)."""
    from tests.lab.ports import free_tcp_port

    commands: list[bytes] = []

    async def seven_bit_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 old.example ESMTP\r\n")
        while line := await reader.readline():
            commands.append(line.split(b" ")[0].strip().upper())
            if line.upper().startswith(b"EHLO"):
                writer.write(b"250-old.example\r\n250 SIZE 10000000\r\n")
            elif line.upper().startswith(b"QUIT"):
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
        writer.close()

    port = free_tcp_port()
    server = await asyncio.start_server(seven_bit_server, "127.0.0.1", port)
    try:
        outcomes = await outbound._transaction("127.0.0.1", port, "alice@isp.example", ["bob@old.example"],
                                               "Subject: café\r\n\r\nun café\r\n".encode(), helo="mx.isp.example",
                                               command_timeout=5)
    finally:
        server.close()
    assert outcomes["bob@old.example"].verdict is Verdict.BOUNCED and outcomes["bob@old.example"].status == "5.6.3"
    assert b"MAIL" not in commands and b"DATA" not in commands


async def test_a_slow_domain_takes_at_most_its_share_of_the_deliveries(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """From a review: one slow destination held every delivery slot, so mail to everyone else
    waited behind it (19 s in the review; minutes with a tarpit)."""
    config = MailConfig(domains=["isp.example"], queue_directory=tmp_path / "queue", max_outbound_deliveries=4,
                        max_outbound_per_domain=2)
    spool = Spool(config.queue_directory)
    spool.prepare()
    queued = {f"S{n}": mail("x@slow.example") for n in range(4)} | {"F1": mail("y@fast.example")}
    for queue_id in queued:
        spool.write(queue_id, b"Subject: x\r\n\r\nx\r\n")
    store = RecordingStore()
    rescheduled: list[tuple[str, float]] = []

    async def get_queued_mail(queue_id: str) -> QueuedMail:
        return QueuedMail(queue_id, 900.0, "alice@isp.example", 10, 900.0, queued[queue_id].recipients)

    async def reschedule_mail(queue_id: str, at: float) -> int:
        rescheduled.append((queue_id, at))
        return 1

    store.get_queued_mail = get_queued_mail  # type: ignore[method-assign]
    store.reschedule_mail = reschedule_mail  # type: ignore[attr-defined]
    runner = QueueRunner(config, store, spool, ThreadPoolExecutor(1),  # type: ignore[arg-type]
                         no_local_delivery, lambda: 1000.0)
    slow_answers = asyncio.Event()
    fast_done = asyncio.Event()

    async def deliver(domain: str, sender: str, recipients: list[str], message: bytes, **_: Any) -> dict[str, Outcome]:
        if domain == "slow.example":
            await slow_answers.wait()
        else:
            fast_done.set()
        return dict.fromkeys(recipients, Outcome(Verdict.DELIVERED, "250 ok"))

    monkeypatch.setattr(outbound, "deliver_to_domain", deliver)
    attempts = [asyncio.ensure_future(runner._attempt(queue_id)) for queue_id in queued]
    try:
        await asyncio.wait_for(fast_done.wait(), 2)
    finally:
        slow_answers.set()
        await asyncio.gather(*attempts)
    assert rescheduled == [("S2", 1030.0), ("S3", 1030.0)]  # later, out of the way


async def test_delivery_attempts_share_one_client_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """From a soak review: each attempt built its own SSLContext (the system CA store loaded on
    the event loop each time, and the context kept by a reference cycle until a rare gc): 0.8 MB
    and 63 ms per attempt to a refusing MX."""
    from tests.lab.ports import free_tcp_port

    contexts: list[object] = []

    class RecordingSMTP(outbound.aiosmtplib.SMTP):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            contexts.append(kwargs.get("tls_context"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(outbound.aiosmtplib, "SMTP", RecordingSMTP)
    host = "127.62.27.1"
    port = free_tcp_port(host)  # nothing listens there: each attempt is refused
    for _ in range(2):
        with pytest.raises((OSError, outbound.aiosmtplib.SMTPConnectError)):
            await outbound._transaction(host, port, "alice@isp.example", ["bob@remote.example"], b"x\r\n",
                                        helo="mx.isp.example", command_timeout=5)
    assert len(contexts) == 2 and contexts[0] is contexts[1] is not None
    context = contexts[0]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname


async def test_a_server_that_offers_starttls_gets_8bit_and_utf8_mail_over_tls(tmp_path: Path) -> None:
    """From a bug hunt: after STARTTLS the client had forgotten the server's extensions (RFC 3207
    §4.2) and checked them before asking again, so every MX offering STARTTLS looked like one
    without 8BITMIME, SMTPUTF8 and SIZE: 8-bit mail to it bounced (5.6.3), UTF-8 addresses too
    (5.6.7), and no SIZE was declared."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP, Envelope, Session

    from tests.lab.certs import issue
    from tests.lab.ports import free_tcp_port

    certificates = issue(tmp_path, "mx.remote.example")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.certificate, certificates.private_key)
    taken: list[tuple[list[str], bool, bytes]] = []

    class Handler:
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            taken.append((list(envelope.mail_options), session.ssl is not None, envelope.original_content or b""))
            return "250 OK queued"

    port = free_tcp_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=context, ready_timeout=10)
    controller.start()
    message = "Subject: café\r\n\r\nun café\r\n".encode()
    try:
        outcomes = await outbound._transaction("127.0.0.1", port, "jöran@isp.example", ["bob@remote.example"],
                                               message, helo="mx.isp.example", command_timeout=5)
    finally:
        controller.stop()
    assert outcomes["bob@remote.example"].verdict is Verdict.DELIVERED, outcomes
    assert outcomes["bob@remote.example"].tls.startswith("TLSv1.") and outcomes["bob@remote.example"].server == "127.0.0.1"
    [(options, over_tls, content)] = taken
    assert over_tls and content == message
    assert set(options) == {f"SIZE={len(message)}", "BODY=8BITMIME", "SMTPUTF8"}


@pytest.mark.parametrize("tls", ["refused", "broken"])
async def test_a_server_whose_starttls_fails_gets_the_message_in_clear_text(tls: str) -> None:
    """From a bug hunt: opportunistic TLS is Postfix's `may`, but a server that offered STARTTLS
    and then refused it (454) or broke the handshake got nothing, attempt after attempt, until
    the message bounced at the end of its lifetime. Postfix goes on in clear text ("try to
    continue in plain-text mode"; a failed handshake: the same address again without TLS)."""
    from tests.lab.ports import free_tcp_port

    connections: list[list[bytes]] = []
    taken: list[bytes] = []

    async def tls_broken_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        commands: list[bytes] = []
        connections.append(commands)
        writer.write(b"220 remote.example ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line.split(b" ")[0].strip().upper()
                commands.append(verb)
                if verb == b"EHLO":
                    writer.write(b"250-remote.example\r\n250-8BITMIME\r\n250 STARTTLS\r\n")
                elif verb == b"STARTTLS" and tls == "refused":
                    writer.write(b"454 4.7.0 TLS not available due to local problem\r\n")
                elif verb == b"STARTTLS":
                    writer.write(b"220 2.0.0 go ahead\r\n" + b"this is not TLS\r\n" * 5)
                    await writer.drain()
                    return
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    body = bytearray()
                    while not body.endswith(b"\r\n.\r\n"):
                        body += await reader.readline()
                    taken.append(bytes(body))
                    writer.write(b"250 2.0.0 queued in clear text\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    return
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()

    port = free_tcp_port()
    server = await asyncio.start_server(tls_broken_server, "127.0.0.1", port)
    try:
        outcomes = await outbound._transaction("127.0.0.1", port, "alice@isp.example", ["bob@remote.example"],
                                               b"Subject: x\r\n\r\nbody\r\n", helo="mx.isp.example",
                                               command_timeout=5)
    finally:
        server.close()
    assert outcomes["bob@remote.example"].verdict is Verdict.DELIVERED, outcomes
    assert outcomes["bob@remote.example"].tls == ""  # (said in the log: tls=none)
    assert len(taken) == 1
    if tls == "refused":  # the same session goes on
        assert connections == [[b"EHLO", b"STARTTLS", b"MAIL", b"RCPT", b"DATA", b"QUIT"]]
    else:  # a new connection, without STARTTLS
        assert connections == [[b"EHLO", b"STARTTLS"], [b"EHLO", b"MAIL", b"RCPT", b"DATA", b"QUIT"]]


async def test_more_recipients_than_a_server_must_take_go_in_several_transactions() -> None:
    """From a bug hunt: the recipients at one domain went in one transaction however many they
    were (three aliases of 50 make 150), and a server taking the 100 RFC 5321 §4.5.3.1.8 asks
    for answered the rest 452 4.5.3: they waited for the next retry (5 minutes, then 10, ...:
    hours for a thousand) where §4.5.3.1.10 has the client send them in another transaction."""
    from tests.lab.ports import free_tcp_port

    batches: list[int] = []

    async def limited_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 limited.example ESMTP\r\n")
        taken = 0
        while line := await reader.readline():
            verb = line.split(b" ")[0].strip().upper()
            if verb == b"RCPT":
                taken += 1
                writer.write(b"250 ok\r\n" if taken <= 100 else b"452 4.5.3 Too many recipients\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                while await reader.readline() != b".\r\n":
                    pass
                batches.append(min(taken, 100))
                writer.write(b"250 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
        writer.close()

    class Lookup:
        async def exchangers(self, domain: str) -> list[str]:
            return ["mx.limited.example"]

        async def addresses(self, host: str) -> tuple[list[str], bool]:
            return ["127.0.0.1"], False

    port = free_tcp_port()
    server = await asyncio.start_server(limited_server, "127.0.0.1", port)
    recipients = [f"u{i}@limited.example" for i in range(250)]
    try:
        outcomes = await outbound.deliver_to_domain(
            "limited.example", "alice@isp.example", recipients, b"Subject: x\r\n\r\nx\r\n",
            lookup=Lookup(), port=port, helo="mx.isp.example", command_timeout=5)  # type: ignore[arg-type]
    finally:
        server.close()
    assert {o.verdict for o in outcomes.values()} == {Verdict.DELIVERED} and len(outcomes) == 250
    assert batches == [100, 100, 50]


async def test_a_delivery_the_store_cannot_write_down_is_not_sent_again(runner: QueueRunner,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """From the disk-full hunt: with the store's disk full, the remote's 250 could not be
    written down, the row stayed due, and every poll (10 s) sent the message again: four
    copies in 40 s at the remote MX. The attempt is kept and written once the store takes it."""
    tried: list[str] = []

    async def deliver(domain: str, sender: str, recipients: list[str], message: bytes, **_: Any) -> dict[str, Outcome]:
        tried.extend(recipients)
        return dict.fromkeys(recipients, Outcome(Verdict.DELIVERED, "250 ok"))

    monkeypatch.setattr(outbound, "deliver_to_domain", deliver)
    store = runner.store
    assert isinstance(store, RecordingStore)
    pending = mail("a@fine.example")

    async def get_queued_mail(queue_id: str) -> QueuedMail | None:
        return pending  # the row as the store still has it: due, its recipient pending

    real_record = store.record_mail_attempt
    full = [True]

    async def record_mail_attempt(queue_id: str, outcomes: dict[str, Any], **kwargs: Any) -> QueuedMail | None:
        if full[0]:
            raise StoreUnavailable("database or disk is full")
        return await real_record(queue_id, outcomes, **kwargs)

    async def record_mail_delivered(queue_id: str, delivered: dict[str, str]) -> None:
        raise StoreUnavailable("database or disk is full")

    store.get_queued_mail = get_queued_mail  # type: ignore[method-assign]
    store.record_mail_attempt = record_mail_attempt  # type: ignore[method-assign]
    store.record_mail_delivered = record_mail_delivered  # type: ignore[method-assign]
    for _ in range(3):  # three polls while the disk is full
        await runner._attempt("Q1")
    assert tried == ["a@fine.example"] and store.recorded == []
    full[0] = False  # room again: the next poll writes the attempt down, and sends nothing
    await runner._attempt("Q1")
    assert tried == ["a@fine.example"]
    assert [(q, o) for q, o, _, _ in store.recorded] == [("Q1", {"a@fine.example": (QueuedRecipientState.DELIVERED,
                                                                                     "250 ok")})]
    assert not (runner.spool.directory / "Q1").exists()


async def test_the_queue_is_counted_every_30_s_whatever_the_wall_clock_does(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The count behind ispd_mail_queue_messages was timed by the wall clock: stepped back three
    hours under libfaketime, the metric said 3 messages for three hours while 5 were queued."""
    monkeypatch.setattr(outbound, "POLL_SECONDS", 0.01)
    monkeypatch.setattr(outbound, "COUNT_SECONDS", 0.05, raising=False)
    config = MailConfig(domains=["isp.example"], queue_directory=tmp_path / "queue")
    store = RecordingStore()
    counted: list[float] = []
    wall = [1_800_000_000.0]

    async def due_mail(now: float, *, limit: int, after: float) -> list[QueuedMail]:
        return []

    async def mail_queue_summary() -> tuple[int, float | None]:
        counted.append(wall[0])
        return len(counted), None

    store.due_mail = due_mail  # type: ignore[attr-defined]
    store.mail_queue_summary = mail_queue_summary  # type: ignore[attr-defined]
    runner = QueueRunner(config, store, Spool(config.queue_directory), ThreadPoolExecutor(1),  # type: ignore[arg-type]
                         no_local_delivery, lambda: wall[0])
    monkeypatch.setattr(runner, "_remove_orphans", lambda: asyncio.sleep(0))
    task = asyncio.ensure_future(runner.run())
    try:
        await asyncio.sleep(0.1)
        wall[0] -= 3 * 3600
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert any(at < 1_800_000_000.0 for at in counted), counted
    assert runner.figures().messages == len(counted)


async def test_a_message_queued_while_the_queue_is_being_read_is_not_left_for_the_next_poll(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From a code read: the runner cleared its wake-up after reading the due messages, so a
    message queued (and the runner woken) while that read was under way, too late for it, was
    forgotten until the next poll: up to 10 s for a submitted message that the runner had been
    told of at once."""
    config = MailConfig(domains=["isp.example"], queue_directory=tmp_path / "queue")
    store = RecordingStore()
    polls: list[float] = []
    runner: QueueRunner

    async def due_mail(now: float, *, limit: int, after: float) -> list[QueuedMail]:
        polls.append(asyncio.get_running_loop().time())
        if len(polls) == 1:
            runner.wake.set()  # enqueue() of a message this read came too late to see
        return []

    async def mail_queue_summary() -> tuple[int, float | None]:
        return 0, None

    store.due_mail = due_mail  # type: ignore[attr-defined]
    store.mail_queue_summary = mail_queue_summary  # type: ignore[attr-defined]
    runner = QueueRunner(config, store, Spool(config.queue_directory), ThreadPoolExecutor(1),  # type: ignore[arg-type]
                         no_local_delivery, lambda: 1000.0)
    monkeypatch.setattr(runner, "_remove_orphans", lambda: asyncio.sleep(0))
    task = asyncio.ensure_future(runner.run())
    try:
        await asyncio.sleep(0.5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(polls) >= 2, "the wake-up was lost: the next read waits for the 10 s poll"


async def test_a_retry_set_before_the_wall_clock_was_stepped_back_is_not_put_off_by_the_step(
        runner: QueueRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under libfaketime, the clock stepped back three hours: the messages deferred before the
    step, set for a retry within retry_max_seconds (2 minutes), were still not retried 3 minutes
    later; they would have waited three hours. Set later than any retry is set, it is due."""
    delivered: list[str] = []

    async def deliver(domain: str, sender: str, recipients: list[str], message: bytes, **_: Any) -> dict[str, Outcome]:
        delivered.extend(recipients)
        return dict.fromkeys(recipients, Outcome(Verdict.DELIVERED, "250 ok"))

    async def get_queued_mail(queue_id: str) -> QueuedMail:  # set for 1000 + 600 s, then the step
        return QueuedMail(queue_id, 900.0, "alice@isp.example", 10, 1000.0 + 3 * 3600 + 600,
                          (QueuedRecipient("a@fine.example"),))

    monkeypatch.setattr(outbound, "deliver_to_domain", deliver)
    monkeypatch.setattr(runner.store, "get_queued_mail", get_queued_mail)
    await runner._attempt("Q1")
    assert delivered == ["a@fine.example"]

    async def not_yet(queue_id: str) -> QueuedMail:  # a retry set within retry_max_seconds still waits
        return QueuedMail(queue_id, 900.0, "alice@isp.example", 10, 1000.0 + 600, (QueuedRecipient("b@fine.example"),))

    monkeypatch.setattr(runner.store, "get_queued_mail", not_yet)
    await runner._attempt("Q1")
    assert delivered == ["a@fine.example"]


class _TwoExchangers:
    """two.example's exchangers: mx1 on 127.0.0.1, then mx2 on 127.0.0.2 (on the test's port)."""

    async def exchangers(self, domain: str) -> list[str]:
        return ["mx1.two.example", "mx2.two.example"]

    async def addresses(self, host: str) -> tuple[list[str], bool]:
        return (["127.0.0.1"] if host.startswith("mx1") else ["127.0.0.2"]), False


def _two_example_mx(received: dict[str, int], address: str, *, refusing: bytes | None = None,
                    drop_after_the_dot: bool = False) -> Any:
    """A server of two.example that counts the messages it read in ``received[address]``; it
    answers ``refusing`` (and HELO) with 421, or drops the connection after the final dot."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx.two.example ESMTP\r\n")
        while line := await reader.readline():
            verb = line.split(b" ")[0].strip().upper()
            if refusing is not None and verb in (refusing, b"HELO"):
                writer.write(b"421 4.3.2 Too busy, try later\r\n")
                await writer.drain()
                break
            if verb == b"EHLO":
                writer.write(b"250-mx.two.example\r\n250 STARTTLS\r\n" if refusing else b"250 mx.two.example\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                while await reader.readline() != b".\r\n":
                    pass
                received[address] += 1
                if drop_after_the_dot:
                    writer.transport.abort()
                    return
                writer.write(b"250 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
        writer.close()
    return serve


async def _deliver_to_two_example(port: int) -> dict[str, Outcome]:
    return await outbound.deliver_to_domain(
        "two.example", "alice@isp.example", ["bob@two.example"], b"Subject: x\r\n\r\nx\r\n",
        lookup=_TwoExchangers(), port=port, helo="mx.isp.example", command_timeout=5)  # type: ignore[arg-type]


@pytest.mark.parametrize("refusing", [b"EHLO", b"STARTTLS"])
async def test_a_server_that_answers_421_before_the_envelope_is_followed_by_the_next_mx(refusing: bytes) -> None:
    """From a bug hunt: the primary MX answered 421 (busy) to EHLO or to STARTTLS, and the
    attempt ended there, deferred, the backup MX never tried: a primary that kept saying so
    held the mail until its lifetime ended and it bounced. Postfix tries the next MX."""
    from tests.lab.ports import free_tcp_port

    received: dict[str, int] = {"127.0.0.1": 0, "127.0.0.2": 0}
    port = free_tcp_port()
    first = await asyncio.start_server(_two_example_mx(received, "127.0.0.1", refusing=refusing), "127.0.0.1", port)
    second = await asyncio.start_server(_two_example_mx(received, "127.0.0.2"), "127.0.0.2", port)
    try:
        outcomes = await _deliver_to_two_example(port)
        assert outcomes["bob@two.example"].verdict is Verdict.DELIVERED, outcomes
        assert received == {"127.0.0.1": 0, "127.0.0.2": 1}
        second.close()
        await second.wait_closed()
        second = await asyncio.start_server(_two_example_mx(received, "127.0.0.2", refusing=refusing),
                                            "127.0.0.2", port)
        outcomes = await _deliver_to_two_example(port)  # none takes it: deferred, with the last one's words
    finally:
        first.close()
        second.close()
    assert outcomes["bob@two.example"].verdict is Verdict.DEFERRED, outcomes
    assert outcomes["bob@two.example"].detail.startswith("421 "), outcomes


async def test_a_server_that_drops_the_connection_after_the_dot_is_not_followed_by_the_next_mx() -> None:
    """From a bug hunt: the first MX read the whole message and its final dot, then dropped the
    connection without a reply (RFC 1047: it may well have taken the message), and the attempt
    went straight on to the second MX, which delivered a second copy at once. The recipient now
    waits for the next attempt, as after a time out."""
    from tests.lab.ports import free_tcp_port

    received: dict[str, int] = {"127.0.0.1": 0, "127.0.0.2": 0}
    port = free_tcp_port()
    first = await asyncio.start_server(_two_example_mx(received, "127.0.0.1", drop_after_the_dot=True),
                                       "127.0.0.1", port)
    second = await asyncio.start_server(_two_example_mx(received, "127.0.0.2"), "127.0.0.2", port)
    try:
        outcomes = await _deliver_to_two_example(port)
    finally:
        first.close()
        second.close()
    assert received == {"127.0.0.1": 1, "127.0.0.2": 0}
    assert outcomes["bob@two.example"].verdict is Verdict.DEFERRED
    assert "more than once" in outcomes["bob@two.example"].detail
