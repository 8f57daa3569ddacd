"""Mail end to end: ispd as a process with its MX on loopback, swaks and smtplib as the world's
mail servers, mailboxes made with the CLI, messages read back from the Maildir."""

from __future__ import annotations

import json
import random
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lab.certs import issue
from tests.lab.maildir import inbox
from tests.lab.ports import free_tcp_port
from tests.lab.process import IspdProcess, base_config, eventually

DOMAIN = "isp.example"
MAX_MESSAGE_BYTES = 100_000


@dataclass
class Mail:
    ispd: IspdProcess
    port: int
    root: Path
    ca: Path

    def inbox(self, address: str) -> list[bytes]:
        return inbox(self.root, address)

    def smtp(self) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
        client.ehlo("sender.example")
        return client

    def raw(self, payload: bytes, *, wait_for: bytes = b"221 ") -> bytes:
        """Send bytes as they are (no client-side fixing of line ends) and read until ``wait_for``."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            received = sock.recv(4096)
            sock.sendall(payload)
            deadline = time.monotonic() + 10
            while wait_for not in received and time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
            return received

    def swaks(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["swaks", "--server", f"127.0.0.1:{self.port}", "--helo", "sender.example",
                               "--from", "someone@sender.example", "--timeout", "10", *args],
                              capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def mail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mail]:
    if shutil.which("swaks") is None:
        pytest.fail("swaks is missing: tools/setup --test installs it")
    workdir = tmp_path_factory.mktemp("mail")
    certificates = issue(workdir, "mx.isp.example", name="mx")
    port = free_tcp_port()
    config = base_config(workdir, mail={
        "enabled": True, "domains": [DOMAIN, "other-local.example"], "hostname": "mx.isp.example",
        "maildir_root": str(workdir / "mail"), "listen_mx": [f"127.0.0.1:{port}"],
        "certificate": str(certificates.certificate), "private_key": str(certificates.private_key),
        "max_message_bytes": MAX_MESSAGE_BYTES, "max_connections_per_client": 4, "postmaster": f"noc@{DOMAIN}",
        # No DNS here (test_mail_submission.py checks SPF, DKIM and DMARC against the lab hierarchy);
        # should anything be looked up, it goes to a loopback port where nothing answers.
        "authentication_checks": False, "resolver": f"127.0.0.1:{free_tcp_port()}",
    })
    with IspdProcess(workdir, config) as ispd:
        ispd.start()
        ispd.cli("plan", "add", "small", "--mail-quota", "20K")
        ispd.cli("subscriber", "add", "alice", "--generate-password")
        ispd.cli("subscriber", "add", "bob", "--plan", "small", "--generate-password")
        ispd.cli("mailbox", "add", "alice", f"alice@{DOMAIN}")
        ispd.cli("mailbox", "add", "alice", f"noc@{DOMAIN}")
        ispd.cli("mailbox", "add", "bob", f"bob@{DOMAIN}")
        yield Mail(ispd, port, workdir / "mail", certificates.ca)


def test_swaks_delivers_into_the_maildir_with_trace_headers(mail: Mail) -> None:
    before = len(mail.inbox(f"alice@{DOMAIN}"))
    result = mail.swaks("--to", f"alice@{DOMAIN}", "--header", "Subject: swaks test",
                        "--body", "Grüße aus dem Test")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  220 mx.isp.example ESMTP ispd" in result.stdout
    for keyword in ("PIPELINING", "SIZE 100000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "STARTTLS"):
        assert f"250-{keyword}" in result.stdout
    assert "250 2.0.0 Ok: queued as" in result.stdout
    messages = mail.inbox(f"alice@{DOMAIN}")
    assert len(messages) == before + 1
    text = messages[-1].decode()
    assert text.startswith("Return-Path: <someone@sender.example>\nReceived: from sender.example ([127.0.0.1])\n"
                           "\tby mx.isp.example (ispd) with ESMTP id ")
    assert f"\tfor <alice@{DOMAIN}>; " in text
    assert "Subject: swaks test\n" in text and "Grüße aus dem Test" in text and "\r" not in text


def test_8bit_utf8_and_dot_lines_arrive_intact(mail: Mail) -> None:
    body = (b"From: j\xc3\xb6ran@ex\xc3\xa4mple.example\r\nSubject: bytes\r\n\r\n"
            b".one leading dot\r\n..two leading dots\r\n.\r\nlatin-1 \xe9\xe8 and utf-8 \xe2\x82\xac\r\n")
    with mail.smtp() as client:
        client.sendmail("jöran@exämple.example", [f"alice@{DOMAIN}"], body,
                        mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    message = mail.inbox(f"alice@{DOMAIN}")[-1]
    assert message.startswith("Return-Path: <jöran@exämple.example>\n".encode())
    assert message.endswith(body.replace(b"\r\n", b"\n"))
    assert b"with UTF8SMTP id" in message


def test_only_our_mailboxes_take_mail_and_nothing_is_relayed(mail: Mail) -> None:
    with mail.smtp() as client:
        client.mail("someone@sender.example")
        for address, expected in ((f"nobody@{DOMAIN}", (550, b"5.1.1")),
                                  ("victim@elsewhere.example", (554, b"5.7.1")),
                                  (f"alice@sub.{DOMAIN}", (554, b"5.7.1")),
                                  ("nobody@other-local.example", (550, b"5.1.1"))):
            code, text = client.rcpt(address)
            assert (code, text.split()[0]) == expected, (address, code, text)
        assert client.rcpt(f"ALICE+lists@{DOMAIN}")[0] == 250  # a subaddress of alice
        assert client.rcpt(f"postmaster@{DOMAIN}")[0] == 250  # to noc@
        assert client.rcpt("<postmaster>")[0] == 250
    assert mail.ispd.metric_value("ispd_mail_refusals_total", {"reason": "relay_denied"}) >= 2


def test_a_message_to_several_names_of_one_mailbox_lands_once(mail: Mail) -> None:
    before_alice, before_noc = len(mail.inbox(f"alice@{DOMAIN}")), len(mail.inbox(f"noc@{DOMAIN}"))
    with mail.smtp() as client:
        client.sendmail("someone@sender.example", [f"alice@{DOMAIN}", f"alice+x@{DOMAIN}", f"postmaster@{DOMAIN}"],
                        b"Subject: twice\r\n\r\nonce per mailbox\r\n")
    assert len(mail.inbox(f"alice@{DOMAIN}")) == before_alice + 1
    assert len(mail.inbox(f"noc@{DOMAIN}")) == before_noc + 1
    # Several recipients: the Received header names none of them.
    assert b"\tfor <" not in mail.inbox(f"alice@{DOMAIN}")[-1]


def test_the_size_limit_holds_whether_or_not_the_client_declares_a_size(mail: Mail) -> None:
    big = b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n"
    big *= MAX_MESSAGE_BYTES // len(big) + 1
    with mail.smtp() as client, pytest.raises(smtplib.SMTPSenderRefused) as refused:
        client.sendmail("someone@sender.example", [f"alice@{DOMAIN}"], big)  # smtplib sends SIZE=
    assert refused.value.smtp_code == 552
    before = len(mail.inbox(f"alice@{DOMAIN}"))
    reply = mail.raw(b"EHLO s\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<alice@isp.example>\r\nDATA\r\n"
                     + big + b".\r\nQUIT\r\n")
    assert b"552 5.3.4" in reply and b"221 2.0.0" in reply
    assert len(mail.inbox(f"alice@{DOMAIN}")) == before


def test_quota_refuses_for_now_or_for_good(mail: Mail) -> None:
    filler = b"Subject: filler\r\n\r\n" + (b"y" * 70 + b"\r\n") * 120  # ~8.6 KB; bob's quota is 20 KiB
    with mail.smtp() as client:
        client.sendmail("someone@sender.example", [f"bob@{DOMAIN}"], filler)
        client.sendmail("someone@sender.example", [f"bob@{DOMAIN}"], filler)
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("someone@sender.example", [f"bob@{DOMAIN}"], filler)  # SIZE= says it won't fit
        assert refused.value.recipients[f"bob@{DOMAIN}"][0] == 452
        client.rset()
        code, text = client.docmd("MAIL FROM:<someone@sender.example> SIZE=30000")
        assert code == 250
        code, text = client.rcpt(f"bob@{DOMAIN}")
        assert (code, text.split()[0]) == (552, b"5.2.2")  # larger than the whole quota
    usage = json.loads(mail.ispd.cli("mailbox", "quota", f"bob@{DOMAIN}", "--json").stdout)
    assert usage["messages"] == 2 and usage["quota_bytes"] == 20480 and usage["quota_from"] == "plan"
    # Without SIZE the message is refused after DATA, and nothing lands.
    reply = mail.raw(b"EHLO s\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<bob@isp.example>\r\nDATA\r\n"
                     + filler + b".\r\nQUIT\r\n")
    assert b"452 4.2.2" in reply
    assert len(mail.inbox(f"bob@{DOMAIN}")) == 2
    mail.ispd.cli("mailbox", "quota", f"bob@{DOMAIN}", "--set", "1M")
    with mail.smtp() as client:
        client.sendmail("someone@sender.example", [f"bob@{DOMAIN}"], filler)
    assert len(mail.inbox(f"bob@{DOMAIN}")) == 3


def test_pipelined_commands_get_their_replies_in_order(mail: Mail) -> None:
    result = mail.swaks("--pipeline", "--to", f"alice@{DOMAIN},nobody@{DOMAIN},noc@{DOMAIN}")
    lines = result.stdout.splitlines()
    # swaks sent MAIL, the three RCPTs and DATA in one go, before reading any reply.
    sent = [line[4:].split(" ")[0] for line in lines if line.startswith(" -> ")][:6]
    assert sent == ["EHLO", "MAIL", "RCPT", "RCPT", "RCPT", "DATA"], result.stdout
    assert lines.index(" -> DATA") < lines.index("<-  250 2.1.0 Ok"), result.stdout
    codes = [line.split()[1] for line in lines if line.startswith(("<-  ", "<** ")) and line[4:8] != "250-"]
    assert codes == ["220", "250", "250", "250", "550", "250", "354", "250", "221"], result.stdout


@pytest.mark.parametrize("end", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r"])
def test_smtp_smuggling_cannot_end_data_early(mail: Mail, end: bytes) -> None:
    marker = f"smuggled-{random.randrange(10**9)}".encode()
    before = len(mail.inbox(f"alice@{DOMAIN}"))
    reply = mail.raw(b"EHLO s\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<alice@isp.example>\r\nDATA\r\n"
                     b"Subject: outer\r\n\r\nouter body" + end +
                     b"MAIL FROM:<admin@isp.example>\r\nRCPT TO:<alice@isp.example>\r\nDATA\r\n"
                     b"Subject: " + marker + b"\r\n\r\ninner\r\n.\r\nQUIT\r\n")
    assert reply.count(b"250 2.0.0 Ok: queued") == 1, reply
    messages = mail.inbox(f"alice@{DOMAIN}")
    assert len(messages) == before + 1
    assert marker in messages[-1] and b"Subject: outer" in messages[-1]  # one message, the smuggled text inside


def test_starttls_then_delivery(mail: Mail) -> None:
    result = mail.swaks("--tls", "--tls-ca-path", str(mail.ca), "--tls-verify", "--to", f"alice@{DOMAIN}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TLS started" in result.stdout
    assert b"with ESMTPS id" in mail.inbox(f"alice@{DOMAIN}")[-1]
    context = ssl.create_default_context(cafile=str(mail.ca))
    with mail.smtp() as client:
        client.starttls(context=context)
        client.ehlo("sender.example")
        assert not client.has_extn("starttls")
        client.sendmail("someone@sender.example", [f"alice@{DOMAIN}"], b"Subject: tls\r\n\r\nover TLS\r\n")
    assert mail.inbox(f"alice@{DOMAIN}")[-1].endswith(b"over TLS\n")


def test_one_client_cannot_hold_every_connection(mail: Mail) -> None:
    held = [socket.create_connection(("127.0.0.1", mail.port), timeout=10) for _ in range(4)]
    try:
        for sock in held:
            assert sock.recv(100).startswith(b"220 ")
        with socket.create_connection(("127.0.0.1", mail.port), timeout=10) as extra:
            assert extra.recv(200).startswith(b"421 4.7.0 ")
    finally:
        for sock in held:
            sock.close()
    # Once they are closed, the client may connect again.
    def greeted() -> bool:
        with socket.create_connection(("127.0.0.1", mail.port), timeout=10) as sock:
            return sock.recv(200).startswith(b"220 ")

    eventually(greeted, timeout=5)


def test_malformed_input_gets_errors_and_the_mx_carries_on(mail: Mail) -> None:
    reply = mail.raw(b"\x00\xff\xfe\r\n" + b"A" * 5000 + b"\r\nRCPT TO:<alice@isp.example>\r\nDATA\r\n"
                     b"MAIL FROM:<<<>>>\r\nEHLO\r\nVRFY\r\n\r\nQUIT\r\n")
    lines = reply.split(b"\r\n")
    assert all(line[:1] in (b"2", b"5", b"") for line in lines), reply
    assert b"503 5.5.1" in reply and b"221 2.0.0" in reply
    # Not UTF-8 in an SMTPUTF8 address: a permanent refusal, not "try again later".
    reply = mail.raw(b"EHLO s\r\nMAIL FROM:<a@sender.example> SMTPUTF8\r\nRCPT TO:<a\xff\xfe@isp.example>\r\n"
                     b"QUIT\r\n")
    assert b"553 5.1.3" in reply, reply
    reply = mail.raw(b"EHLO s\r\nMAIL FROM:<\xff\xfe@sender.example>\r\nQUIT\r\n")
    assert b"553 5.1.7" in reply, reply  # nor in a sender, which would go into Return-Path as it is
    rng = random.Random(8)
    verbs = [b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"RSET", b"NOOP", b"BDAT", b"AUTH", b"STARTTLS"]
    for _ in range(30):
        junk = b"".join(rng.choice(verbs) + b" " + rng.randbytes(rng.randrange(0, 60)) + b"\r\n" for _ in range(8))
        with socket.create_connection(("127.0.0.1", mail.port), timeout=10) as sock:
            sock.recv(200)
            sock.sendall(junk.replace(b"STARTTLS", b"NOOP"))  # a TLS handshake from random bytes is not the point
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(5)
            with_reply = b""
            try:
                while chunk := sock.recv(65536):
                    with_reply += chunk
            except (TimeoutError, ConnectionResetError):
                pass
    with mail.smtp() as client:
        client.sendmail("someone@sender.example", [f"alice@{DOMAIN}"], b"Subject: still here\r\n\r\nyes\r\n")
    assert mail.inbox(f"alice@{DOMAIN}")[-1].endswith(b"yes\n")
    # Each was the client's mistake, answered: none is a line in the operator's log (from a
    # review: the mail service set aiosmtpd's log back to warnings, a line per bogus command).
    assert '"logger": "mail.log"' not in mail.ispd.log_text()


def test_the_cli_manages_mailboxes(mail: Mail) -> None:
    failed = mail.ispd.cli("mailbox", "add", "alice", "alice@not-ours.example", check=False)
    assert failed.returncode != 0 and "not one of the mail domains" in failed.stderr
    failed = mail.ispd.cli("mailbox", "add", "alice", "a/b@isp.example", check=False)
    assert failed.returncode != 0 and "letters, digits" in failed.stderr
    mail.ispd.cli("mailbox", "add", "alice", f"temp@{DOMAIN}")
    listed = json.loads(mail.ispd.cli("mailbox", "list", "--subscriber", "alice", "--json").stdout)
    assert {m["address"] for m in listed} >= {f"alice@{DOMAIN}", f"temp@{DOMAIN}"}
    with mail.smtp() as client:
        assert client.mail("someone@sender.example")[0] == 250 and client.rcpt(f"temp@{DOMAIN}")[0] == 250
    with mail.smtp() as client:
        client.sendmail("someone@sender.example", [f"temp@{DOMAIN}"], b"Subject: for temp\r\n\r\nx\r\n")
    mail.ispd.cli("mailbox", "alias", "add", "alice", f"team@{DOMAIN}", f"temp@{DOMAIN}", f"alice@{DOMAIN}")
    mail.ispd.cli("mailbox", "alias", "add", "alice", f"only-temp@{DOMAIN}", f"temp@{DOMAIN}")
    deleted = mail.ispd.cli("mailbox", "delete", f"temp@{DOMAIN}")
    assert "its mail is kept in" in deleted.stdout
    # The aliases that named it are said, with what their mail does now.
    assert f"alias team@{DOMAIN} still names temp@{DOMAIN}: its mail now reaches alice@{DOMAIN} only" in deleted.stdout
    assert f"alias only-temp@{DOMAIN} still names temp@{DOMAIN}: its mail now is refused (no other target)" \
        in deleted.stdout
    # The address given again (to anyone) is reached by those aliases again: said at once.
    added = mail.ispd.cli("mailbox", "add", "alice", f"temp@{DOMAIN}").stdout
    assert (f"alias only-temp@{DOMAIN} (of alice) names temp@{DOMAIN}: its mail reaches this mailbox from now"
            in added) and f"alias team@{DOMAIN} (of alice)" in added
    mail.ispd.cli("mailbox", "delete", f"temp@{DOMAIN}")
    for alias in ("team", "only-temp"):
        mail.ispd.cli("mailbox", "alias", "delete", f"{alias}@{DOMAIN}")
    assert not (mail.root / DOMAIN / "temp").exists()
    [archive] = (mail.root / DOMAIN).glob("temp~deleted-*")
    assert list((archive / "new").iterdir())
    # A directory left under the address (by hand, or an old ispd) is not handed to a new owner.
    (mail.root / DOMAIN / "temp" / "new").mkdir(parents=True)
    refused = mail.ispd.cli("mailbox", "add", "alice", f"temp@{DOMAIN}", check=False)
    assert refused.returncode != 0 and "move it away first" in refused.stderr
    (mail.root / DOMAIN / "temp" / "new").rmdir()
    (mail.root / DOMAIN / "temp").rmdir()
    with mail.smtp() as client:
        assert client.mail("someone@sender.example")[0] == 250 and client.rcpt(f"temp@{DOMAIN}")[0] == 550
    # Added again: a new, empty Maildir, which the daemon (that wrote to the old one) shows.
    mail.ispd.cli("mailbox", "add", "alice", f"temp@{DOMAIN}")
    shown = json.loads(mail.ispd.cli("mailbox", "show", f"temp@{DOMAIN}", "--json").stdout)
    assert {f["name"]: f["messages"] for f in shown["folders"]}["INBOX"] == 0
    show = json.loads(mail.ispd.cli("subscriber", "show", "alice", "--json").stdout)
    assert f"alice@{DOMAIN}" in {m["address"] for m in show["mailboxes"]}
    # Deleting a subscriber deletes its mailboxes, and sets their mail aside as `mailbox delete` does.
    mail.ispd.cli("subscriber", "add", "leaving")
    mail.ispd.cli("mailbox", "add", "leaving", f"leaving@{DOMAIN}")
    with mail.smtp() as client:
        client.sendmail("someone@sender.example", [f"leaving@{DOMAIN}"], b"Subject: last\r\n\r\nx\r\n")
    mail.ispd.cli("mailbox", "alias", "add", "alice", f"farewell@{DOMAIN}", f"leaving@{DOMAIN}", f"alice@{DOMAIN}")
    said = mail.ispd.cli("subscriber", "delete", "leaving").stdout.splitlines()
    assert said[0].startswith("deleted subscriber leaving") and said[1].startswith(
        f"deleted its mailbox leaving@{DOMAIN}; its mail is kept in "), said
    assert said[2].startswith(f"alias farewell@{DOMAIN} still names leaving@{DOMAIN}: its mail now reaches "
                              f"alice@{DOMAIN} only"), said
    mail.ispd.cli("mailbox", "alias", "delete", f"farewell@{DOMAIN}")
    assert not (mail.root / DOMAIN / "leaving").exists() and list((mail.root / DOMAIN).glob("leaving~deleted-*"))
    mail.ispd.cli("mailbox", "add", "alice", f"leaving@{DOMAIN}")  # the address is free for someone else


def test_mailbox_show_lists_the_folders_as_imap_will_see_them(mail: Mail) -> None:
    count = len(mail.inbox(f"alice@{DOMAIN}"))
    shown = json.loads(mail.ispd.cli("mailbox", "show", f"alice@{DOMAIN}", "--json").stdout)
    folders = {f["name"]: f for f in shown["folders"]}
    assert set(folders) == {"INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"}
    inbox = folders["INBOX"]
    assert inbox["messages"] == inbox["unseen"] == count and inbox["uidnext"] == count + 1
    assert list((mail.root / DOMAIN / "alice" / "new").iterdir()) == []  # now in cur/, with their UIDs
    again = json.loads(mail.ispd.cli("mailbox", "show", f"alice@{DOMAIN}", "--json").stdout)
    assert again["folders"] == shown["folders"]  # stable: same UIDVALIDITY, same UIDNEXT
    text = mail.ispd.cli("mailbox", "show", f"alice@{DOMAIN}").stdout
    assert text.splitlines()[0].startswith(f"alice@{DOMAIN} (") and "UIDVALIDITY" in text
    nobody = mail.ispd.cli("mailbox", "show", f"nobody@{DOMAIN}", check=False)
    assert (nobody.returncode, nobody.stderr) == (1, f"ispd: no mailbox nobody@{DOMAIN}\n")
    unqueued = mail.ispd.cli("mail", "queue", "flush", "NOPE", check=False)
    assert (unqueued.returncode, unqueued.stderr) == (1, "ispd: no queued message NOPE\n")


def test_data_ends_only_at_its_terminator_however_the_bytes_arrive(mail: Mail) -> None:
    before = len(mail.inbox(f"alice@{DOMAIN}"))
    with socket.create_connection(("127.0.0.1", mail.port), timeout=10) as sock:
        sock.recv(200)
        sock.sendall(b"EHLO s\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<alice@isp.example>\r\nDATA\r\n")
        received = b""
        while b"354 " not in received:
            received += sock.recv(4096)
        # The terminator in pieces, a byte at a time, and a stuffed dot line split over two sends.
        for piece in (b"Subject: slow\r\n\r\n..st", b"uffed", b"\r", b"\n", b".", b"\r", b"\n"):
            sock.sendall(piece)
            time.sleep(0.05)
        # An empty message next, and a line over 998 octets after it: refused, the session goes on.
        sock.sendall(b"MAIL FROM:<a@sender.example>\r\nRCPT TO:<alice@isp.example>\r\nDATA\r\n.\r\n"
                     b"MAIL FROM:<a@sender.example>\r\nRCPT TO:<alice@isp.example>\r\nDATA\r\n"
                     + b"x" * 1200 + b"\r\n.\r\nQUIT\r\n")
        while b"221 " not in received:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
    assert received.count(b"250 2.0.0 Ok: queued") == 2, received
    assert b"500 5.5.2 Line too long" in received
    messages = mail.inbox(f"alice@{DOMAIN}")[before:]
    assert len(messages) == 2
    assert messages[0].endswith(b"Subject: slow\n\n.stuffed\n")
    assert messages[1].count(b"\n") == 4 and messages[1].startswith(b"Return-Path: <a@sender.example>")  # trace only


def test_one_full_mailbox_does_not_hold_back_the_others(mail: Mail) -> None:
    mail.ispd.cli("mailbox", "add", "alice", f"tiny@{DOMAIN}", "--quota", "1K")
    before_alice, before_noc = len(mail.inbox(f"alice@{DOMAIN}")), len(mail.inbox(f"noc@{DOMAIN}"))
    body = b"Subject: for two\r\nMessage-ID: <two@isp.example>\r\n\r\n" + (b"z" * 70 + b"\r\n") * 40  # ~3 KB
    # Without SIZE, so that only DATA knows it is too big for tiny@.
    reply = mail.raw(b"EHLO s\r\nMAIL FROM:<noc@isp.example>\r\nRCPT TO:<alice@isp.example>\r\n"
                     b"RCPT TO:<tiny@isp.example>\r\nDATA\r\n" + body + b".\r\nQUIT\r\n")
    assert b"250 2.0.0 Ok: queued" in reply, reply
    assert len(mail.inbox(f"alice@{DOMAIN}")) == before_alice + 1
    assert mail.inbox(f"tiny@{DOMAIN}") == []
    bounce = mail.inbox(f"noc@{DOMAIN}")[before_noc:]
    assert len(bounce) == 1 and b"Final-Recipient: rfc822; tiny@isp.example" in bounce[0]
    assert b"Status: 5.2.2" in bounce[0] and b"Message-ID: <two@isp.example>" in bounce[0]
    # Only tiny@ asked for: the reply itself says so.
    alone = mail.raw(b"EHLO s\r\nMAIL FROM:<noc@isp.example>\r\nRCPT TO:<tiny@isp.example>\r\nDATA\r\n"
                     + body + b".\r\nQUIT\r\n")
    assert b"552 5.2.2" in alone


def test_a_copy_not_written_is_said_and_not_logged_as_delivered(mail: Mail) -> None:
    """A full mailbox among several: the message's mail.delivered line listed it among the
    recipients, and with the null sender (no bounce) nothing else in the log told of the copy
    that was never written (shown on a running daemon: an alias to alice and a full bob)."""
    mail.ispd.cli("mailbox", "add", "alice", f"small@{DOMAIN}", "--quota", "1K")
    body = b"Subject: a bounce for two\r\n\r\n" + (b"z" * 70 + b"\r\n") * 40  # ~3 KB
    reply = mail.raw(b"EHLO s\r\nMAIL FROM:<>\r\nRCPT TO:<alice@isp.example>\r\nRCPT TO:<small@isp.example>\r\n"
                     b"DATA\r\n" + body + b".\r\nQUIT\r\n")
    assert b"250 2.0.0 Ok: queued as " in reply, reply
    queue_id = reply.split(b"queued as ")[1].split(b"\r\n")[0].decode()
    assert mail.inbox(f"small@{DOMAIN}") == []
    delivered = [e for e in mail.ispd.log_events("mail.delivered") if e["queue_id"] == queue_id]
    assert [e["recipients"] for e in delivered] == [[f"alice@{DOMAIN}"]], delivered
    refused = [e for e in mail.ispd.log_events("mail.delivery.refused") if e["queue_id"] == queue_id]
    assert [(e["recipient"], e["reply"][:9], e["bounce"]) for e in refused] == [
        (f"small@{DOMAIN}", "552 5.2.2", False)], refused


def own_mail_config(workdir: Path, mx: int, **mail: object) -> dict[str, object]:
    """A daemon of a test's own with the MX on ``mx`` (and whatever else ``mail`` adds)."""
    return base_config(workdir, mail={
        "enabled": True, "domains": [DOMAIN], "hostname": "mx.isp.example", "maildir_root": str(workdir / "mail"),
        "listen_mx": [f"127.0.0.1:{mx}"], "authentication_checks": False,
        "resolver": f"127.0.0.1:{free_tcp_port()}", **mail})


