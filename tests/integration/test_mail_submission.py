"""Submission and the outbound queue end to end: ispd as a process with its resolver on the
lab's DNS hierarchy (the [mail] resolver is ispd's own DNS listener), subscribers' mail clients
(swaks, smtplib) on 587 and 465, and another domain's MX (an aiosmtpd server on port 25 of
127.x.40.1, found through the hierarchy's MX records)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import signal
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.lab.certs import issue
from tests.lab.dnshier import DKIM_LAB_KEY, DNSHierarchy, free_port
from tests.lab.dnsispd import dns_section
from tests.lab.maildir import inbox
from tests.lab.ports import free_tcp_port
from tests.lab.process import IspdProcess, base_config, connections_out_of_descriptors, eventually
from tests.lab.remotemx import RemoteMX

DOMAIN = "isp.example"
REMOTE = "relay.example-a.test"


@dataclass
class Lab:
    ispd: IspdProcess
    submission: int
    submissions: int
    mx: int
    remote: RemoteMX
    ca: Path
    root: Path
    passwords: dict[str, str]
    dkim_record: str

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def client(self, user: str = "alice", source: str = "127.0.0.1") -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.submission, timeout=15, source_address=(source, 0))
        client.starttls(context=self.context())
        client.login(f"{user}@{DOMAIN}", self.passwords[user])
        return client

    def inbox(self, address: str) -> list[bytes]:
        return inbox(self.root, address)

    def queue(self) -> list[dict[str, Any]]:
        return json.loads(self.ispd.cli("mail", "queue", "list", "--json").stdout)  # type: ignore[no-any-return]

    def swaks(self, *args: str, port: int | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["swaks", "--server", f"127.0.0.1:{port or self.submission}", "--timeout", "15",
                               "--tls-ca-path", str(self.ca), *args],
                              capture_output=True, text=True, timeout=60, check=False)


def _dkim_key(workdir: Path) -> str:
    """A signing key for isp.example in workdir/dkim.pem; returns its DNS record."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (workdir / "dkim.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode()


