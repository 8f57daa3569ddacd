"""The CLI's tables line up in a terminal, whatever the names hold."""

from __future__ import annotations

import pytest

from ispd.cli import display_width, render_holding, render_overview, table_lines
from ispd.store.models import (
    CoARecord,
    Holding,
    RadiusSession,
    StoredCredentials,
    Subscriber,
    SubscriberOverview,
    SubscriberStatus,
)


def test_columns_line_up_with_wide_and_combining_characters() -> None:
    lines = table_lines(["ID", "NAME", "PLAN"], [[1, "Zoë 🎉 山田", "home"], [2, "bob", None], [3, "e\u0301e", "x"]])
    assert lines == ["ID  NAME         PLAN",
                     "1   Zoë 🎉 山田  home",
                     "2   bob          -",
                     "3   e\u0301e           x"]
    assert display_width("Zoë 🎉 山田") == 11 and display_width("e\u0301e") == 2


def test_text_from_the_wire_is_shown_escaped_not_sent_to_the_terminal() -> None:
    """From a bug hunt: a NAS's User-Name or Acct-Session-Id (an EAP outer identity the station
    chose) is stored as sent, and `ispd session list` printed its ESC[2J raw: the helpdesk's
    screen was cleared. Now a table shows it escaped, and lines up as it will be seen."""
    lines = table_lines(["ID", "USERNAME", "SESSION_ID"], [[1, "anon\x1b[2J", "a\nb"], [2, "Zoë", "s1"]])
    assert lines == ["ID  USERNAME     SESSION_ID",
                     "1   anon\\x1b[2J  a\\nb",
                     "2   Zoë          s1"]
    assert all(c.isprintable() for line in lines for c in line)


def test_who_escapes_what_a_nas_sent() -> None:
    holding = Holding(address="198.18.0.9", source="radius-session", starts_at=0.0, ends_at=None,
                      username="eve\x1b]0;owned\x07", subscriber_id=None, nas_address="198.18.0.1",
                      acct_session_id="s\r1")
    shown = render_holding(holding)
    assert "eve\\x1b]0;owned\\x07" in shown and "Acct-Session-Id s\\r1" in shown, shown
    assert "\x1b" not in shown and "\r" not in shown


def test_subscriber_show_escapes_a_nas_s_session_id_and_a_stored_reason() -> None:
    subscriber = Subscriber(1, "alice", SubscriberStatus.SUSPENDED, updated_at=0.0)
    session = RadiusSession(7, "198.18.0.1", "s\x1b[2J", "alice", 0.0, 0.0, subscriber_id=1)
    coa = CoARecord(1, 0.0, "disconnect", "198.18.0.1", "ack", 1, 0.0, session_id=7, subscriber_id=1,
                    reason="late\x1b[31m")  # (stored before the API checked reasons)
    shown = render_overview(SubscriberOverview(subscriber, None, StoredCredentials(), [], [], [session], [], [], coa=[coa]))
    assert "s\\x1b[2J on 198.18.0.1" in shown and "(late\\x1b[31m)" in shown, shown
    assert "\x1b" not in shown


def test_closing_a_nas_s_ten_thousand_sessions_names_a_few_and_counts_the_rest(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """From a bug hunt: a BNG's 10,000 sessions were one line of 70 kB."""
    import argparse
    import asyncio

    from ispd import cli

    async def closed(*_: object) -> dict[str, list[int]]:
        return {"closed": list(range(1, 10_001))}

    monkeypatch.setattr(cli, "daemon_request", closed)
    asyncio.run(cli.cmd_session_close(None, argparse.Namespace(nas="198.18.0.1", id=None)))  # type: ignore[arg-type]
    assert capsys.readouterr().out == ("closed 10000 session(s): " + ", ".join(f"#{n}" for n in range(1, 21))
                                       + " and 9980 more\n")


def test_subscriber_show_gives_each_session_s_ipv6_prefixes() -> None:
    """From a bug hunt: an IPv6 PPPoE session showed as `ip -` in `subscriber show`, its delegated
    /56 (the subscriber's own question: which prefix is my home's?) only in `session show`."""
    subscriber = Subscriber(1, "anna", SubscriberStatus.ACTIVE, updated_at=0.0)
    session = RadiusSession(7, "198.18.0.1", "a1", "anna", 0.0, 0.0, subscriber_id=1,
                            framed_ipv6_prefix="2001:db8:ffff:1::/64", delegated_ipv6_prefix="2001:db8:1000::/56",
                            framed_ipv6_address="2001:db8:ffff:1::7")
    shown = render_overview(SubscriberOverview(subscriber, None, StoredCredentials(), [], [], [session], [], []))
    assert "  a1 on 198.18.0.1 ip - prefix 2001:db8:ffff:1::/64 delegated 2001:db8:1000::/56 address6 " \
           "2001:db8:ffff:1::7 from 1970-01-01T00:00:00Z open" in shown, shown