def test_a_stopping_daemon_says_goodbye_to_smtp_and_imap_clients(tmp_path: Path) -> None:
    """SIGTERM: an SMTP client gets 421 (RFC 5321 §3.8) and an IMAP client an untagged BYE
    before their connections close, rather than a bare EOF."""
    mx, imap = free_tcp_port(), free_tcp_port()
    certificates = issue(tmp_path, "mx.isp.example", name="mx")
    config = own_mail_config(tmp_path, mx, listen_imap=[f"127.0.0.1:{imap}"],
                             certificate=str(certificates.certificate), private_key=str(certificates.private_key))
    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()
        with socket.create_connection(("127.0.0.1", mx), timeout=10) as smtp, \
                socket.create_connection(("127.0.0.1", imap), timeout=10) as reader:
            assert smtp.recv(4096).startswith(b"220 ") and reader.recv(4096).startswith(b"* OK")
            smtp.sendall(b"EHLO sender.example\r\n")
            said = b""
            while b"250 " not in said:
                said += smtp.recv(4096)
            assert ispd.terminate() == 0

            def rest(sock: socket.socket) -> bytes:
                received = b""
                while chunk := sock.recv(4096):
                    received += chunk
                return received

            assert rest(smtp) == b"421 4.3.2 mx.isp.example Service shutting down, try again later\r\n"
            assert rest(reader) == b"* BYE ispd is shutting down, try again later\r\n"


