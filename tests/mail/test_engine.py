from __future__ import annotations

import pytest

from ispd.listeners import AuthThrottle
from ispd.mail.engine import (
    CommandPace,
    ConnectionRate,
    MXPolicy,
    SendingLimit,
    SMTPRefusal,
    protocol_name,
    trace_headers,
    with_enhanced_code,
)
from ispd.store.models import Mailbox, MailRecipient, SubscriberStatus

POLICY = MXPolicy(["isp.example", "mail.isp.example"], postmaster="noc@isp.example", max_recipients=3)


def recipient(quota: int | None = None, status: SubscriberStatus = SubscriberStatus.ACTIVE) -> MailRecipient:
    return MailRecipient(Mailbox(1, 1, "alice@isp.example"), "alice", status, quota)


def refusal(call: object, *args: object) -> SMTPRefusal:
    with pytest.raises(SMTPRefusal) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


@pytest.mark.parametrize(("address", "candidates"), [
    ("alice@isp.example", ("alice@isp.example",)),
    ("Alice@ISP.Example", ("alice@isp.example",)),
    ("alice@isp.example.", ("alice@isp.example",)),  # a trailing dot names the same domain
    ("alice+lists@isp.example", ("alice+lists@isp.example", "alice@isp.example")),
    ("+x@isp.example", ("+x@isp.example",)),
    ("postmaster@mail.isp.example", ("postmaster@mail.isp.example", "noc@isp.example")),
    ("Postmaster", ("postmaster@isp.example", "noc@isp.example")),  # RFC 5321 §4.5.1: without a domain, too
    # A subaddress of postmaster@ reaches the postmaster mailbox as alice+tag@ reaches alice's;
    # it was refused (550 5.1.1) while postmaster@ itself was taken.
    ("postmaster+test@isp.example", ("postmaster+test@isp.example", "postmaster@isp.example", "noc@isp.example")),
])
def test_local_recipients_are_looked_up_as_written_then_as_their_mailbox(address: str,
                                                                         candidates: tuple[str, ...]) -> None:
    assert POLICY.route(address, 0).candidates == candidates


def test_bare_postmaster_is_the_first_domains_without_a_configured_postmaster() -> None:
    """RFC 5321 §4.5.1 requires <postmaster> to be accepted; without ``postmaster`` in the config
    it was refused as an invalid address (553) even with a postmaster@ mailbox there to take it."""
    policy = MXPolicy(["isp.example", "mail.isp.example"])
    assert policy.route("postmaster", 0).candidates == ("postmaster@isp.example",)
    assert refusal(MXPolicy([]).route, "postmaster", 0).reason == "bad_address"


@pytest.mark.parametrize(("address", "code", "reason"), [
    ("alice@gmail.example", "554 5.7.1", "relay_denied"),
    ("alice@sub.isp.example", "554 5.7.1", "relay_denied"),  # a subdomain is another domain
    ("alice@isp.example@gmail.example", "554 5.7.1", "relay_denied"),  # source routes are not ours
    ("alice", "553 5.1.3", "bad_address"),
])
def test_recipients_outside_the_domains_are_never_relayed(address: str, code: str, reason: str) -> None:
    caught = refusal(POLICY.route, address, 0)
    assert str(caught.reply).startswith(code) and caught.reason == reason


def test_the_recipient_limit_is_a_temporary_refusal() -> None:
    POLICY.route("alice@isp.example", 2)
    caught = refusal(POLICY.route, "alice@isp.example", 3)
    assert str(caught.reply).startswith("452 4.5.3")


def test_a_refusal_never_echoes_what_could_break_the_reply_line() -> None:
    caught = refusal(POLICY.route, "a\r\nb>@gmail.example", 0)
    assert "\r" not in str(caught.reply) and "\n" not in str(caught.reply)


def test_quota_decides_between_retry_later_and_never() -> None:
    POLICY.admit("alice@isp.example", recipient(), None, 10**9)  # no quota: anything fits
    POLICY.admit("alice@isp.example", recipient(1000), 400, 600)  # exactly full is allowed
    assert str(refusal(POLICY.admit, "a@isp.example", recipient(1000), 401, 600).reply).startswith("452 4.2.2")
    assert str(refusal(POLICY.admit, "a@isp.example", recipient(1000), 1000, 0).reply).startswith("452 4.2.2")
    assert str(refusal(POLICY.admit, "a@isp.example", recipient(1000), 0, 1001).reply).startswith("552 5.2.2")


