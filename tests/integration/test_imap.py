"""IMAP end to end: ispd as a process, mail delivered by SMTP, read with Python's imaplib (and a
raw TLS socket for IDLE, which imaplib of Python 3.11 lacks)."""

from __future__ import annotations

import base64
import imaplib
import smtplib
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.lab.certs import issue
from tests.lab.maildir import inbox
from tests.lab.ports import free_tcp_port
from tests.lab.process import IspdProcess, base_config

DOMAIN = "isp.example"
PASSWORD = "imap-secret-1"


@dataclass
class Lab:
    ispd: IspdProcess
    mx: int
    imap: int
    imaps: int
    ca: Path
    root: Path

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def deliver(self, subject: str, body: str = "hello", to: str = f"erin@{DOMAIN}") -> None:
        with smtplib.SMTP("127.0.0.1", self.mx, timeout=10) as client:
            client.sendmail("sender@elsewhere.example", [to],
                            f"From: Sender <sender@elsewhere.example>\r\nTo: {to}\r\nSubject: {subject}\r\n"
                            f"Date: Fri, 04 Dec 2026 19:00:00 +0000\r\nMessage-ID: <{uuid.uuid4()}@elsewhere.example>\r\n"
                            f"\r\n{body}\r\n".encode())

    def login(self) -> imaplib.IMAP4_SSL:
        client = imaplib.IMAP4_SSL("127.0.0.1", self.imaps, ssl_context=self.context(), timeout=10)
        client.login(f"erin@{DOMAIN}", PASSWORD)
        return client


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("imap")
    certificates = issue(workdir, "mail.isp.example", name="mail")
    ports = {"mx": free_tcp_port(), "imap": free_tcp_port(), "imaps": free_tcp_port()}
    config = base_config(workdir, mail={
        "enabled": True, "domains": [DOMAIN], "hostname": "mail.isp.example", "maildir_root": str(workdir / "mail"),
        "queue_directory": str(workdir / "queue"), "listen_mx": [f"127.0.0.1:{ports['mx']}"],
        "listen_imap": [f"127.0.0.1:{ports['imap']}"], "listen_imaps": [f"127.0.0.1:{ports['imaps']}"],
        "certificate": str(certificates.certificate), "private_key": str(certificates.private_key),
        "authentication_checks": False, "resolver": f"127.0.0.1:{free_tcp_port()}",
        "auth_failure_delay_seconds": 0.1, "max_imap_sessions_per_mailbox": 4,
        "imap_commands_per_second": 500,  # bursts of 2 500: the flood below goes over it
    })
    with IspdProcess(workdir, config) as ispd:
        ispd.start()
        ispd.cli("subscriber", "add", "erin", "--password-stdin", input=f"{PASSWORD}\n")
        ispd.cli("mailbox", "add", "erin", f"erin@{DOMAIN}")
        lab = Lab(ispd, ports["mx"], ports["imap"], ports["imaps"], certificates.ca, workdir / "mail")
        for n in range(3):
            lab.deliver(f"message {n}", body=f"body of message {n}\r\n.a dot line")
        yield lab


def test_login_only_after_starttls_then_read_a_message_byte_for_byte(lab: Lab) -> None:
    client = imaplib.IMAP4("127.0.0.1", lab.imap, timeout=10)
    assert "LOGINDISABLED" in client.capabilities and "STARTTLS" in client.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        client.login(f"erin@{DOMAIN}", PASSWORD)
    client.starttls(ssl_context=lab.context())
    # AUTHENTICATE PLAIN acting as someone else (an authorization identity) fails, whatever the
    # password (RFC 4616 §2).
    with pytest.raises(imaplib.IMAP4.error, match="AUTHORIZATIONFAILED"):
        client.authenticate("PLAIN", lambda _: f"bob@{DOMAIN}\0erin@{DOMAIN}\0{PASSWORD}".encode())
    typ, _ = client.login(f"erin@{DOMAIN}", PASSWORD)
    assert typ == "OK"
    typ, data = client.select("INBOX")
    assert (typ, data) == ("OK", [b"3"])
    assert client.untagged_responses.get("UIDVALIDITY") and client.untagged_responses.get("UIDNEXT") == [b"4"]
    typ, data = client.fetch("1:*", "(UID FLAGS RFC822.SIZE)")
    assert typ == "OK" and len(data) == 3
    assert data[0].startswith(b"1 (UID 1 FLAGS (\\Recent) RFC822.SIZE ")
    on_disk = inbox(lab.root, f"erin@{DOMAIN}")[0].replace(b"\n", b"\r\n")
    typ, data = client.uid("FETCH", "1", "(BODY.PEEK[])")
    assert data[0][1] == on_disk, data  # the whole message, as stored, with CRLF
    typ, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert data[0][1] == b"Subject: message 0\r\n\r\n"
    typ, data = client.fetch("1", "(FLAGS)")
    assert b"\\Seen" not in data[0]  # PEEK leaves it unread
    typ, data = client.fetch("1", "(BODY[TEXT])")
    assert data[0][1] == b"body of message 0\r\n.a dot line\r\n"
    typ, data = client.fetch("1", "(FLAGS)")
    assert b"\\Seen" in data[0]
    client.logout()


def test_flags_search_expunge_and_status(lab: Lab) -> None:
    client = lab.login()
    client.select("INBOX")
    typ, data = client.store("2", "+FLAGS", "(\\Flagged)")
    assert typ == "OK" and b"\\Flagged" in data[0]
    assert client.search(None, "FLAGGED")[1] == [b"2"]
    assert client.search(None, "UNSEEN", "NOT", "FLAGGED")[1] == [b"3"]
    assert client.search(None, "SUBJECT", '"message 2"')[1] == [b"3"]
    assert client.search(None, "OR", "FROM", "nobody", "BODY", '"of message 1"')[1] == [b"2"]
    assert client.uid("SEARCH", "UID", "2:*")[1] == [b"2 3"]
    status = client.status("INBOX", "(MESSAGES UNSEEN UIDNEXT)")[1][0]
    assert b"MESSAGES 3" in status and b"UIDNEXT 4" in status
    client.store("2:3", "+FLAGS", "(\\Deleted)")
    assert client.uid("EXPUNGE", "3")[0] == "OK"  # only UID 3 of the two marked
    assert client.response("EXPUNGE") == ("EXPUNGE", [b"3"])
    assert len(inbox(lab.root, f"erin@{DOMAIN}")) == 2
    client.store("2", "-FLAGS", "(\\Deleted)")
    assert client.expunge() == ("OK", [None])  # nothing else was marked
    assert len(inbox(lab.root, f"erin@{DOMAIN}")) == 2
    assert client.select("INBOX")[1] == [b"2"]
    client.logout()