def test_data_that_a_client_breaks_off_is_not_kept(tmp_path: Path) -> None:
    """A client that sends most of a message and hangs up: the daemon lets go of what it read.
    The session's task kept the exception, its traceback every frame's locals (the DATA so far)
    and the session, a cycle that the daemon's rare garbage collection left alone: 15 MB stayed
    for each such client."""
    mx = free_tcp_port()
    with IspdProcess(tmp_path, own_mail_config(tmp_path, mx, max_message_bytes=20_000_000)) as ispd:
        ispd.start()
        ispd.cli("subscriber", "add", "alice")
        ispd.cli("mailbox", "add", "alice", f"alice@{DOMAIN}")

        def rss_kb() -> int:
            status = Path(f"/proc/{ispd.proc.pid}/status").read_text()
            return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))

        line = b"x" * 998 + b"\r\n"
        before = rss_kb()
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", mx), timeout=10) as client:
                client.recv(4096)
                client.sendall(f"EHLO sender.example\r\nMAIL FROM:<a@sender.example>\r\n"
                               f"RCPT TO:<alice@{DOMAIN}>\r\nDATA\r\n".encode())
                said = b""
                while b"354" not in said:
                    said += client.recv(4096)
                for _ in range(15):
                    client.sendall(line * 1000)  # 15 MB in all, no terminator
            eventually(lambda: ispd.metric_value("ispd_mail_sessions") == 0)
        assert rss_kb() - before < 30_000, (before, rss_kb())  # not 5 times 15 MB