def test_a_closed_subscriber_gets_no_mail_and_a_suspended_one_does() -> None:
    POLICY.admit("alice@isp.example", recipient(status=SubscriberStatus.SUSPENDED), None, 10)
    caught = refusal(POLICY.admit, "alice@isp.example", recipient(status=SubscriberStatus.CLOSED), None, 10)
    assert str(caught.reply).startswith("550 5.2.1") and caught.reason == "mailbox_disabled"


@pytest.mark.parametrize(("line", "expected"), [
    ("250 OK", "250 2.0.0 OK"),
    ("503 Error: need MAIL command", "503 5.5.1 Error: need MAIL command"),
    ("552 Error: Too much mail data", "552 5.3.4 Error: Too much mail data"),
    ("221 Bye", "221 2.0.0 Bye"),
    ("250 2.1.5 Ok", "250 2.1.5 Ok"),  # already has one
    ("220 mx.isp.example ESMTP ispd", "220 mx.isp.example ESMTP ispd"),  # the greeting never
    ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),  # not 2xx/4xx/5xx
    ("334 VXNlcm5hbWU6", "334 VXNlcm5hbWU6"),
    ("599 odd", "599 5.0.0 odd"),
    ("554 Command refused due to lack of security", "554 5.7.0 Command refused due to lack of security"),
])
def test_every_final_reply_gets_an_enhanced_status_code(line: str, expected: str) -> None:
    assert with_enhanced_code(line) == expected


def test_220_is_left_alone_even_after_starttls() -> None:
    assert with_enhanced_code("220 Ready to start TLS") == "220 Ready to start TLS"


def test_trace_headers_name_one_recipient_and_cannot_be_forged_by_the_client() -> None:
    headers = trace_headers(return_path="bounce@sender.example", helo="evil\r\nX-Injected: yes", client_ip="192.0.2.1",
                            server_name="mx.isp.example", protocol="ESMTPS", queue_id="ABC123",
                            recipient="alice@isp.example", now=1796411197.0).decode()
    lines = headers.split("\r\n")
    assert lines[0] == "Return-Path: <bounce@sender.example>"
    assert lines[1] == "Received: from evil__X-Injected:_yes ([192.0.2.1])"
    assert lines[2] == "\tby mx.isp.example (ispd) with ESMTPS id ABC123"
    assert lines[3] == "\tfor <alice@isp.example>; Fri, 04 Dec 2026 19:06:37 +0000"
    assert lines[4] == ""
    several = trace_headers(return_path="", helo="", client_ip="::1", server_name="mx", protocol="SMTP",
                            queue_id="Q", recipient=None, now=0.0).decode()
    assert several.startswith("Return-Path: <>\r\nReceived: from unknown ([IPv6:::1])\r\n\tby mx (ispd) with SMTP id Q;\r\n")
    assert "for" not in several


def test_a_utf8_return_path_is_kept_as_it_came() -> None:
    headers = trace_headers(return_path="jöran@exämple.example", helo="h", client_ip="127.0.0.1", server_name="mx",
                            protocol="UTF8SMTP", queue_id="Q", recipient=None, now=0.0)
    assert headers.startswith("Return-Path: <jöran@exämple.example>\r\n".encode())


@pytest.mark.parametrize(("flags", "name"), [
    ({"extended": False, "tls": False, "authenticated": False, "utf8": False}, "SMTP"),
    ({"extended": True, "tls": False, "authenticated": False, "utf8": False}, "ESMTP"),
    ({"extended": True, "tls": True, "authenticated": False, "utf8": False}, "ESMTPS"),
    ({"extended": True, "tls": True, "authenticated": True, "utf8": False}, "ESMTPSA"),
    ({"extended": True, "tls": True, "authenticated": False, "utf8": True}, "UTF8SMTPS"),
])
def test_the_received_protocol_says_how_the_message_came(flags: dict[str, bool], name: str) -> None:
    assert protocol_name(**flags) == name


def test_a_submitted_sender_must_be_one_of_the_subscribers_mailboxes() -> None:
    owned = {"alice@isp.example"}
    POLICY.check_sender("alice@isp.example", owned, "alice")
    POLICY.check_sender("Alice+Lists@ISP.example", owned, "alice")
    for address in ("bob@isp.example", "alice@isp.example.evil", "", "<>"):
        caught = refusal(POLICY.check_sender, address, owned, "alice")
        assert str(caught.reply).startswith("553 5.7.1") and caught.reason == "sender_not_owned"


