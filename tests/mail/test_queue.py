from __future__ import annotations

import errno
import os
import time
from email import message_from_bytes
from pathlib import Path

import pytest

from ispd.mail.dsn import bounce_message, original_headers
from ispd.mail.queue import Outcome, Verdict, by_domain, outcome_of_reply, retry_delay, settle
from ispd.mail.spool import ORPHAN_GRACE_SECONDS, Spool
from ispd.store.models import QueuedMail, QueuedRecipient, QueuedRecipientState


def queued(*recipients: str, created_at: float = 1000.0, attempts: int = 0) -> QueuedMail:
    return QueuedMail(id="Q1", created_at=created_at, sender="alice@isp.example", size=10, next_attempt_at=created_at,
                      recipients=tuple(QueuedRecipient(r) for r in recipients), attempts=attempts)


@pytest.mark.parametrize(("code", "text", "verdict", "status"), [
    (250, "2.0.0 Ok: queued", Verdict.DELIVERED, "2.0.0"),
    (550, "5.1.1 <b@x>: no such user", Verdict.BOUNCED, "5.1.1"),
    (552, "Mailbox full", Verdict.BOUNCED, "5.0.0"),
    (450, "4.2.1 try later", Verdict.DEFERRED, "4.2.1"),
    (421, "closing", Verdict.DEFERRED, "4.0.0"),
    (550, "4.2.2 mailbox full", Verdict.BOUNCED, "5.0.0"),  # a status of the wrong class is ignored
    (451, "5.7.1 greylisted", Verdict.DEFERRED, "4.0.0"),
])
def test_a_reply_decides_the_recipients_fate(code: int, text: str, verdict: Verdict, status: str) -> None:
    outcome = outcome_of_reply(code, text)
    assert (outcome.verdict, outcome.status) == (verdict, status)
    assert outcome.detail == f"{code} {text}"


def test_recipients_go_in_one_transaction_per_domain() -> None:
    assert by_domain(["a@x.example", "b@Y.example", "c@x.example"]) == {
        "x.example": ["a@x.example", "c@x.example"], "y.example": ["b@Y.example"]}


def test_retries_back_off_to_a_ceiling() -> None:
    assert [retry_delay(n, 300, 4000) for n in (1, 2, 3, 4, 5, 100)] == [300, 600, 1200, 2400, 4000, 4000]


def test_an_attempt_settles_some_recipients_and_defers_the_rest() -> None:
    mail = queued("a@x.example", "b@x.example", "c@y.example")
    result = settle(mail, {"a@x.example": Outcome(Verdict.DELIVERED, "250 ok"),
                           "b@x.example": Outcome(Verdict.BOUNCED, "550 5.1.1 no", "5.1.1"),
                           "c@y.example": Outcome(Verdict.DEFERRED, "connection refused")},
                    1100.0, lifetime=86400, retry_initial=300, retry_max=3600)
    assert result.outcomes == {"a@x.example": (QueuedRecipientState.DELIVERED, "250 ok"),
                               "b@x.example": (QueuedRecipientState.BOUNCED, "550 5.1.1 no"),
                               "c@y.example": (QueuedRecipientState.PENDING, "connection refused")}
    assert list(result.bounced) == ["b@x.example"]
    assert result.next_attempt_at == 1400.0 and result.error == "connection refused"


def test_past_the_lifetime_what_is_still_deferred_bounces() -> None:
    mail = queued("c@y.example", created_at=0.0, attempts=9)
    result = settle(mail, {"c@y.example": Outcome(Verdict.DEFERRED, "450 busy")}, 5 * 86400.0,
                    lifetime=5 * 86400, retry_initial=300, retry_max=3600)
    assert result.outcomes["c@y.example"][0] is QueuedRecipientState.BOUNCED
    assert result.bounced["c@y.example"].status == "4.4.7" and "expired" in result.bounced["c@y.example"].detail


def test_the_last_retry_comes_when_the_lifetime_ends() -> None:
    mail = queued("c@y.example", created_at=0.0, attempts=20)
    result = settle(mail, {}, 86000.0, lifetime=86400, retry_initial=300, retry_max=3600)
    assert result.next_attempt_at == 86400.0
    assert result.outcomes == {"c@y.example": (QueuedRecipientState.PENDING, "not tried")}