def test_a_client_still_sending_its_message_is_not_cut_off_by_the_command_timeout(tmp_path: Path) -> None:
    """The timeout is for silence: a message that takes longer than it to arrive, a line at a
    time, is taken (RFC 5321 §4.5.3.2.5); before, the connection was closed mid-DATA."""
    port = free_tcp_port()
    config = base_config(tmp_path, mail={
        "enabled": True, "domains": [DOMAIN], "maildir_root": str(tmp_path / "mail"),
        "listen_mx": [f"127.0.0.1:{port}"], "command_timeout_seconds": 10, "authentication_checks": False,
        "resolver": f"127.0.0.1:{free_tcp_port()}"})
    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()
        ispd.cli("subscriber", "add", "alice", "--generate-password")
        ispd.cli("mailbox", "add", "alice", f"alice@{DOMAIN}")
        client = smtplib.SMTP("127.0.0.1", port, timeout=30)
        client.ehlo("slow.example")
        assert client.mail("slow@example.net")[0] == 250
        assert client.rcpt(f"alice@{DOMAIN}")[0] == 250
        assert client.docmd("DATA")[0] == 354
        assert client.sock is not None
        client.sock.sendall(b"Subject: slow\r\n\r\n")
        started = time.monotonic()
        while time.monotonic() - started < 14:  # longer than the timeout, never silent for long
            client.sock.sendall(b"another line of a slow upload\r\n")
            time.sleep(2)
        client.sock.sendall(b".\r\n")
        assert client.getreply()[0] == 250
        client.quit()