def test_folders_append_and_a_read_only_examine(lab: Lab) -> None:
    client = lab.login()
    typ, folders = client.list()
    names = {line.rsplit(b" ", 1)[-1].strip(b'"'): line for line in folders}
    assert set(names) >= {b"INBOX", b"Sent", b"Drafts", b"Trash", b"Junk", b"Archive"}
    assert b"\\Sent" in names[b"Sent"] and b"\\Junk" in names[b"Junk"]
    message = b"From: erin@isp.example\r\nSubject: sent copy\r\n\r\nkept in Sent\r\n"
    typ, data = client.append("Sent", "(\\Seen)", None, message)
    assert typ == "OK" and b"APPENDUID" in data[0]
    client.select("Sent", readonly=True)
    typ, data = client.fetch("1", "(FLAGS BODY[])")
    assert b"\\Seen" in data[0][0] and data[0][1] == message
    assert client.store("1", "+FLAGS", "(\\Deleted)")[0] == "NO"  # read-only
    assert client.append("NoSuchFolder", None, None, message)[0] == "NO"
    client.logout()


def test_two_sessions_see_each_others_changes_and_idle_wakes_on_delivery(lab: Lab) -> None:
    watcher, actor = lab.login(), lab.login()
    watcher.select("INBOX")
    actor.select("INBOX")
    actor.store("1", "+FLAGS", "(\\Answered)")
    watcher.noop()
    assert any(b"\\Answered" in r for r in watcher.untagged_responses.get("FETCH", []))
    watcher.logout()
    actor.logout()
    raw = lab.context().wrap_socket(socket.create_connection(("127.0.0.1", lab.imaps), timeout=10),
                                    server_hostname="mail.isp.example")
    with raw:
        def read_until(marker: bytes) -> bytes:
            data = b""
            while marker not in data:
                chunk = raw.recv(65536)
                assert chunk, data
                data += chunk
            return data

        read_until(b"\r\n")
        raw.sendall(f"a LOGIN erin@{DOMAIN} {PASSWORD}\r\nb SELECT INBOX\r\nc IDLE\r\n".encode())
        read_until(b"+ idling")
        started = time.monotonic()
        lab.deliver("while idling")
        update = read_until(b"EXISTS")
        assert time.monotonic() - started < 3, "IDLE was not woken by the delivery"
        assert b"* 3 EXISTS" in update
        raw.sendall(b"DONE\r\nd LOGOUT\r\n")
        assert b"c OK IDLE terminated" in read_until(b"d OK")


def test_bad_commands_get_bad_and_the_session_goes_on(lab: Lab) -> None:
    raw = lab.context().wrap_socket(socket.create_connection(("127.0.0.1", lab.imaps), timeout=10),
                                    server_hostname="mail.isp.example")
    with raw:
        raw.recv(4096)
        raw.sendall(b"x1 FROB\r\nx2 FETCH\r\n\xff\xfe\r\nx3 SELECT INBOX\r\nx4 LOGIN erin@isp.example wrong\r\n"
                    b"x5 NOOP\r\nx6 LOGOUT\r\n")
        data = b""
        while b"x6 OK" not in data:
            chunk = raw.recv(65536)
            assert chunk, data
            data += chunk
    for expected in (b"x1 BAD", b"x2 BAD", b"* BAD", b"x3 BAD", b"x4 NO [AUTHENTICATIONFAILED]", b"x5 OK"):
        assert expected in data, (expected, data)


def test_a_large_literal_before_login_is_refused_without_reading_it(lab: Lab) -> None:
    """Before login a literal holds a name or a password: one of 25 MB is refused at once, not
    invited ("+ go ahead") and held in memory for every unknown client."""
    raw = lab.context().wrap_socket(socket.create_connection(("127.0.0.1", lab.imaps), timeout=10),
                                    server_hostname="mail.isp.example")
    with raw:
        raw.recv(4096)
        raw.sendall(b"a1 LOGIN {25000000}\r\n")
        assert raw.recv(4096) == b"a1 BAD literal too long\r\n"
        raw.sendall(b"a2 LOGIN {5}\r\n")  # a name's worth is still taken
        assert raw.recv(4096).startswith(b"+ ")


def test_curl_lists_and_fetches_over_imaps_and_starttls(lab: Lab) -> None:
    base = ["curl", "-sS", "--max-time", "10", "--cacert", str(lab.ca), "--resolve", f"mail.isp.example:{lab.imaps}:127.0.0.1",
            "--resolve", f"mail.isp.example:{lab.imap}:127.0.0.1", "-u", f"erin@{DOMAIN}:{PASSWORD}"]
    listed = subprocess.run([*base, f"imaps://mail.isp.example:{lab.imaps}/"], capture_output=True, text=True,
                            timeout=30, check=False)
    assert listed.returncode == 0, listed.stderr
    assert '"." "INBOX"' in listed.stdout and '(\\HasNoChildren \\Sent) "." "Sent"' in listed.stdout
    fetched = subprocess.run([*base, "--ssl-reqd", f"imap://mail.isp.example:{lab.imap}/INBOX;UID=1"],
                             capture_output=True, timeout=30, check=False)
    assert fetched.returncode == 0, fetched.stderr
    assert b"Subject: message 0\r\n" in fetched.stdout and fetched.stdout.endswith(b".a dot line\r\n")