def test_a_bounce_is_a_delivery_status_notification() -> None:
    original = b"From: alice@isp.example\r\nSubject: hi\r\nMessage-ID: <m1@isp.example>\r\n\r\nsecret body\r\n"
    data = bounce_message(reporting_host="mx.isp.example", sender="alice@isp.example", original=original,
                          queue_id="Q1", arrived_at=0.0, now=60.0,
                          failed={"b@x.example": Outcome(Verdict.BOUNCED, "550 5.1.1 no\r\nsuch user", "5.1.1")})
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    message = message_from_bytes(data)
    assert message["To"] == "<alice@isp.example>" and message["Auto-Submitted"] == "auto-replied"
    assert message.get_content_type() == "multipart/report"
    human, status, headers = message.get_payload()
    assert "<b@x.example>: 550 5.1.1 no such user" in human.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    fields = status.as_string()
    assert "Final-Recipient: rfc822; b@x.example" in fields and "Status: 5.1.1" in fields
    assert "Reporting-MTA: dns; mx.isp.example" in fields
    assert headers.get_content_type() == "text/rfc822-headers"
    assert b"Message-ID: <m1@isp.example>" in data and b"secret body" not in data


def test_a_bounce_labels_8bit_original_headers_so_the_sender_can_read_them() -> None:
    """From a code read: UTF-8 header fields (RFC 6532) went into a part labelled as 7-bit
    US-ASCII by default, and the sender's mail reader showed "Gr????e" for "Grüße"."""
    from email import policy

    original = "From: Jörg <alice@isp.example>\r\nSubject: Grüße\r\n\r\nbody\r\n".encode()
    data = bounce_message(reporting_host="mx.isp.example", sender="alice@isp.example", original=original,
                          queue_id="Q1", arrived_at=0.0, now=60.0,
                          failed={"b@x.example": Outcome(Verdict.BOUNCED, "550 5.1.1 no such user", "5.1.1")})
    _, _, headers = message_from_bytes(data, policy=policy.default).get_payload()
    assert headers.get_content_type() == "text/rfc822-headers" and headers["Content-Transfer-Encoding"] == "8bit"
    assert headers.get_content() == "From: Jörg <alice@isp.example>\r\nSubject: Grüße\r\n"


def test_original_headers_stop_at_the_body_and_at_64_kib() -> None:
    assert original_headers(b"A: 1\nB: 2\n\nbody") == b"A: 1\r\nB: 2"
    assert len(original_headers(b"X: " + b"y" * 100_000)) == 64 * 1024


def test_the_spool_keeps_files_durable_and_finds_orphans(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "queue")
    spool.prepare()
    spool.write("ABC123", b"message")
    assert spool.read("ABC123") == b"message"
    assert os.listdir(tmp_path / "queue" / "tmp") == []
    spool.write("DEF456", b"other")
    old = time.time() - ORPHAN_GRACE_SECONDS - 10
    os.utime(spool.path("DEF456"), (old, old))
    assert spool.orphans({"ABC123"}) == ["DEF456"]
    assert spool.orphans({"ABC123", "DEF456"}) == []
    spool.remove("DEF456")
    spool.remove("DEF456")  # twice: no error
    with pytest.raises(ValueError):
        spool.path("../etc")


def test_a_message_file_whose_writing_failed_leaves_nothing_in_tmp(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """From a bug hunt: a write that failed (a full disk: the client gets 451 and sends again)
    left its partial file in tmp/, and nothing ever removed files there (orphans looked at the
    queue's own level only): each retry took more of the disk that had run out, for good. A
    crash mid-write leaves one too: those older than the grace period go with the orphans."""
    spool = Spool(tmp_path / "queue")
    spool.prepare()

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(os, "fsync", disk_full)
        with pytest.raises(OSError):
            spool.write("ABC123", b"x" * 100_000)
    assert os.listdir(tmp_path / "queue" / "tmp") == []
    crashed, recent = tmp_path / "queue" / "tmp" / "DEF456", tmp_path / "queue" / "tmp" / "GHI789"
    crashed.write_bytes(b"half a message")
    recent.write_bytes(b"being written")
    old = time.time() - ORPHAN_GRACE_SECONDS - 10
    os.utime(crashed, (old, old))
    assert spool.remove_stale_temporaries() == ["DEF456"]
    assert os.listdir(tmp_path / "queue" / "tmp") == ["GHI789"]


def test_a_full_queue_disk_names_the_file_it_could_not_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From the disk-full hunt: mail.queue.enqueue_failed said only "[Errno 28] No space left
    on device" (a write() error carries no file name); the part written is removed."""
    spool = Spool(tmp_path / "queue")
    spool.prepare()

    def full(fd: int, data: object) -> int:
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError) as raised:
        spool.write("ABC123", b"Subject: x\r\n\r\nbody\r\n")
    assert raised.value.errno == 28
    assert str(raised.value) == f"[Errno 28] No space left on device: '{tmp_path / 'queue' / 'tmp' / 'ABC123'}'"
    assert os.listdir(tmp_path / "queue" / "tmp") == []