def test_guessing_mailboxes_is_slowed_then_cut_off(mail: Mail) -> None:
    """Mailbox names are login names: as Postfix's error limits, after 10 refused recipients
    each costs a second, and the 20th ends the connection with 421."""
    client = smtplib.SMTP("127.0.0.1", mail.port, timeout=30)
    client.ehlo("guesser.example")
    client.mail("guesser@example.net")
    codes = [client.rcpt(f"guess{i}@{DOMAIN}")[0] for i in range(10)]
    assert codes == [550] * 10
    started = time.monotonic()
    codes = [client.rcpt(f"guess{i}@{DOMAIN}")[0] for i in range(10, 20)]
    assert codes == [550] * 9 + [421] and time.monotonic() - started >= 9
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.rcpt(f"alice@{DOMAIN}")



def test_delivered_mail_starts_the_count_of_refused_recipients_afresh(mail: Mail) -> None:
    """A list server with a few stale addresses per message is no guesser: each delivered
    message resets the count (Postfix: errors without delivering mail)."""
    client = smtplib.SMTP("127.0.0.1", mail.port, timeout=30)
    client.ehlo("lists.example")
    for message in range(4):  # 4 x 8 refusals: past the limit of 20 altogether
        client.mail("list@example.net")
        codes = [client.rcpt(f"stale{message}-{i}@{DOMAIN}")[0] for i in range(8)]
        assert codes == [550] * 8
        assert client.rcpt(f"alice@{DOMAIN}")[0] == 250
        assert client.data(b"Subject: list\r\n\r\nissue\r\n")[0] == 250
    # Recipients past max_recipients (452: send the rest later) are no errors at all.
    client.mail("list@example.net")
    codes = [client.rcpt(f"alice+{i}@{DOMAIN}")[0] for i in range(125)]
    assert codes.count(250) == 100 and codes.count(452) == 25
    assert client.data(b"Subject: many\r\n\r\nissue\r\n")[0] == 250
    client.quit()