def test_folders_are_made_renamed_and_deleted_and_mail_copied_and_moved(lab: Lab) -> None:
    client = lab.login()
    assert client.create("Projects")[0] == "OK"
    assert client.create("Projects")[0] == "NO"  # exists
    assert client.create("Projects.2026")[0] == "OK"
    assert client.rename("Projects", "Work")[0] == "OK"
    names = {line.rsplit(b" ", 1)[-1].strip(b'"') for line in client.list()[1]}
    assert {b"Work", b"Work.2026"} <= names and b"Projects" not in names
    assert client.delete("Work.2026")[0] == "OK"
    assert client.delete("INBOX") == ("NO", [b"[CANNOT] the INBOX cannot be deleted"])
    lab.deliver("to be filed")
    client.select("INBOX")
    count = len(client.search(None, "ALL")[1][0].split())
    client.store(str(count), "+FLAGS", "(\\Flagged)")
    typ, data = client.copy(str(count), "Work")
    assert typ == "OK" and b"COPYUID" in data[0]
    typ, data = client.uid("MOVE", client.fetch(str(count), "(UID)")[1][0].split()[-1].rstrip(b")").decode(),
                           "Archive")
    assert typ == "OK"
    assert client.search(None, "ALL")[1][0].split() == [str(n).encode() for n in range(1, count)]
    for folder in ("Work", "Archive"):
        client.select(folder, readonly=True)
        typ, data = client.fetch("*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert b"\\Flagged" in data[0][0] and data[0][1] == b"Subject: to be filed\r\n\r\n", folder
    client.select("Work")
    assert client.copy("1", "Nowhere")[0] == "NO"
    assert client.delete("Work")[0] == "OK"
    client.logout()


def test_bodystructure_and_mime_parts_of_a_multipart_message(lab: Lab) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "sender@elsewhere.example", f"erin@{DOMAIN}", "with parts"
    message.set_content("the text part\n")
    message.add_alternative("<p>the html part</p>\n", subtype="html")
    message.add_attachment(bytes(range(256)), maintype="application", subtype="octet-stream", filename="blob.bin")
    with smtplib.SMTP("127.0.0.1", lab.mx, timeout=10) as smtp:
        smtp.send_message(message)
    client = lab.login()
    client.select("INBOX", readonly=True)
    _, data = client.fetch("*", "(BODYSTRUCTURE)")
    described = data[0]
    assert b'"MIXED" ("BOUNDARY"' in described and b'"ALTERNATIVE"' in described
    assert b'("attachment" ("FILENAME" "blob.bin"))' in described
    _, data = client.fetch("*", "(BODY.PEEK[1.1] BODY.PEEK[1.2.MIME] BODY.PEEK[2])")
    assert data[0][1] == b"the text part\r\n"
    assert data[1][1].startswith(b"Content-Type: text/html") and data[1][1].endswith(b"\r\n\r\n")
    assert base64.b64decode(data[2][1]) == bytes(range(256))
    client.logout()


def test_one_mailbox_cannot_hold_every_session_and_commands_are_counted(lab: Lab) -> None:
    sessions = [lab.login() for _ in range(4)]
    try:
        with pytest.raises(imaplib.IMAP4.error, match="LIMIT"):
            lab.login()
    finally:
        for session in sessions:
            session.logout()
    client = lab.login()  # room again once they are gone
    client.select("INBOX", readonly=True)
    assert client.uid("FETCH", "1:*", "(FLAGS)")[0] == "OK"  # counted as FETCH, whatever the mailbox holds
    with pytest.raises(imaplib.IMAP4.error):
        client.xatom("NONSENSE")  # BAD, counted as "other"
    client.logout()
    assert lab.ispd.metric_value("ispd_mail_imap_commands_total", {"command": "FETCH", "result": "ok"}) >= 1
    assert lab.ispd.metric_value("ispd_mail_imap_commands_total", {"command": "other", "result": "bad"}) >= 1
    assert lab.ispd.metric_value("ispd_mail_imap_sessions") is not None


def test_imap_connections_have_caps_of_their_own_and_the_mx_still_answers(lab: Lab) -> None:
    """From a bug hunt: IMAP shared SMTP's connection caps, so silent IMAP connections from one
    address (20 here) had the MX answer that address, and everyone at 500, 421. They are
    counted as IMAP's too: ispd_mail_connections_total and its refusals are SMTP's alone."""
    def count(name: str) -> float:
        return lab.ispd.metric_value(name) or 0.0
    smtp, smtp_refused = count("ispd_mail_connections_total"), count("ispd_mail_refused_connections_total")
    imap, imap_refused = count("ispd_mail_imap_connections_total"), count("ispd_mail_imap_refused_connections_total")
    held = []
    try:
        for _ in range(20):  # max_connections_per_client
            connection = socket.create_connection(("127.0.0.1", lab.imap), timeout=10)
            held.append(connection)
            assert connection.recv(4096).startswith(b"* OK")
        with socket.create_connection(("127.0.0.1", lab.imap), timeout=10) as one_more:
            assert one_more.recv(4096).startswith(b"* BYE too many connections")
        with smtplib.SMTP("127.0.0.1", lab.mx, timeout=10) as mx:
            assert mx.noop()[0] == 250
    finally:
        for connection in held:
            connection.close()
    assert count("ispd_mail_imap_connections_total") == imap + 20
    assert count("ispd_mail_imap_refused_connections_total") == imap_refused + 1
    assert count("ispd_mail_connections_total") == smtp + 1  # the NOOP's
    assert count("ispd_mail_refused_connections_total") == smtp_refused


def test_folder_names_in_modified_utf7_are_kept_and_broken_ones_refused(lab: Lab) -> None:
    client = lab.login()
    assert client.create("&AMk-t&AOk-")[0] == "OK"  # "Été", as clients write it
    assert b'"&AMk-t&AOk-"' in b"".join(client.list()[1])
    assert (lab.root / DOMAIN / "erin" / ".&AMk-t&AOk-" / "cur").is_dir()  # as Dovecot keeps it
    assert client.select("&AMk-t&AOk-")[0] == "OK"
    assert client.create("Caf&AOk")[0] == "NO"  # an & never closed
    assert client.create(b"\"Caf\xc3\xa9\"")[0] == "NO"  # UTF-8, which needs UTF8=ACCEPT
    client.logout()
    client = lab.login()
    client.delete("&AMk-t&AOk-")
    client.logout()


def test_subscriptions_are_kept_and_follow_a_rename(lab: Lab) -> None:
    client = lab.login()
    client.create("Lists")
    assert b'"Lists"' not in b"".join(client.lsub()[1])
    assert client.subscribe("Lists")[0] == "OK"
    assert b'"Lists"' in b"".join(client.lsub()[1]) and b'"INBOX"' in b"".join(client.lsub()[1])
    client.rename("Lists", "Newsletters")
    assert b'"Newsletters"' in b"".join(client.lsub()[1])
    assert client.unsubscribe("Newsletters")[0] == "OK"
    assert b'"Newsletters"' not in b"".join(client.lsub()[1])
    client.delete("Newsletters")
    client.logout()


def test_a_10_mb_message_round_trips_byte_for_byte(lab: Lab) -> None:
    line = bytes(range(32, 127)) + b"\r\n"
    body = line * (10 * 1024 * 1024 // len(line))
    with smtplib.SMTP("127.0.0.1", lab.mx, timeout=30) as smtp:
        smtp.sendmail("sender@elsewhere.example", [f"erin@{DOMAIN}"], b"Subject: big\r\n\r\n" + body)
    client = lab.login()
    client.select("INBOX", readonly=True)
    _, data = client.fetch("*", "(RFC822.SIZE BODY.PEEK[TEXT])")
    assert data[0][1] == body
    assert b"RFC822.SIZE %d" % len(inbox(lab.root, f"erin@{DOMAIN}")[-1].replace(b"\n", b"\r\n")) in data[0][0]
    client.logout()


def test_uids_and_uidvalidity_survive_a_restart(lab: Lab) -> None:
    client = lab.login()
    client.select("INBOX", readonly=True)
    validity = client.untagged_responses["UIDVALIDITY"][-1]
    _, before = client.fetch("1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    client.logout()
    assert lab.ispd.terminate() == 0
    lab.ispd.start()
    client = lab.login()
    client.select("INBOX", readonly=True)
    assert client.untagged_responses["UIDVALIDITY"][-1] == validity
    _, after = client.fetch("1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert after == before
    client.logout()


def test_quota_is_reported_from_the_plan_or_mailbox(lab: Lab) -> None:
    client = lab.login()
    typ, data = client.getquotaroot("INBOX")
    assert typ == "OK" and data[0] == [b'"INBOX" ""'] and data[1] == [b'"" ()']  # no limit yet
    lab.ispd.cli("mailbox", "quota", f"erin@{DOMAIN}", "--set", "100M")
    typ, data = client.getquota('""')
    assert typ == "OK" and data[0].startswith(b'"" (STORAGE ') and data[0].endswith(b" 102400)")
    reported_kib = int(data[0].split()[2])
    in_inbox = sum(len(m) for m in inbox(lab.root, f"erin@{DOMAIN}"))  # other folders count too
    assert reported_kib * 1024 >= in_inbox > 0
    client.logout()


def test_a_flood_of_pipelined_commands_is_slowed_down_and_answered_in_order(lab: Lab) -> None:
    throttled = lab.ispd.metric_value("ispd_mail_imap_throttled_commands_total") or 0
    raw = lab.context().wrap_socket(socket.create_connection(("127.0.0.1", lab.imaps), timeout=20),
                                    server_hostname="mail.isp.example")
    with raw:
        raw.recv(4096)
        raw.sendall(b"".join(b"n%d NOOP\r\n" % i for i in range(3000)) + b"z LOGOUT\r\n")
        data = b""
        while b"z OK" not in data:
            chunk = raw.recv(65536)
            assert chunk, data[-200:]
            data += chunk
    tags = [line.split()[0] for line in data.split(b"\r\n") if line.startswith(b"n")]
    assert tags == [b"n%d" % i for i in range(3000)]
    # Past the burst, commands waited for their turn (500 a second): none was refused. How many
    # waited depends on how fast this machine answers the burst (it refills meanwhile): some did.
    assert (lab.ispd.metric_value("ispd_mail_imap_throttled_commands_total") or 0) - throttled >= 1


def test_a_suspended_subscriber_reads_mail_unless_the_plan_says_no_and_a_closed_one_cannot(lab: Lab) -> None:
    lab.ispd.cli("subscriber", "suspend", "erin", "--reason", "nonpayment")
    try:
        lab.login().logout()  # the billing notices must be readable
        # A plan may choose otherwise; the password was right, so the client is told why.
        lab.ispd.cli("plan", "add", "strict", "--suspended-mail", "none")
        lab.ispd.cli("subscriber", "set-plan", "erin", "strict")
        with pytest.raises(imaplib.IMAP4.error, match=r"CONTACTADMIN\] this account is suspended"):
            lab.login()
        lab.ispd.cli("subscriber", "resume", "erin")
        lab.login().logout()
    finally:
        lab.ispd.cli("subscriber", "resume", "erin", check=False)  # if the test failed before
        lab.ispd.cli("subscriber", "set-plan", "erin", "--none")
    lab.ispd.cli("subscriber", "close", "erin", "--reason", "moved away")
    try:
        with pytest.raises(imaplib.IMAP4.error, match="CONTACTADMIN"):
            lab.login()
    finally:
        lab.ispd.cli("subscriber", "resume", "erin")


@pytest.mark.parametrize("change", ["close", "suspend on a plan without mail", "move a suspended one to a plan without mail"])
def test_a_session_logged_in_before_the_account_is_closed_is_ended(lab: Lab, change: str) -> None:
    """From a bug hunt: closing a subscriber (or suspending one whose plan has
    ``--suspended-mail none``) refused new IMAP logins, but a session logged in before went on
    reading and changing the mailbox for as long as its client stayed, while ``subscriber show``
    said IMAP was refused. It is now ended with a BYE, as the RADIUS sessions are disconnected."""
    client = lab.login()
    client.select("INBOX")
    if change == "close":
        lab.ispd.cli("subscriber", "close", "erin", "--reason", "moved away")
    elif change == "suspend on a plan without mail":
        lab.ispd.cli("plan", "add", "no-mail", "--suspended-mail", "none", check=False)
        lab.ispd.cli("subscriber", "set-plan", "erin", "no-mail")
        lab.ispd.cli("subscriber", "suspend", "erin", "--reason", "nonpayment")
    else:  # suspended on no plan (mail readable), then moved to one that refuses it
        lab.ispd.cli("subscriber", "suspend", "erin", "--reason", "nonpayment")
        client.noop()  # (still served)
        lab.ispd.cli("plan", "add", "no-mail", "--suspended-mail", "none", check=False)
        lab.ispd.cli("subscriber", "set-plan", "erin", "no-mail")
    try:
        def ended() -> bool:
            try:
                client.noop()
            except (imaplib.IMAP4.abort, OSError):
                return True
            return False

        wait_until(ended, "the session to be ended")
    finally:
        lab.ispd.cli("subscriber", "resume", "erin")
        lab.ispd.cli("subscriber", "set-plan", "erin", "--none", check=False)  # (the close kept none)
    lab.login().logout()  # resumed: back in


def test_a_message_another_session_just_flagged_is_still_fetched_searched_and_stored(lab: Lab) -> None:
    first, second = lab.login(), lab.login()
    first.select("INBOX")
    second.select("INBOX")  # its view: the file names before the change below
    first.store("1", "+FLAGS", "(\\Flagged)")  # renames the message's file
    _, data = second.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert isinstance(data[0], tuple) and data[0][1].startswith(b"Subject: ")
    subject = data[0][1].split(b": ", 1)[1].strip()
    assert second.search(None, "SUBJECT", b'"' + subject + b'"')[1][0].split()[:1] == [b"1"]
    first.store("1", "-FLAGS", "(\\Flagged)")
    typ, data = second.store("1", "+FLAGS", "(\\Draft)")  # a flag no other test sets
    assert typ == "OK" and b"\\Draft" in data[0]
    first.noop()
    assert any(b"\\Draft" in r for r in first.untagged_responses.get("FETCH", []))
    second.store("1", "-FLAGS", "(\\Draft)")
    first.logout()
    second.logout()


def raw(client: imaplib.IMAP4, command: str, arguments: str) -> tuple[str, list[bytes], dict[str, list[bytes]]]:
    """One command as written (imaplib quotes nothing here), with its untagged responses."""
    client.untagged_responses.clear()
    typ, data = client._simple_command(command, *([arguments] if arguments else []))  # type: ignore[attr-defined]
    if command in ("SELECT", "EXAMINE") and typ == "OK":
        client.state = "SELECTED"
    return typ, data, dict(client.untagged_responses)


def modseq_of(line: bytes) -> int:
    return int(line.split(b"MODSEQ (")[1].split(b")")[0])


def test_a_client_that_was_away_resynchronises_with_qresync(lab: Lab) -> None:
    away = lab.login()
    assert "CONDSTORE" in away.capabilities and "QRESYNC" in away.capabilities
    assert away.enable("QRESYNC")[0] == "OK" and away.untagged_responses["ENABLED"] == [b"QRESYNC"]
    away.create("Sync")
    for n in range(4):
        away.append("Sync", None, None, f"Subject: sync {n}\r\n\r\nbody {n}\r\n".encode())
    typ, _, untagged = raw(away, "SELECT", "Sync (CONDSTORE)")
    assert typ == "OK"
    validity, cached = int(untagged["UIDVALIDITY"][-1]), int(untagged["HIGHESTMODSEQ"][-1])
    away.logout()

    # Meanwhile on another device: one flagged, one deleted and expunged.
    other = lab.login()
    other.select("Sync")
    other.uid("STORE", "2", "+FLAGS", "(\\Flagged)")
    other.uid("STORE", "3", "+FLAGS", "(\\Deleted)")
    other.expunge()
    other.logout()

    back = lab.login()
    back.enable("QRESYNC")
    typ, _, untagged = raw(back, "SELECT", f"Sync (QRESYNC ({validity} {cached} 1:4))")
    assert typ == "OK"
    assert untagged["VANISHED"] == [b"(EARLIER) 3"]
    [changed] = untagged["FETCH"]
    assert b"UID 2 " in changed and b"\\Flagged" in changed and modseq_of(changed) > cached
    highest = int(untagged["HIGHESTMODSEQ"][-1])
    assert highest >= modseq_of(changed)
    # The same answer to a UID FETCH with CHANGEDSINCE and VANISHED.
    typ, _, untagged = raw(back, "UID", f"FETCH 1:* (FLAGS) (CHANGEDSINCE {cached} VANISHED)")
    assert untagged["VANISHED"] == [b"(EARLIER) 3"] and len(untagged["FETCH"]) == 1
    # A conditional STORE leaves the message changed since then alone and says so.
    typ, data, untagged = raw(back, "UID", f"STORE 1,2 (UNCHANGEDSINCE {cached}) +FLAGS.SILENT (\\Seen)")
    assert typ == "OK" and b"[MODIFIED 2]" in data[0]
    [stored] = untagged["FETCH"]
    assert b"UID 1 " in stored and modseq_of(stored) > highest
    typ, _, untagged = raw(back, "UID", f"SEARCH MODSEQ {cached + 1}")
    found, _, tail = untagged["SEARCH"][0].partition(b" (MODSEQ ")
    assert found.split() == [b"1", b"2"] and int(tail.rstrip(b")")) == modseq_of(stored)
    # Expunged here: told as VANISHED, with the new HIGHESTMODSEQ in the tagged reply.
    back.uid("STORE", "4", "+FLAGS.SILENT", "(\\Deleted)")
    typ, data, untagged = raw(back, "EXPUNGE", "")
    assert untagged["VANISHED"] == [b"4"] and b"HIGHESTMODSEQ" in data[0]
    after_expunge = int(data[0].split(b"HIGHESTMODSEQ ")[1].split(b"]")[0])
    _, data, _ = raw(back, "STATUS", "Sync (HIGHESTMODSEQ)")
    back.logout()
    # The modseqs are on disk: after a restart, nothing is told twice and nothing is missed.
    assert lab.ispd.terminate() == 0
    lab.ispd.start()
    again = lab.login()
    again.enable("QRESYNC")
    typ, _, untagged = raw(again, "SELECT", f"Sync (QRESYNC ({validity} {after_expunge} 1:4))")
    assert int(untagged["HIGHESTMODSEQ"][-1]) == after_expunge
    assert "VANISHED" not in untagged and "FETCH" not in untagged
    assert raw(again, "SELECT", "Sync (QRESYNC (1 1 1:4))")[2].get("VANISHED") is None  # another UIDVALIDITY
    again.delete("Sync")
    again.logout()


def test_qresync_needs_enable_and_select_says_a_mailbox_closed(lab: Lab) -> None:
    client = lab.login()
    with pytest.raises(imaplib.IMAP4.error, match="QRESYNC is not enabled"):
        raw(client, "SELECT", "INBOX (QRESYNC (1 1))")
    client.enable("QRESYNC")
    client.select("INBOX")
    typ, _ = client.select("INBOX", readonly=True)
    assert typ == "OK" and client.untagged_responses.get("CLOSED") is not None
    client.logout()


# === neomutt, a real terminal mail client, driven in tmux ===========================================================


class Terminal:
    """A private tmux server (its own socket) running one program; keys in, screen text out."""

    def __init__(self, directory: Path, command: str) -> None:
        self.socket = directory / "tmux.sock"
        self._tmux("new-session", "-d", "-x", "160", "-y", "40", command)

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", str(self.socket), *args], check=True, capture_output=True,
                              text=True, timeout=10).stdout

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", *keys)

    def type(self, text: str) -> None:
        self._tmux("send-keys", "-l", text)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p")

    def wait_for(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            shown = self.screen()
            if text in shown:
                return shown
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never showed; the screen:\n{shown}")
            time.sleep(0.1)

    def running(self) -> bool:
        """Whether the program still runs (its tmux server ends with it)."""
        return subprocess.run(["tmux", "-S", str(self.socket), "has-session"], capture_output=True,
                              timeout=10).returncode == 0

    def close(self) -> None:
        subprocess.run(["tmux", "-S", str(self.socket), "kill-server"], capture_output=True, timeout=10)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.1)


def files_in(folder: Path) -> dict[str, bytes]:
    """The messages in a folder's cur/ by file name (one renamed while listed is left out)."""
    found = {}
    for path in (folder / "cur").iterdir() if (folder / "cur").is_dir() else ():
        try:
            found[path.name] = path.read_bytes()
        except FileNotFoundError:
            continue
    return found


def test_neomutt_reads_replies_flags_searches_moves_and_deletes(lab: Lab, tmp_path: Path) -> None:
    address = f"nora@{DOMAIN}"
    lab.ispd.cli("subscriber", "add", "nora", "--password-stdin", input=f"{PASSWORD}\n")
    lab.ispd.cli("mailbox", "add", "nora", address)
    for n, body in ((1, "please reply"), (2, "the secret-word is here"), (3, "file me"), (4, "throw me away")):
        lab.deliver(f"neomutt-{n}", body=body, to=address)
    mailbox = lab.root / DOMAIN / "nora"
    sent = tmp_path / "sent"
    sent.mkdir()
    sendmail, editor = tmp_path / "sendmail", tmp_path / "editor"
    # What neomutt hands to "sendmail" is kept; the editor writes the reply's text above the quote.
    sendmail.write_text(f'#!/bin/sh\ncat > "{sent}/$$.eml"\n')
    editor.write_text('#!/bin/sh\n{ printf "Thanks, got it.\\n\\n"; cat "$1"; } > "$1.new" && mv "$1.new" "$1"\n')
    for script in (sendmail, editor):
        script.chmod(0o755)
    muttrc = tmp_path / "muttrc"
    muttrc.write_text("\n".join([
        f'set folder="imaps://nora%40{DOMAIN}@127.0.0.1:{lab.imaps}/"', 'set spoolfile="+INBOX"',
        f'set imap_pass="{PASSWORD}"', f'set ssl_ca_certificates_file="{lab.ca}"',
        f'set certificate_file="{tmp_path}/certificates"', "set ssl_force_tls=yes",
        'set record="+Sent"', 'set postponed="+Drafts"', f'set sendmail="{sendmail}"', f'set editor="{editor}"',
        f'set from="Nora <{address}>"', "set use_from=yes", "set include=yes", "set fast_reply=yes",
        "set edit_headers=no", "set delete=yes", "set move=no", "set confirmappend=no", "set wait_key=no",
        "set sort=subject", "set resolve=no", "set imap_idle=yes", "set timeout=1", "set mail_check=1", 'set header_cache=""',
        'set message_cachedir=""', "set abort_noattach=no", "set quit=yes", "set beep=no", "",
    ]))
    terminal = Terminal(tmp_path, f"env HOME={tmp_path} neomutt -n -F {muttrc}")
    try:
        terminal.wait_for("neomutt-4")
        # Read the first message, then reply to it (the reply is sent and filed in Sent).
        terminal.keys("=", "Enter")
        terminal.wait_for("please reply")
        terminal.keys("q")
        terminal.wait_for("neomutt-4")
        terminal.keys("r")
        terminal.wait_for("Send")  # the compose menu: "y:Send"
        terminal.keys("y")
        wait_until(lambda: any(sent.iterdir()), "the reply handed to sendmail")
        wait_until(lambda: len(files_in(mailbox / ".Sent")) == 1, "the reply filed in Sent over IMAP")
        # Flag the second, save the third to Archive, delete the fourth, and purge.
        terminal.keys("=", "j", "F", "j", "s")
        terminal.wait_for("for list")  # "Save to mailbox ('?' for list):"
        terminal.keys("C-u")
        terminal.type("=Archive")
        terminal.keys("Enter")
        wait_until(lambda: len(files_in(mailbox / ".Archive")) == 1, "the third message saved to Archive")
        terminal.keys("=", "j", "j", "d", "$")  # j skips the third, deleted by the save
        wait_until(lambda: len(files_in(mailbox)) == 2, "the saved and the deleted message purged")
        terminal.wait_for("Msgs:2 ")  # neomutt drops keys typed ahead while it syncs
        # A search the server answers (=b: body, by IMAP SEARCH): only the second matches.
        terminal.keys("l")
        time.sleep(0.5)  # the prompt ("Limit to messages matching:") does not show in tmux's copy
        terminal.type("=b secret-word")
        terminal.keys("Enter")
        wait_until(lambda: "neomutt-2" in terminal.screen() and "neomutt-1" not in terminal.screen(),
                   "the limited index")
        terminal.keys("l")
        terminal.type("all")
        terminal.keys("Enter")
        # New mail shows up while neomutt idles (IDLE, woken by the delivery).
        lab.deliver("neomutt-5", body="fresh", to=address)
        terminal.wait_for("neomutt-5", timeout=10)
        terminal.keys("q")
        wait_until(lambda: not terminal.running(), "neomutt to quit", timeout=10)
    finally:
        terminal.close()
    inbox_files = files_in(mailbox)
    flags = {data.split(b"Subject: ")[1].split(b"\n")[0].decode(): name.rpartition(":2,")[2]
             for name, data in inbox_files.items()}
    assert set(flags) == {"neomutt-1", "neomutt-2", "neomutt-5"}, flags
    assert "R" in flags["neomutt-1"] and "S" in flags["neomutt-1"]  # read and answered
    assert "F" in flags["neomutt-2"]
    [archived] = files_in(mailbox / ".Archive").values()
    assert b"Subject: neomutt-3" in archived
    [filed] = files_in(mailbox / ".Sent").values()
    assert b"Subject: Re: neomutt-1" in filed and b"Thanks, got it." in filed
    [handed] = [p.read_bytes() for p in sent.iterdir()]
    assert b"In-Reply-To:" in handed and b"> please reply" in handed


def test_keywords_are_kept_searched_copied_and_told_to_other_sessions(lab: Lab) -> None:
    client, other = lab.login(), lab.login()
    client.create("Tagged")
    client.append("Tagged", "(\\Seen $Label1)", None, b"Subject: tagged\r\n\r\nbody\r\n")
    client.append("Tagged", None, None, b"Subject: plain\r\n\r\nbody\r\n")
    client.select("Tagged")
    assert b"$Label1" in client.untagged_responses["FLAGS"][-1]
    assert b"\\*" in client.untagged_responses["PERMANENTFLAGS"][-1]
    other.select("Tagged")
    typ, data = client.store("2", "+FLAGS", "($Forwarded)")
    assert typ == "OK" and b"$Forwarded" in data[-1]
    assert b"$Forwarded" in client.untagged_responses["FLAGS"][-1]  # the folder's FLAGS, told again
    assert client.search(None, "KEYWORD", "$forwarded")[1] == [b"2"]  # keywords match in any case
    assert client.search(None, "UNKEYWORD", "$Label1")[1] == [b"2"]
    assert client.search(None, "KEYWORD", "$NeverUsed")[1] == [b""]
    other.noop()
    assert b"$Forwarded" in other.untagged_responses["FLAGS"][-1]
    assert any(b"$Forwarded" in r for r in other.untagged_responses["FETCH"])
    # On disk as Dovecot keeps them: a letter in the name, its keyword in dovecot-keywords.
    folder = lab.root / DOMAIN / "erin" / ".Tagged"
    assert (folder / "dovecot-keywords").read_text() == "0 $Label1\n1 $Forwarded\n"
    assert sorted(name.rpartition(":2,")[2] for name in files_in(folder)) == ["Sa", "b"]
    # A copy keeps its keywords, under the target folder's own letters.
    client.create("Copies")
    client.append("Copies", "(Work)", None, b"Subject: first there\r\n\r\nbody\r\n")
    client.copy("1:2", "Copies")
    client.select("Copies", readonly=True)
    _, data = client.fetch("1:*", "(FLAGS)")
    assert [b"Work" in d for d in data] == [True, False, False]
    assert b"$Label1" in data[1] and b"\\Seen" in data[1] and b"$Forwarded" in data[2]
    other.logout()
    client.delete("Copies")
    client.delete("Tagged")
    client.logout()


def test_expunge_removes_a_message_another_session_renamed_meanwhile(lab: Lab) -> None:
    first, second = lab.login(), lab.login()
    first.create("Renamed")
    first.append("Renamed", None, None, b"Subject: going\r\n\r\nbody\r\n")
    first.select("Renamed")
    second.select("Renamed")
    first.store("1", "+FLAGS", "(\\Deleted)")
    second.store("1", "+FLAGS", "(\\Flagged)")  # renames the file under the first session
    first.expunge()
    first.noop()
    assert first.search(None, "ALL")[1] == [b""]  # gone, and not back at the next look
    assert not list((lab.root / DOMAIN / "erin" / ".Renamed" / "cur").iterdir())
    second.logout()
    first.delete("Renamed")
    first.logout()


def test_files_other_programs_delivered_are_served_with_their_true_size(lab: Lab) -> None:
    """procmail, maildrop or a migration leave files without ,W= (and some with CRLF line ends):
    RFC822.SIZE is the size of what BODY[] sends, and every line ends in one CRLF."""
    client = lab.login()
    client.create("Imported")
    folder = lab.root / DOMAIN / "erin" / ".Imported"
    lf = b"From: a@elsewhere.example\nSubject: lf\n\nline one\nline two\n"
    crlf = b"From: b@elsewhere.example\r\nSubject: crlf\r\n\r\nline one\r\nline two\r\n"
    mixed = b"From: c@elsewhere.example\r\nSubject: mixed\n\nline one\r\nline two\n"
    for i, data in enumerate((lf, crlf, mixed)):
        (folder / "new" / f"17000000{i}.M1P1.procmail,S={len(data)}").write_bytes(data)
    (folder / "cur" / "1700000009.M1P1.legacy,U=99:2,S").write_bytes(lf)  # a UID but no sizes
    client.select("Imported", readonly=True)
    _, data = client.fetch("1:*", "(RFC822.SIZE BODY.PEEK[])")
    fetched = [item for item in data if isinstance(item, tuple)]
    assert len(fetched) == 4
    for head, body in fetched:
        size = int(head.split(b"RFC822.SIZE ")[1].split()[0])
        assert size == len(body) and b"\r\r" not in body and body.count(b"\n") == body.count(b"\r\n"), head
    client.close()
    # Their sizes went into their names when they got their UIDs: never read again for them.
    assert all(",W=" in name for name in (p.name for p in (folder / "cur").iterdir()) if "procmail" in name)
    client.delete("Imported")
    client.logout()


def test_append_keeps_its_date_and_a_folder_made_again_gets_a_new_uidvalidity(lab: Lab) -> None:
    client = lab.login()
    client.create("Dated")
    assert client.append("Dated", None, '"15-Mar-2020 08:09:10 -0700"', b"Subject: old\r\n\r\nold\r\n")[0] == "OK"
    client.select("Dated")
    assert b'INTERNALDATE "15-Mar-2020 15:09:10 +0000"' in client.fetch("1", "(INTERNALDATE)")[1][0]
    assert client.search(None, "ON", "15-Mar-2020")[1] == [b"1"]
    typ, data = client.search("X-NO-SUCH-CHARSET", "ALL")
    assert typ == "NO" and data[0].startswith(b"[BADCHARSET"), data  # RFC 3501 §6.4.4
    assert client.search("ISO-8859-1", "SUBJECT", "old")[1] == [b"1"]  # a charset Python knows
    client.close()
    validities = []
    for _ in range(2):  # within one second: the time alone would give the same UIDVALIDITY
        status = client.status("Dated", "(UIDVALIDITY UIDNEXT)")[1][0]
        validities.append(int(status.split(b"UIDVALIDITY ")[1].split()[0].rstrip(b")")))
        assert client.delete("Dated")[0] == "OK" and client.create("Dated")[0] == "OK"
    status = client.status("Dated", "(UIDVALIDITY UIDNEXT)")[1][0]
    validities.append(int(status.split(b"UIDVALIDITY ")[1].split()[0].rstrip(b")")))
    assert len(set(validities)) == 3, validities
    client.delete("Dated")
    client.logout()


def test_levels_without_a_folder_are_listed_noselect_and_a_parent_deletes_alone(lab: Lab) -> None:
    """RFC 3501 §6.3.8, §6.3.9, §6.3.4: a client walking the tree with "%" reaches A.B.C through
    A and A.B; deleting a folder with subfolders keeps them, its name left \\Noselect."""
    client = lab.login()
    assert client.create("Tree.Branch.Leaf")[0] == "OK"
    assert client.subscribe("Tree.Branch.Leaf")[0] == "OK"

    def listing(command: str, pattern: str) -> dict[bytes, bytes]:
        _, lines = getattr(client, command)('""', pattern)
        return {line.rsplit(b" ", 1)[-1].strip(b'"'): line.split(b")")[0] for line in lines if line}

    assert b"\\Noselect" in listing("list", "%")[b"Tree"] and b"\\HasChildren" in listing("list", "%")[b"Tree"]
    assert b"\\Noselect" in listing("list", "Tree.%")[b"Tree.Branch"]
    assert b"\\Noselect" not in listing("list", "Tree.Branch.%")[b"Tree.Branch.Leaf"]
    assert b"\\Noselect" in listing("lsub", "Tree.%")[b"Tree.Branch"]
    assert client.select("Tree")[0] == "NO"
    # A folder below the INBOX (what clients make for "New Subfolder" on it): one INBOX still.
    assert client.create("INBOX.Sub")[0] == "OK"
    inbox_lines = [line for line in client.list('""', "*")[1] if line.rsplit(b" ", 1)[-1].strip(b'"') == b"INBOX"]
    assert len(inbox_lines) == 1 and b"\\Noselect" not in inbox_lines[0], inbox_lines
    assert client.delete("INBOX.Sub")[0] == "OK"
    assert client.create("Projects")[0] == "OK" and client.create("Projects.2026")[0] == "OK"
    assert client.delete("Projects")[0] == "OK"
    assert b"\\Noselect" in listing("list", "Projects")[b"Projects"]
    assert client.select("Projects.2026")[0] == "OK"
    client.close()
    for folder in ("Projects.2026", "Tree.Branch.Leaf"):
        assert client.delete(folder)[0] == "OK"
    assert b"Tree" not in listing("list", "*") and b"Projects" not in listing("list", "*")
    client.logout()


def test_a_sequence_number_past_the_last_message_is_bad_and_a_uid_past_it_is_not(lab: Lab) -> None:
    """RFC 9051 §2.3.1.2: a message sequence number past EXISTS is the client's protocol error,
    BAD for the whole command; a UID past the last may name a message expunged meanwhile."""
    client = lab.login()
    exists = int(client.select("INBOX")[1][0])
    for command, args in (("FETCH", (f"{exists + 1}", "(FLAGS)")), ("FETCH", (f"1,{exists + 5}", "(FLAGS)")),
                          ("STORE", (f"{exists + 1}:*", "+FLAGS", "(\\Flagged)")), ("COPY", (f"{exists + 1}", "Trash"))):
        with pytest.raises(imaplib.IMAP4.error, match="no message"):
            getattr(client, command.lower())(*args)
    assert client.search(None, "FLAGGED")[0] == "OK"  # the session goes on
    typ, data = client.uid("FETCH", "9999", "(FLAGS)")
    assert typ == "OK" and data == [None]
    typ, data = client.fetch(f"{exists}:*", "(UID)")
    assert typ == "OK" and len(data) == 1
    client.create("Empty")
    client.select("Empty")
    with pytest.raises(imaplib.IMAP4.error, match="no message"):
        client.fetch("1:*", "(FLAGS)")
    assert client.uid("FETCH", "1:*", "(FLAGS)") == ("OK", [None])
    client.logout()


def test_a_certificate_of_another_key_type_is_served_after_a_reload(tmp_path: Path) -> None:
    """An ECDSA certificate replaced on disk by an RSA one (a renewal with another key type) and
    SIGHUP: the new one went into the live context beside the old, and OpenSSL, which keeps one
    per key type, went on serving the old one on 465, 993 and STARTTLS to every client that
    takes ECDSA (as Postfix and Dovecot do not after their reload)."""
    import trustme

    old_ca, new_ca = trustme.CA(), trustme.CA(key_type=trustme.KeyType.RSA)
    certificate, key = tmp_path / "mail.pem", tmp_path / "mail.key"
    issued = old_ca.issue_cert("mail.isp.example", "127.0.0.1")
    for path in (certificate, key):  # (each file holds both)
        issued.private_key_and_cert_chain_pem.write_to_path(str(path))
    ports = {"submissions": free_tcp_port(), "imaps": free_tcp_port(), "mx": free_tcp_port()}
    config = base_config(tmp_path, mail={
        "enabled": True, "domains": [DOMAIN], "hostname": "mail.isp.example", "maildir_root": str(tmp_path / "mail"),
        "queue_directory": str(tmp_path / "queue"), "listen_mx": [f"127.0.0.1:{ports['mx']}"],
        "listen_submissions": [f"127.0.0.1:{ports['submissions']}"], "listen_imaps": [f"127.0.0.1:{ports['imaps']}"],
        "certificate": str(certificate), "private_key": str(key), "resolver": f"127.0.0.1:{free_tcp_port()}"})
    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()
        renewed = new_ca.issue_cert("mail.isp.example", "127.0.0.1", key_type=trustme.KeyType.RSA)
        for path in (certificate, key):
            renewed.private_key_and_cert_chain_pem.write_to_path(str(path))
        ispd.reload()
        assert not ispd.log_events("config.reload.service_refused")
        trusting_the_new = ssl.create_default_context()
        new_ca.configure_trust(trusting_the_new)
        for port in (ports["submissions"], ports["imaps"]):  # (a verification error when the old one is served)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    trusting_the_new.wrap_socket(raw, server_hostname="mail.isp.example") as tls:
                assert tls.version()
        with smtplib.SMTP("127.0.0.1", ports["mx"], timeout=10) as client:
            client.starttls(context=trusting_the_new)
            assert client.ehlo()[0] == 250


def test_failed_starttls_handshakes_are_logged_a_few_a_minute_not_one_each(lab: Lab) -> None:
    """From a review: every connection that said STARTTLS and then sent no TLS wrote a line
    (mail.imap.tls_failed, mail.session.tls_failed): 500 connections, 500 lines in 2 s, where a
    failed handshake on 993 or 465 writes none. Now a few a minute, the next telling how many
    were left out."""
    from ispd.mail.service import TLS_FAILURE_LOG_LINES

    def fail_starttls(port: int, greeting: bytes, starttls: bytes) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.recv(1024)
            sock.sendall(greeting + starttls)
            reply = b""
            while b"OK begin TLS" not in reply and b"Ready to start TLS" not in reply:
                reply += sock.recv(1024)
            sock.sendall(b"\x16\x03\x01\x00\x05not a TLS hello")
            sock.recv(1024)

    events = ("mail.imap.tls_failed", "mail.session.tls_failed")
    before = {event: len(lab.ispd.log_events(event)) for event in events}
    for _ in range(TLS_FAILURE_LOG_LINES * 2):
        fail_starttls(lab.imap, b"", b"a STARTTLS\r\n")
        fail_starttls(lab.mx, b"EHLO client.example\r\n", b"STARTTLS\r\n")
    time.sleep(0.5)
    for event in events:
        added = len(lab.ispd.log_events(event)) - before[event]
        assert 1 <= added <= TLS_FAILURE_LOG_LINES, (event, added)