def test_the_sending_limit_is_a_sliding_hour() -> None:
    limit = SendingLimit(per_hour=2)
    limit.check(1, 0.0)
    limit.record(1, 0.0)
    limit.record(1, 100.0)
    caught = refusal(limit.check, 1, 200.0)
    assert str(caught.reply).startswith("450 4.7.1")
    limit.check(2, 200.0)  # another subscriber
    limit.check(1, 3600.5)  # the first has left the hour


def test_a_client_opening_connections_too_fast_is_refused_for_the_rest_of_the_minute() -> None:
    rate = ConnectionRate(per_minute=3, max_clients=2)
    assert [rate.admit("192.0.2.1", t) for t in (0.0, 1.0, 2.0, 3.0)] == [True, True, True, False]
    assert rate.admit("192.0.2.2", 3.0)  # another client
    assert rate.admit("192.0.2.1", 60.5)  # the first has slowed down
    assert rate.admit("192.0.2.3", 200.0)  # the table is full of idle clients: they are forgotten
    assert ConnectionRate(per_minute=0).admit("192.0.2.1", 0.0)  # 0: no limit


def test_every_from_header_address_must_be_the_subscribers_own() -> None:
    owned = {"alice@isp.example"}
    POLICY.check_author([], owned, "alice")  # no From: nothing to impersonate
    POLICY.check_author(["Alice+news@ISP.example"], owned, "alice")
    caught = refusal(POLICY.check_author, ["alice@isp.example", "billing@isp.example"], owned, "alice")
    assert str(caught.reply).startswith("550 5.7.1 <billing@isp.example>: From address not owned")
    garbled = refusal(POLICY.check_author, [], owned, "alice", "undisclosed:;")  # a From with no address in it
    assert str(garbled.reply).startswith("550 5.7.1 From header 'undisclosed:;' has no address")


def test_password_guessing_is_throttled_by_address_and_by_login() -> None:
    throttle = AuthThrottle(per_address=3, window=60, base_delay=1.0, max_delay=8.0)
    assert not throttle.blocked("192.0.2.1", 0.0)
    for t in range(3):
        throttle.failed("192.0.2.1", "alice@isp.example", float(t))
    assert throttle.blocked("192.0.2.1", 3.0) and not throttle.blocked("192.0.2.2", 3.0)
    assert not throttle.blocked("192.0.2.1", 61.0)  # the window passed
    # The login: a delay that doubles from the fourth failure, whoever tries.
    assert throttle.delay("ALICE@isp.example", 3.0) == 1.0
    for t in range(4):
        throttle.failed(f"198.51.100.{t}", "alice@isp.example", 4.0)
    assert throttle.delay("alice@isp.example", 5.0) == 8.0  # 7 failures: 1 * 2**4, capped at 8
    throttle.succeeded("Alice@isp.example")
    assert throttle.delay("alice@isp.example", 5.0) == 1.0


def test_an_ipv6_client_is_throttled_and_rate_limited_by_its_64() -> None:
    """One host may take any address of its /64 for each new connection or guess."""
    throttle = AuthThrottle(per_address=3, window=60, base_delay=1.0)
    for i in range(3):
        throttle.failed(f"2001:db8:7::{i + 2}", f"user{i}@isp.example", float(i))
    assert throttle.blocked("2001:db8:7::99", 3.0) and not throttle.blocked("2001:db8:8::2", 3.0)
    rate = ConnectionRate(per_minute=3)
    assert [rate.admit(f"2001:db8:7::{i}", float(i)) for i in (2, 3, 4, 5)] == [True, True, True, False]
    assert rate.admit("2001:db8:8::2", 5.0)


def test_a_session_over_its_command_pace_waits_and_is_never_refused() -> None:
    pace = CommandPace(per_second=10, now=0.0)
    assert [pace.delay(0.0) for _ in range(50)] == [0.0] * 50  # a burst of five seconds' worth
    assert pace.delay(0.0) == pytest.approx(0.1) and pace.delay(0.0) == pytest.approx(0.2)
    assert pace.delay(10.0) == 0.0  # refilled, up to the burst only
    assert CommandPace(per_second=0, now=0.0).delay(0.0) == 0.0  # 0: no limit