@pytest.fixture(scope="module")
def lab(dns_hierarchy: DNSHierarchy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if shutil.which("swaks") is None:
        pytest.fail("swaks is missing: tools/setup --test installs it")
    workdir = tmp_path_factory.mktemp("submission")
    certificates = issue(workdir, "mx.isp.example", name="mx")
    ca = certificates.ca
    dkim_record = _dkim_key(workdir)
    dns_port = free_port("127.0.0.1")
    ports = {"mx": free_tcp_port(), "submission": free_tcp_port(), "submissions": free_tcp_port()}
    # A blocklist served by ispd's own DNS: 127.0.0.2 is listed, 127.0.0.3 gets the answer
    # Spamhaus gives a refused query (no listing), anyone else NXDOMAIN.
    blocklist = ["2.0.0.127.bl.isp.test. 60 A 127.0.0.2", '2.0.0.127.bl.isp.test. 60 TXT "test listing"',
                 "3.0.0.127.bl.isp.test. 60 A 127.255.255.254"]
    config = base_config(workdir, dns=dns_section(dns_hierarchy, dns_port, local_records=blocklist), mail={
        "enabled": True, "domains": [DOMAIN], "hostname": "mx.isp.example",
        "maildir_root": str(workdir / "mail"), "queue_directory": str(workdir / "queue"),
        "listen_mx": [f"127.0.0.1:{ports['mx']}"], "listen_submission": [f"127.0.0.1:{ports['submission']}"],
        "listen_submissions": [f"127.0.0.1:{ports['submissions']}"],
        "certificate": str(certificates.certificate), "private_key": str(certificates.private_key),
        "resolver": f"127.0.0.1:{dns_port}", "retry_initial_seconds": 1, "retry_max_seconds": 2,
        "outbound_timeout_seconds": 5, "auth_failure_delay_seconds": 0.2, "max_auth_failures": 3,
        "max_connections_per_client": 50,
        "dkim": [{"domain": DOMAIN, "selector": "s2026", "private_key": str(workdir / "dkim.pem")}],
        "dnsbl": [{"zone": "bl.isp.test"}], "postmaster": f"bob@{DOMAIN}",
    })
    remote = RemoteMX(f"{dns_hierarchy.base}.40.1")
    remote.start()
    try:
        with IspdProcess(workdir, config) as ispd:
            ispd.start()
            passwords = {}
            for user in ("alice", "bob"):
                ispd.cli("subscriber", "add", user, "--password-stdin", input=f"{user}-secret\n")
                ispd.cli("mailbox", "add", user, f"{user}@{DOMAIN}")
                passwords[user] = f"{user}-secret"
            yield Lab(ispd, ports["submission"], ports["submissions"], ports["mx"], remote, ca, workdir / "mail",
                      passwords, dkim_record)
    finally:
        remote.stop()


def test_nothing_but_starttls_before_tls_and_nothing_but_auth_before_auth(lab: Lab) -> None:
    with smtplib.SMTP("127.0.0.1", lab.submission, timeout=15) as client:
        client.ehlo("laptop")
        assert client.has_extn("starttls") and not client.has_extn("auth")
        code, text = client.docmd("MAIL FROM:<alice@isp.example>")
        assert code == 530, text
        client.starttls(context=lab.context())
        client.ehlo("laptop")
        assert client.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
        code, text = client.docmd("MAIL FROM:<alice@isp.example>")
        assert (code, text.split()[0]) == (530, b"5.7.0")
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.login("alice@isp.example", "wrong")
        assert failed.value.smtp_code == 535
        # RFC 4616: logging in as alice to act as bob (an authorization identity) fails, even
        # with alice's password; her own name as authzid is herself.
        plain = base64.b64encode(b"bob@isp.example\0alice@isp.example\0alice-secret").decode()
        assert client.docmd("AUTH", f"PLAIN {plain}")[0] == 535
        plain = base64.b64encode(b"alice@isp.example\0alice@isp.example\0alice-secret").decode()
        assert client.docmd("AUTH", f"PLAIN {plain}")[0] == 235
        assert client.mail("alice@isp.example")[0] == 250
    # The MX offers no AUTH at all.
    with smtplib.SMTP("127.0.0.1", lab.mx, timeout=15) as client:
        client.ehlo("laptop")
        client.starttls(context=lab.context())
        client.ehlo("laptop")
        assert not client.has_extn("auth")


def test_swaks_submits_to_another_domain_through_the_queue(lab: Lab) -> None:
    result = lab.swaks("--tls", "--auth", "PLAIN", "--auth-user", "alice@isp.example", "--auth-password",
                       "alice-secret", "--from", "alice@isp.example", "--to", f"carol@{REMOTE}",
                       "--header", "Subject: outbound", "--body", ".a dot line\nand 8-bit: \xe9")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "235 2.7.0" in result.stdout and "250 2.0.0 Ok: queued as" in result.stdout
    messages = eventually(lambda: lab.remote.messages_to(f"carol@{REMOTE}"), timeout=15)
    text = messages[-1]
    assert b"with ESMTPSA id" in text and b"Subject: outbound" in text
    assert b"\r\n.a dot line\r\n" in text  # dot-stuffing undone on the far side
    assert not text.startswith(b"Return-Path")  # only the final delivery adds it
    eventually(lambda: lab.queue() == [], timeout=10)
    assert lab.ispd.metric_value("ispd_mail_outbound_attempts_total", {"result": "delivered"}) >= 1
    # Which server took it and whether over TLS, as Postfix's relay= and its TLS line say (the
    # remote MX offers no STARTTLS).
    attempt = eventually(lambda: [e for e in lab.ispd.log_events("mail.outbound.attempt")
                                  if e["recipient"] == f"carol@{REMOTE}"])[-1]
    assert attempt["result"] == "delivered" and attempt["tls"] == "none", attempt
    assert attempt["server"].endswith("[127.0.0.1]") or "[127." in attempt["server"], attempt


def test_implicit_tls_on_465_and_local_recipients_delivered_at_once(lab: Lab) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", lab.submissions, timeout=15, context=lab.context()) as client:
        client.login("bob", "bob-secret")  # the username works as the login too
        refused = client.sendmail("bob@isp.example", ["alice@isp.example", f"dave@{REMOTE}"],
                                  b"Subject: both\r\n\r\nto a neighbour and afar\r\n")
        assert refused == {}
    assert lab.inbox("alice@isp.example")[-1].endswith(b"to a neighbour and afar\n")
    assert b"with ESMTPSA id" in lab.inbox("alice@isp.example")[-1]
    far = eventually(lambda: lab.remote.messages_to(f"dave@{REMOTE}"), timeout=15)
    # The client gave no Date nor Message-ID (RFC 5322 §3.6 wants both): ispd added them, the
    # same to both copies.
    for copy in (lab.inbox("alice@isp.example")[-1], far[-1]):
        assert re.search(rb"(?m)^Date: \w{3}, \d{1,2} \w{3} \d{4} [\d:]{8} [+-]\d{4}\r?$", copy), copy[:400]
        assert re.search(rb"(?m)^Message-ID: <[0-9A-F]{12}\.[0-9a-f]{16}@[^>]+>\r?$", copy), copy[:400]


def test_the_sender_must_be_the_subscribers_own(lab: Lab) -> None:
    with lab.client() as client:
        code, text = client.mail("bob@isp.example")
        assert (code, text.split()[0]) == (553, b"5.7.1")
        client.rset()
        code, _ = client.mail("Alice+lists@isp.example")
        assert code == 250
        client.rset()
        code, text = client.mail("<>")
        assert (code, text.split()[0]) == (553, b"5.7.1")
        client.rset()
        # Unknown local recipients are refused at once, as on the MX.
        client.mail("alice@isp.example")
        assert client.rcpt("nobody@isp.example")[0] == 550


def test_the_auth_parameter_of_mail_is_taken(lab: Lab) -> None:
    """From a bug hunt: RFC 4954 §5's AUTH= parameter of MAIL, part of the AUTH extension
    that submission announces (an MTA that relays through its ISP sends it), got 555 "not
    recognized" and the MTA could send nothing."""
    with lab.client() as client:
        for parameter in ("AUTH=<>", "auth=alice+2Blists@isp.example"):
            code, _ = client.mail("alice@isp.example", [parameter, "SIZE=100"])
            assert code == 250, parameter
            client.rset()
        refused = client.sendmail("alice@isp.example", ["bob@isp.example"], b"Subject: relayed\r\n\r\nvia an MTA\r\n",
                                  mail_options=["AUTH=<>"])
        assert refused == {}
    assert lab.inbox("bob@isp.example")[-1].endswith(b"via an MTA\n")


def test_a_second_starttls_is_refused(lab: Lab) -> None:
    """From a bug hunt: STARTTLS inside TLS got 220 and the session was wrapped in a second TLS
    layer, whose failure raised inside asyncio: an error-level traceback in the log, at any
    client's will, and the session gone. RFC 3207 §4.2: once TLS is on, STARTTLS is not offered."""
    with lab.client() as client:
        code, _ = client.docmd("STARTTLS")
        assert code == 503
        assert client.noop()[0] == 250  # the session goes on, over its TLS
    assert "SSLProtocol" not in lab.ispd.log_text()


def test_a_suspended_subscriber_cannot_send(lab: Lab) -> None:
    lab.ispd.cli("subscriber", "suspend", "bob", "--reason", "nonpayment")
    try:
        with lab.client("bob") as client:
            code, text = client.mail("bob@isp.example")
            assert (code, text.split()[0]) == (550, b"5.7.1") and b"suspended" in text
    finally:
        lab.ispd.cli("subscriber", "resume", "bob")
    with lab.client("bob") as client:
        assert client.mail("bob@isp.example")[0] == 250


def test_a_refusal_far_away_bounces_to_the_sender(lab: Lab) -> None:
    before = len(lab.inbox("alice@isp.example"))
    with lab.client() as client:
        client.sendmail("alice@isp.example", [f"refuse@{REMOTE}", f"erin@{REMOTE}"],
                        b"Subject: half refused\r\nMessage-ID: <half@isp.example>\r\n\r\nhello\r\n")
    eventually(lambda: len(lab.inbox("alice@isp.example")) > before, timeout=15)
    bounce = message_from_bytes(lab.inbox("alice@isp.example")[-1])
    assert bounce["Return-Path"] == "<>" and bounce.get_content_type() == "multipart/report"
    assert bounce.get_param("report-type") == "delivery-status"
    status = bounce.get_payload()[1].as_string()
    assert f"Final-Recipient: rfc822; refuse@{REMOTE}" in status and "Status: 5.1.1" in status
    assert "erin" not in status  # she got it
    assert b"Message-ID: <half@isp.example>" in bounce.get_payload()[2].as_bytes()
    assert lab.remote.messages_to(f"erin@{REMOTE}")


def test_null_mx_and_an_unknown_domain_bounce_at_once_and_a_domain_without_mx_gets_mail(lab: Lab) -> None:
    """(And, from a review, an MX host that does not exist bounces at once too: it waited out
    the queue lifetime, five days, with its DSN's Diagnostic-Code typed "smtp" though no SMTP
    server said a word.)"""
    before = len(lab.inbox("alice@isp.example"))
    with lab.client() as client:
        client.sendmail("alice@isp.example", ["x@nullmx.example-a.test", "y@no-such-domain.example-a.test",
                                              "z@nomx.example-a.test", "w@hostless.example-a.test"],
                        b"Subject: odd domains\r\n\r\nhi\r\n")
    eventually(lambda: len(lab.inbox("alice@isp.example")) > before, timeout=15)
    report = lab.inbox("alice@isp.example")[-1].decode()
    assert "Final-Recipient: rfc822; x@nullmx.example-a.test" in report and "Status: 5.1.10" in report
    assert "Final-Recipient: rfc822; y@no-such-domain.example-a.test" in report and "Status: 5.1.2" in report
    assert "Final-Recipient: rfc822; w@hostless.example-a.test" in report and "Status: 5.4.4" in report
    assert "Diagnostic-Code: X-ispd; hostless.example-a.test: nohost.hostless.example-a.test: no such host" \
        in report
    eventually(lambda: lab.remote.messages_to("z@nomx.example-a.test"), timeout=15)


def test_a_dead_first_mx_is_skipped_for_the_next(lab: Lab) -> None:
    with lab.client() as client:
        client.sendmail("alice@isp.example", ["f@twomx.example-a.test"], b"Subject: backup\r\n\r\nhi\r\n")
    eventually(lambda: lab.remote.messages_to("f@twomx.example-a.test"), timeout=20)


def test_a_stop_does_not_wait_for_an_attempt_that_has_sent_nothing(lab: Lab) -> None:
    """From the kill -9 bug hunt: a stop waited for every outbound attempt in flight, and one
    waiting on a dead MX (its lookup, its greeting) held the stop past the grace (exit 1). Such
    an attempt is cancelled: nothing was sent, the message stays queued and goes after the restart."""
    silent = socket.socket()  # the first MX of twomx.: accepts the connection, never greets
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    silent.bind((lab.remote.host.rpartition(".")[0] + ".2", 25))
    silent.listen(8)
    recipient = "stop@twomx.example-a.test"
    try:
        with lab.client() as client:
            client.sendmail("alice@isp.example", [recipient], b"Subject: stuck\r\n\r\nhi\r\n")
        [queued] = eventually(lambda: [m for m in lab.queue() if m["pending"] == [recipient]], timeout=10)
        time.sleep(1)  # its attempt waits for the greeting (5 s), then would try the second MX
        assert lab.ispd.terminate() == 0  # (1: the grace ran out)
    finally:
        silent.close()
    lab.ispd.start()
    assert queued["id"] in [m["id"] for m in lab.queue()] or lab.remote.messages_to(recipient)
    eventually(lambda: lab.remote.messages_to(recipient), timeout=20)
    assert len(lab.remote.messages_to(recipient)) == 1


def test_a_message_waits_out_an_outage_and_a_restart_and_arrives_once(lab: Lab) -> None:
    lab.remote.stop()
    try:
        with lab.client() as client:
            client.sendmail("alice@isp.example", [f"gina@{REMOTE}"], b"Subject: patience\r\n\r\nhi\r\n")
        queued = eventually(lambda: [m for m in lab.queue() if m["attempts"] >= 1], timeout=15)
        assert queued[0]["pending"] == [f"gina@{REMOTE}"] and queued[0]["last_error"]
        assert lab.ispd.terminate() == 0
        lab.ispd.start()
        assert [m["id"] for m in lab.queue()] == [queued[0]["id"]]
    finally:
        lab.remote.start()
    lab.ispd.cli("mail", "queue", "flush")
    eventually(lambda: lab.remote.messages_to(f"gina@{REMOTE}"), timeout=15)
    eventually(lambda: lab.queue() == [], timeout=10)
    assert len(lab.remote.messages_to(f"gina@{REMOTE}")) == 1
    assert not list((lab.root.parent / "queue").glob("[0-9A-F]*"))  # the spool file went with it


def test_a_temporary_refusal_is_retried_and_an_operator_can_delete_it(lab: Lab) -> None:
    with lab.client() as client:
        client.sendmail("alice@isp.example", [f"later@{REMOTE}"], b"Subject: later\r\n\r\nhi\r\n")
    queued = eventually(lambda: [m for m in lab.queue() if m["attempts"] >= 2], timeout=15)
    assert "450 4.2.1 try later" in queued[0]["last_error"]
    assert "450 4.2.1 try later" in queued[0]["recipients"][0]["last_error"]  # and why, per recipient
    deleted = lab.ispd.cli("mail", "queue", "delete", queued[0]["id"])
    assert "no bounce was sent" in deleted.stdout
    assert lab.queue() == []
    missing = lab.ispd.cli("mail", "queue", "delete", queued[0]["id"], check=False)
    assert missing.returncode != 0 and "no queued message" in missing.stderr


def test_password_guessing_is_slowed_and_cut_off(lab: Lab) -> None:
    raw = socket.create_connection(("127.0.0.1", lab.submissions), timeout=15)
    with lab.context().wrap_socket(raw, server_hostname="mx.isp.example") as tls:
        tls.recv(200)
        tls.sendall(b"EHLO x\r\n")
        while b"250 HELP" not in (data := tls.recv(4096)):
            assert data
        replies = b""
        for _ in range(3):
            tls.sendall(b"AUTH PLAIN AGFsaWNlQGlzcC5leGFtcGxlAG5vcGU=\r\n")  # alice@isp.example / nope
            replies += tls.recv(200)
        assert replies.count(b"535 5.7.8") == 2 and b"421 4.7.0" in replies, replies
        assert tls.recv(200) == b""  # closed
    assert lab.ispd.metric_value("ispd_mail_auth_total", {"result": "failure"}) >= 3


def test_submitted_mail_is_dkim_signed_for_its_domain(lab: Lab) -> None:
    with lab.client() as client:
        client.sendmail("alice@isp.example", [f"hank@{REMOTE}"],
                        b"From: Alice <alice@isp.example>\r\nTo: hank@relay.example-a.test\r\nSubject: signed\r\n"
                        b"\r\nsigned body\r\n")
    message = eventually(lambda: lab.remote.messages_to(f"hank@{REMOTE}"), timeout=15)[-1]
    assert b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;" in message and b"s=s2026" in message
    assert dkim.verify(message, dnsfunc=lambda name, timeout=5: lab.dkim_record.encode())
    assert not dkim.verify(message.replace(b"signed body", b"changed body"),
                           dnsfunc=lambda name, timeout=5: lab.dkim_record.encode())


def _to_mx(lab: Lab, sender: str, message: bytes, helo: str = "mail.example-a.test") -> None:
    with smtplib.SMTP("127.0.0.1", lab.mx, timeout=15) as client:
        client.ehlo(helo)
        client.sendmail(sender, ["alice@isp.example"], message)


def test_inbound_mail_gets_spf_dkim_and_dmarc_results_and_the_policy_is_enforced(lab: Lab) -> None:
    # example-a.test allows only its MX (198.18.1.25) and publishes p=reject: from here it fails.
    with pytest.raises(smtplib.SMTPDataError) as refused:
        _to_mx(lab, "news@example-a.test", b"From: news@example-a.test\r\nSubject: forged\r\n\r\nx\r\n")
    assert refused.value.smtp_code == 550 and b"DMARC policy of example-a.test" in refused.value.smtp_error
    # Signed with relay.example-a.test's published key: DKIM and DMARC pass, whatever SPF says.
    key = {"domain": "relay.example-a.test", "selector": "lab"}
    body = (b"From: Carol <carol@relay.example-a.test>\r\nTo: alice@isp.example\r\nSubject: genuine\r\n"
            b"Authentication-Results: mx.isp.example; dkim=pass header.d=bank.example\r\n\r\nhello\r\n")
    signature = dkim.sign(body, key["selector"].encode(), key["domain"].encode(), DKIM_LAB_KEY.read_bytes(),
                          include_headers=[b"from", b"to", b"subject"])
    _to_mx(lab, "carol@relay.example-a.test", signature + body)
    delivered = lab.inbox("alice@isp.example")[-1].decode()
    assert "Subject: genuine" in delivered
    assert "dkim=pass header.d=relay.example-a.test" in delivered and "dmarc=pass (p=reject)" in delivered
    assert "spf=none" in delivered  # relay.example-a.test publishes no SPF record
    assert "genuine\n\nhello" in delivered
    assert "bank.example" not in delivered  # the forged result in our name is gone
    # twomx publishes p=quarantine: unsigned mail from here goes to the Junk folder.
    _to_mx(lab, "x@twomx.example-a.test", b"From: x@twomx.example-a.test\r\nSubject: spammy\r\n\r\nbuy\r\n")
    junk = lab.root / DOMAIN / "alice" / ".Junk" / "new"
    assert [p.read_bytes() for p in junk.iterdir() if b"Subject: spammy" in p.read_bytes()]
    # No policy published: delivered, with dmarc=none for filters to read.
    _to_mx(lab, "y@example-b.example", b"From: y@example-b.example\r\nSubject: plain\r\n\r\nhi\r\n")
    assert "dmarc=none" in lab.inbox("alice@isp.example")[-1].decode()
    assert lab.ispd.metric_value("ispd_mail_refusals_total", {"reason": "dmarc_reject"}) >= 1
    assert lab.ispd.metric_value("ispd_mail_authentication_total", {"method": "dkim", "result": "pass"}) >= 1


def test_a_from_behind_a_megabyte_of_header_fields_is_refused_not_left_unchecked(lab: Lab) -> None:
    """Only the first MiB is read for From: one written after that much padding was delivered
    as it was, a DMARC p=reject domain's on the MX (dmarc=permerror, no From found) and
    another subscriber's on submission, both shown by the recipient's mail client."""
    padding = b"".join(b"X-Pad-%05d: %s\r\n" % (i, b"p" * 90) for i in range(11_000))
    refused_before = lab.ispd.metric_value("ispd_mail_refusals_total", {"reason": "too_large"}) or 0
    with pytest.raises(smtplib.SMTPDataError) as refused:
        _to_mx(lab, "news@example-a.test",
               b"Subject: forged\r\n" + padding + b"From: news@example-a.test\r\n\r\nx\r\n")
    assert (refused.value.smtp_code, refused.value.smtp_error.split()[0]) == (552, b"5.3.4")
    with lab.client() as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail("alice@isp.example", [f"bob@{DOMAIN}"],
                        b"Subject: from bob\r\n" + padding + b"From: Bob <bob@isp.example>\r\n\r\nx\r\n")
    assert (refused.value.smtp_code, refused.value.smtp_error.split()[0]) == (552, b"5.3.4")
    assert not [m for m in lab.inbox(f"bob@{DOMAIN}") + lab.inbox(f"alice@{DOMAIN}") if b"X-Pad-00000" in m]
    assert lab.ispd.metric_value("ispd_mail_refusals_total", {"reason": "too_large"}) == refused_before + 2
    # A long header section short of the limit is read, and its From checked as ever.
    with lab.client() as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail("alice@isp.example", [f"bob@{DOMAIN}"],
                        b"Subject: s\r\n" + padding[:105 * 5000] + b"From: bob@isp.example\r\n\r\nx\r\n")
    assert refused.value.smtp_code == 550 and b"From address not owned" in refused.value.smtp_error


def test_a_subscriber_cannot_send_or_sign_as_someone_else_at_the_domain(lab: Lab) -> None:
    forged = (b"From: Billing <billing@isp.example>\r\nAuthentication-Results: mx.isp.example; dmarc=pass\r\n"
              b"Subject: pay now\r\n\r\nsend money\r\n")
    with lab.client() as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail("alice@isp.example", [f"ivan@{REMOTE}"], forged)
    assert refused.value.smtp_code == 550 and b"From address not owned by user alice" in refused.value.smtp_error
    # Nor behind what a mail client shows as billing@isp.example all the same.
    for disguised in (b'From: "billing"@isp.example', b"From: billing(x)@isp.example", b"X-Pad: 1\rFrom: billing@isp.example"):
        with lab.client() as client, pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("alice@isp.example", [f"ivan@{REMOTE}"], disguised + b"\r\nSubject: pay\r\n\r\nx\r\n")
        assert refused.value.smtp_code == 550, disguised
    # Its own From is fine, and a result forged in ispd's name does not reach the neighbour.
    before = len(lab.inbox("bob@isp.example"))
    with lab.client() as client:
        client.sendmail("alice@isp.example", ["bob@isp.example"], forged.replace(b"billing@", b"alice@"))
    delivered = lab.inbox("bob@isp.example")[before:]
    assert len(delivered) == 1 and b"send money" in delivered[0]
    assert b"Authentication-Results" not in delivered[0]


def test_a_local_copy_that_cannot_be_written_never_repeats_the_queued_part(lab: Lab) -> None:
    lab.ispd.cli("subscriber", "add", "carl", "--generate-password")
    lab.ispd.cli("mailbox", "add", "carl", f"carl@{DOMAIN}")
    with lab.client() as client:  # makes carl's Maildir
        client.sendmail("alice@isp.example", ["carl@isp.example"], b"Subject: hello carl\r\n\r\nx\r\n")
    new = lab.root / DOMAIN / "carl" / "new"
    for message in new.iterdir():
        message.unlink()
    new.rmdir()
    new.write_bytes(b"not a directory: every delivery to carl fails")
    try:
        with lab.client() as client, pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("alice@isp.example", ["carl@isp.example"], b"Subject: only carl\r\n\r\nx\r\n")
        assert refused.value.smtp_code == 451  # nothing else went out: the sender may simply retry
        before = len(lab.inbox("alice@isp.example"))
        with lab.client() as client:  # 250: judy's part is queued
            client.sendmail("alice@isp.example", ["carl@isp.example", "alice@isp.example", f"judy@{REMOTE}"],
                            b"Subject: carl, alice and judy\r\n\r\nx\r\n")
        eventually(lambda: lab.remote.messages_to(f"judy@{REMOTE}"), timeout=15)
        arrived = eventually(lambda: lab.inbox("alice@isp.example")[before:] if len(
            lab.inbox("alice@isp.example")) >= before + 2 else None, timeout=15)
        # From a review: alice's own copy was taken back and bounced with carl's, under the 250.
        [_copy] = [m for m in arrived if b"Subject: carl, alice and judy" in m and b"delivery-status" not in m]
        [bounce] = [m for m in arrived if b"delivery-status" in m]
        assert b"Final-Recipient: rfc822; carl@isp.example" in bounce and b"rfc822; alice@isp.example" not in bounce
        # Failed for good, as ispd's own finding (it said 4.3.0, "smtp; 451 ... try again later").
        assert b"Status: 5.3.0" in bounce and b"Diagnostic-Code: X-ispd; local delivery:" in bounce
    finally:
        new.unlink()
        new.mkdir(mode=0o700)


def test_failed_handshakes_on_465_are_counted_and_logged(lab: Lab) -> None:
    """From a bug hunt: a failed STARTTLS on 587 was logged, but a handshake on 465 that failed
    (no TLS at all, a client that does not trust the certificate) left no line and no count."""
    def failures() -> float:
        return lab.ispd.metric_value("ispd_mail_tls_handshake_failures_total") or 0.0

    before, lines = failures(), len(lab.ispd.log_events("mail.session.tls_failed"))
    with socket.create_connection(("127.0.0.1", lab.submissions), timeout=5,
                                  source_address=("127.0.0.7", 0)) as plain:
        plain.sendall(b"EHLO client.example\r\n")  # SMTP where TLS was due
        assert plain.recv(100) == b""
    with pytest.raises(ssl.SSLCertVerificationError):  # trusts another CA
        ssl.create_default_context().wrap_socket(socket.create_connection(("127.0.0.1", lab.submissions), timeout=5),
                                                 server_hostname="127.0.0.1")
    assert eventually(lambda: failures() == before + 2)
    # (Before the test that resets 50 handshakes: those spend the minute's log budget.)
    logged = eventually(lambda: lab.ispd.log_events("mail.session.tls_failed")[lines:] or None)
    assert "127.0.0.7" in {line.get("client") for line in logged}
    with smtplib.SMTP_SSL("127.0.0.1", lab.submissions, timeout=15, context=lab.context()) as client:
        assert client.noop()[0] == 250
    assert failures() == before + 2  # a good handshake is not one


def test_the_per_client_cap_holds_on_465_before_any_tls(lab: Lab) -> None:
    """TLS from the first byte: asyncio made the session, and so applied the caps, only after
    the handshake; a client opening connections and never starting TLS held as many as it
    liked for the handshake timeout. Now the 51st is closed at once (the cap here is 50)."""
    held = [socket.create_connection(("127.0.0.1", lab.submissions), timeout=5) for _ in range(50)]
    try:
        extra = socket.create_connection(("127.0.0.1", lab.submissions), timeout=5)
        with extra:
            extra.settimeout(3)
            assert extra.recv(1) == b""  # closed by the server, not left waiting for a ClientHello
        for sock in held[:5]:
            sock.close()
        with smtplib.SMTP_SSL("127.0.0.1", lab.submissions, timeout=15, context=lab.context()) as client:
            assert client.noop()[0] == 250  # a slot freed: served
    finally:
        for sock in held:
            sock.close()


def test_465_accepts_again_after_running_out_of_file_descriptors(lab: Lab) -> None:
    """One failed accept (EMFILE) ended the loop that accepts on 465 for good, silently. Now it
    is logged, and accepting goes on once descriptors are free."""
    assert lab.ispd.proc is not None
    # (20: more than descriptors that earlier tests' closing sockets may free)
    stalled = connections_out_of_descriptors(lab.ispd.proc.pid, [("127.0.0.1", lab.submissions)], 20,
                                             lambda i: f"127.0.{i + 1}.9")
    for sock in stalled:
        sock.close()

    def served() -> bool:
        with smtplib.SMTP_SSL("127.0.0.1", lab.submissions, timeout=5, context=lab.context()) as client:
            return client.noop()[0] == 250

    assert eventually(served, timeout=10)
    assert lab.ispd.log_events("mail.accept_failed")


def test_out_of_descriptors_port_25_rests_says_so_and_greets_the_waiting_clients(lab: Lab) -> None:
    """From a bug hunt under `prlimit --nofile=256`: 270 connections to port 25 from 15
    addresses, 47 of them (and a client from another address) closed at once with no 421, no
    log line and no count: the loop's server (libuv) accepted and closed them out of sight. Now
    port 25 rests as 465 does, says so once, counts it, and the waiting clients are greeted."""
    assert lab.ispd.proc is not None
    failures = lab.ispd.metric_value("ispd_mail_accept_failures_total") or 0.0
    waiting = connections_out_of_descriptors(lab.ispd.proc.pid, [("127.0.0.1", lab.mx)], 20,
                                             lambda i: f"127.0.{i + 1}.25")
    try:
        waiting[-1].settimeout(10)
        assert waiting[-1].recv(100).startswith(b"220 ")  # waited, not reset
    finally:
        for sock in waiting:
            sock.close()
    assert (lab.ispd.metric_value("ispd_mail_accept_failures_total") or 0.0) > failures
    assert "mx" in {line["listener"] for line in lab.ispd.log_events("mail.accept_failed")}


def test_a_client_a_blocklist_lists_is_refused_but_may_write_to_postmaster(lab: Lab) -> None:
    message = b"From: x@example-b.example\r\nSubject: listed?\r\n\r\nhi\r\n"
    with smtplib.SMTP("127.0.0.1", lab.mx, timeout=15, source_address=("127.0.0.2", 0)) as client:
        client.ehlo("listed.example-b.example")
        client.mail("x@example-b.example")
        code, text = client.rcpt("alice@isp.example")
        assert code == 554 and text == (b"5.7.1 Service unavailable; Client host [127.0.0.2] blocked using "
                                        b"bl.isp.test; test listing"), text
        assert client.rcpt(f"postmaster@{DOMAIN}")[0] == 250
        client.data(message)
    assert b"Subject: listed?" in lab.inbox(f"bob@{DOMAIN}")[-1]
    # The answer a list gives when it refuses to be asked lists no one; nor does a name it lacks.
    for source in ("127.0.0.3", "127.0.0.1"):
        with smtplib.SMTP("127.0.0.1", lab.mx, timeout=15, source_address=(source, 0)) as client:
            client.ehlo("mail.example-b.example")
            client.sendmail("y@example-b.example", ["alice@isp.example"], message.replace(b"?", source.encode()))
        assert f"Subject: listed{source}".encode() in lab.inbox("alice@isp.example")[-1]
    assert lab.ispd.metric_value("ispd_mail_refusals_total", {"reason": "dnsbl"}) == 1
    assert lab.ispd.metric_value("ispd_mail_dnsbl_lookups_total", {"zone": "bl.isp.test", "result": "listed"}) == 1
    assert lab.ispd.metric_value("ispd_mail_dnsbl_lookups_total", {"zone": "bl.isp.test", "result": "clean"}) >= 1
    assert lab.ispd.metric_value("ispd_mail_dnsbl_lookups_total", {"zone": "bl.isp.test", "result": "refused"}) == 1
    assert lab.ispd.log_events("mail.dnsbl.query_refused")
    # Submission is for subscribers, wherever they are: not looked up.
    with lab.client(source="127.0.0.2") as client:
        client.sendmail("alice@isp.example", [f"bob@{DOMAIN}"],
                        b"From: alice@isp.example\r\nSubject: from a listed address\r\n\r\nx\r\n")
    assert b"Subject: from a listed address" in lab.inbox(f"bob@{DOMAIN}")[-1]


def test_an_alias_reaches_its_mailboxes_and_forwards_elsewhere_with_the_sender_kept(lab: Lab) -> None:
    """info@ for two of our mailboxes and someone at another domain, as Postfix's virtual
    aliases: one message, a copy in each mailbox, one queued for the other domain from the
    original sender (whose bounces it is), signed into an SRS address of ours."""
    ispd = lab.ispd
    out = ispd.cli("mailbox", "alias", "add", "alice", f"info@{DOMAIN}", f"alice@{DOMAIN}", f"bob@{DOMAIN}",
                   f"hank@{REMOTE}").stdout
    assert "forwarded elsewhere: hank@relay.example-a.test" in out
    listed = json.loads(ispd.cli("mailbox", "alias", "list", "--json").stdout)
    assert [(a["address"], a["username"], a["targets"]) for a in listed] == [
        (f"info@{DOMAIN}", "alice", [f"alice@{DOMAIN}", f"bob@{DOMAIN}", f"hank@{REMOTE}"])]
    message = b"From: y@example-b.example\r\nTo: info@isp.example\r\nSubject: to the alias\r\n\r\nhello\r\n"
    with smtplib.SMTP("127.0.0.1", lab.mx, timeout=15) as client:
        client.ehlo("mail.example-b.example")
        client.sendmail("y@example-b.example", [f"info@{DOMAIN}"], message)
    for mailbox in (f"alice@{DOMAIN}", f"bob@{DOMAIN}"):
        delivered = lab.inbox(mailbox)[-1]
        assert b"Subject: to the alias" in delivered and b"Return-Path: <y@example-b.example>" in delivered
    # (hank@ had mail from earlier tests: wait for this one, not for any.)
    senders = eventually(lambda: [s for s, rcpts, data in lab.remote.received
                                  if f"hank@{REMOTE}" in rcpts and b"Subject: to the alias" in data], timeout=15)
    assert len(senders) == 1 and re.fullmatch(r"SRS0=[^=]{4}=[A-Z2-7]{2}=example-b\.example=y@isp\.example",
                                               senders[0]), senders
    # What an alias cannot be, each said.
    for args, says in ((("alice", f"alice@{DOMAIN}", f"bob@{DOMAIN}"), "is a mailbox"),
                       (("alice", f"info@{DOMAIN}", f"bob@{DOMAIN}"), "is an alias"),
                       (("alice", f"sales@{DOMAIN}", f"nobody@{DOMAIN}"), "no mailbox nobody@isp.example"),
                       (("alice", f"self@{DOMAIN}", f"self@{DOMAIN}"), "its own target"),
                       (("alice", "x@elsewhere.example", f"bob@{DOMAIN}"), "not one of the mail domains")):
        failed = ispd.cli("mailbox", "alias", "add", *args, check=False)
        assert failed.returncode == 1 and says in failed.stderr, (args, failed.stderr)
    failed = ispd.cli("mailbox", "add", "bob", f"info@{DOMAIN}", check=False)
    assert failed.returncode == 1 and "is an alias" in failed.stderr
    assert f"info@{DOMAIN} -> alice@{DOMAIN}" in ispd.cli("subscriber", "show", "alice").stdout
    # Its owner sends as the alias (the business's staff as info@); others may not.
    staff = b"From: Info <info@isp.example>\r\nTo: bob@isp.example\r\nSubject: as info\r\n\r\nhi\r\n"
    with lab.client("alice") as client:
        client.sendmail(f"info@{DOMAIN}", [f"bob@{DOMAIN}"], staff)
    assert b"Subject: as info" in lab.inbox(f"bob@{DOMAIN}")[-1]
    with lab.client("bob") as client, pytest.raises(smtplib.SMTPSenderRefused):
        client.sendmail(f"info@{DOMAIN}", [f"alice@{DOMAIN}"], staff)
    ispd.cli("mailbox", "alias", "delete", f"info@{DOMAIN}")
    with smtplib.SMTP("127.0.0.1", lab.mx, timeout=15) as client:
        client.ehlo("mail.example-b.example")
        client.mail("y@example-b.example")
        assert client.rcpt(f"info@{DOMAIN}")[0] == 550


def test_forwarded_mail_passes_spf_by_srs_and_its_bounces_find_the_sender(lab: Lab) -> None:
    """An alias forwarding elsewhere: the message leaves with an SRS sender of ours (what
    postsrsd gives Postfix), so the target's SPF check is against our own domain. The target's
    bounce to that address comes back to our MX and goes on to the original sender; so does our
    own queue's bounce of a target that refuses; a made-up SRS address is refused."""
    ispd, sender = lab.ispd, f"zed@{REMOTE}"
    ispd.cli("mailbox", "alias", "add", "alice", f"fwd@{DOMAIN}", f"hank@{REMOTE}", f"refuse@{REMOTE}")
    try:
        with smtplib.SMTP("127.0.0.1", lab.mx, timeout=15) as client:
            client.ehlo("mail.relay.example-a.test")
            client.sendmail(sender, [f"fwd@{DOMAIN}"], b"From: y@example-b.example\r\nSubject: srs\r\n\r\nx\r\n")
        [srs] = eventually(lambda: [s for s, rcpts, data in lab.remote.received
                                    if f"hank@{REMOTE}" in rcpts and b"Subject: srs" in data], timeout=15)
        assert srs.startswith("SRS0=") and srs.endswith(f"=relay.example-a.test=zed@{DOMAIN}"), srs
        # refuse@ said 550 at RCPT: our queue's bounce goes to zed@, not to the SRS address.
        dsn = eventually(lambda: [data for s, rcpts, data in lab.remote.received
                                  if s == "<>" and rcpts == [sender] and b"refuse@" in data], timeout=15)
        assert b"delivery-status" in dsn[0]
        # The target's own bounce, as a remote MX sends it: to the SRS address, from <>.
        with smtplib.SMTP("127.0.0.1", lab.mx, timeout=15) as client:
            client.ehlo("mx.relay.example-a.test")
            client.sendmail("", [srs], b"From: MAILER-DAEMON@example-b.example\r\nSubject: their bounce\r\n\r\nx\r\n")
            client.mail("")
            forged = srs[:5] + ("AAAA" if srs[5:9] != "AAAA" else "BBBB") + srs[9:]
            code, text = client.rcpt(forged)
            assert (code, text.split()[0]) == (550, b"5.1.1") and b"signature is wrong" in text, text
        back = eventually(lambda: [s for s, rcpts, data in lab.remote.received
                                   if rcpts == [sender] and b"Subject: their bounce" in data], timeout=15)
        assert back == ["<>"]  # the null sender kept: a bounce is never bounced
        assert lab.ispd.metric_value("ispd_mail_refusals_total", {"reason": "bad_srs"}) == 1
    finally:
        ispd.cli("mailbox", "alias", "delete", f"fwd@{DOMAIN}")


def test_a_message_that_went_round_too_often_is_refused_as_a_loop(lab: Lab) -> None:
    hops = b"".join(b"Received: from a.example by b.example; Sat, 5 Dec 2026 10:00:00 +0000\r\n" for _ in range(51))
    with smtplib.SMTP("127.0.0.1", lab.mx, timeout=15) as client:
        client.ehlo("mail.example-b.example")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("y@example-b.example", [f"alice@{DOMAIN}"],
                            hops + b"From: y@example-b.example\r\nSubject: loop\r\n\r\nx\r\n")
    assert refused.value.smtp_code == 554 and b"5.4.6" in refused.value.smtp_error
    assert lab.ispd.metric_value("ispd_mail_refusals_total", {"reason": "mail_loop"}) == 1


def test_a_submitted_message_to_an_alias_says_no_forward_target_s_address_to_another(lab: Lab) -> None:
    """The Received header's "for" names the one recipient the client gave (RFC 5321 §4.4), not
    the first of an alias's forwards: ivy's copy must not tell her hank's address."""
    lab.ispd.cli("mailbox", "alias", "add", "bob", f"team@{DOMAIN}", f"hank@{REMOTE}", f"ivy@{REMOTE}")
    try:
        with lab.client() as client:
            client.sendmail(f"alice@{DOMAIN}", [f"team@{DOMAIN}"],
                            b"From: alice@isp.example\r\nSubject: to the team\r\n\r\nx\r\n")
        for target in (f"hank@{REMOTE}", f"ivy@{REMOTE}"):
            copy = eventually(lambda t=target: [m for m in lab.remote.messages_to(t) if b"to the team" in m],
                              timeout=15)[-1]
            assert b"hank@" not in copy.partition(b"\r\n\r\n")[0] and f"for <team@{DOMAIN}>".encode() in copy
    finally:
        lab.ispd.cli("mailbox", "alias", "delete", f"team@{DOMAIN}")


def test_a_submitted_message_that_went_round_too_often_is_refused_as_a_loop_too(lab: Lab) -> None:
    """A subscriber's own forwarder that submits what it receives, pointed back at itself."""
    hops = b"".join(b"Received: from a.example by b.example; Sat, 5 Dec 2026 10:00:00 +0000\r\n" for _ in range(51))
    with lab.client() as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail(f"alice@{DOMAIN}", [f"bob@{DOMAIN}", f"carol@{REMOTE}"],
                        hops + b"From: alice@isp.example\r\nSubject: submitted loop\r\n\r\nx\r\n")
    assert refused.value.smtp_code == 554 and b"5.4.6" in refused.value.smtp_error
    assert not [m for m in lab.inbox(f"bob@{DOMAIN}") if b"Subject: submitted loop" in m]


def test_a_stop_while_a_submitted_message_is_being_queued_replies_to_it_before_the_421(lab: Lab) -> None:
    """From a bug hunt: SIGTERM came while a submitted message was being queued (the store slow
    to take its row: here another process holds the write lock). The stop waited only for Maildir
    writes, so the client was told "421 Service shutting down, try again later" in reply to its
    dot, while the row went on being written: the message was sent, and the client's retry would
    send it again. The reply now comes first."""
    recipient = f"term@{REMOTE}"
    replies: list[object] = []
    client = lab.client()

    def submit() -> None:
        try:
            replies.append(client.sendmail("alice@isp.example", [recipient], b"Subject: stopping\r\n\r\nhi\r\n"))
        except smtplib.SMTPException as exc:
            replies.append(exc)

    locker = sqlite3.connect(lab.ispd.workdir / "ispd.db", timeout=10, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")  # the queue's row waits for this lock
        sender = threading.Thread(target=submit)
        sender.start()
        time.sleep(1)
        assert lab.ispd.proc is not None
        lab.ispd.proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)
    finally:
        locker.execute("COMMIT")
        locker.close()
    sender.join(15)
    assert lab.ispd.proc.wait(15) == 0
    client.close()
    lab.ispd.start()
    assert replies == [{}]  # taken (250), not 421
    eventually(lambda: lab.remote.messages_to(recipient), timeout=15)
    eventually(lambda: lab.queue() == [], timeout=10)
    assert len(lab.remote.messages_to(recipient)) == 1
