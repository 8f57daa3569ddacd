"""SRS: forwarded senders signed into our addresses, bounces to them checked and undone."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
from email._header_value_parser import get_addr_spec  # (what aiosmtpd parses MAIL and RCPT with)
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ispd.mail import srs
from ispd.mail.config import MailConfig
from ispd.mail.service import check_files
from ispd.mail.srs import SenderRewriter, SRSError, is_srs, load_secrets, quoted

NOW = 1_800_000_000.0  # day 20833: 20833 % 1024 = 353 = 0b01011_00001 -> "LB"
DAY = 86400.0


def rewriter(*secrets: bytes, domain: str = "isp.example") -> SenderRewriter:
    local = ["isp.example", "other.example"] if domain == "isp.example" else [domain]
    return SenderRewriter(list(secrets or (b"first-secret",)), domain, local)


def test_a_sender_elsewhere_is_signed_into_an_srs0_address_at_our_domain() -> None:
    expected_hash = base64.b64encode(hmac.new(b"first-secret", b"lbexample.combob", hashlib.sha1).digest())[:4]
    forwarded = rewriter().forward("Bob@Example.com", NOW)
    assert forwarded == f"SRS0={expected_hash.decode()}=LB=Example.com=Bob@isp.example"
    assert rewriter().reverse(forwarded, NOW) == "Bob@Example.com"  # the local part's case kept


def test_our_own_domains_and_the_null_sender_stay_as_they_are() -> None:
    for sender in ("", "alice@isp.example", "alice@OTHER.example", "no-at-sign"):
        assert rewriter().forward(sender, NOW) == sender


def test_a_bounce_address_is_checked_without_regard_to_case() -> None:
    forwarded = rewriter().forward("bob@example.com", NOW)
    local, _, domain = forwarded.rpartition("@")
    assert rewriter().reverse(f"{local.upper()}@{domain.upper()}", NOW) == "BOB@EXAMPLE.COM"
    assert rewriter().reverse(f"{local}@{domain}.", NOW) == "bob@example.com"  # (a root dot, as the MX takes it)


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda a: a.replace("SRS0=", "SRS0=x", 1), "signature is damaged"),
    (lambda a: "SRS0=AAAA" + a[9:], "signature is wrong"),
    (lambda a: "SRS0=\u00e9\u00e9\u00e9\u00e9" + a[9:], "signature is wrong"),  # (SMTPUTF8: was a TypeError, 451)
    (lambda a: "SRS0=\udce9\udce9\udce9\udce9" + a[9:], "signature is wrong"),  # (bytes that are no UTF-8)
    (lambda a: "SRS1=\u00e9\u00e9\u00e9\u00e9=fwd.example==x" + a[a.index("@"):], "signature is wrong"),
    (lambda a: a.replace("=LB=", "=L1=", 1), "timestamp is damaged"),
    (lambda a: a.replace("=LB=", "=LBB=", 1), "timestamp is damaged"),
    (lambda a: a.replace("example.com", "example.net", 1), "signature is wrong"),
    (lambda a: a.replace("=bob@", "=eve@", 1), "signature is wrong"),
    (lambda a: "SRS0=bob@isp.example", "no SRS0 or SRS1 address"),
])
def test_a_forged_or_damaged_address_is_refused(damage: object, reason: str) -> None:
    forwarded = rewriter().forward("bob@example.com", NOW)
    with pytest.raises(SRSError, match=reason):
        rewriter().reverse(damage(forwarded), NOW)  # type: ignore[operator]


def test_an_address_older_than_the_maximum_age_is_refused_unless_the_age_does_not_matter() -> None:
    forwarded = rewriter().forward("bob@example.com", NOW)
    assert rewriter().reverse(forwarded, NOW + 21 * DAY) == "bob@example.com"
    with pytest.raises(SRSError, match="older than 21 days"):
        rewriter().reverse(forwarded, NOW + 22 * DAY)
    assert rewriter().reverse(forwarded, NOW + 400 * DAY, check_age=False) == "bob@example.com"


def test_the_day_counter_wraps_after_1024_days() -> None:
    last_day = (1023 + 1024 * 20) * DAY  # day 1023 of a cycle: "77"; the next is "AA"
    forwarded = rewriter().forward("bob@example.com", last_day)
    assert "=77=" in forwarded
    assert rewriter().reverse(forwarded, last_day + 3 * DAY) == "bob@example.com"
    assert "=AA=" in rewriter().forward("bob@example.com", last_day + DAY)


def test_a_rotated_secret_still_verifies_what_it_signed() -> None:
    old = rewriter(b"old").forward("bob@example.com", NOW)
    rotated = rewriter(b"new", b"old")
    assert rotated.reverse(old, NOW) == "bob@example.com"
    assert rotated.forward("bob@example.com", NOW) != old  # the first signs
    with pytest.raises(SRSError):
        rewriter(b"new").reverse(old, NOW)


def test_another_forwarder_s_srs_address_is_wrapped_once_and_its_bounce_goes_back_there() -> None:
    first = rewriter(b"theirs", domain="fwd.example").forward("bob@example.com", NOW)
    assert first.endswith("=example.com=bob@fwd.example")
    ours = rewriter().forward(first, NOW)
    assert ours.startswith("SRS1=") and ours.endswith(f"=fwd.example=={first[5:].rpartition('@')[0]}@isp.example")
    assert rewriter().reverse(ours, NOW) == first  # back to the first forwarder, which undoes its own
    # A third forwarder keeps the first one, not us: the bounce skips the middle.
    third = rewriter(b"third", domain="third.example").forward(ours, NOW)
    assert third.startswith("SRS1=") and "=fwd.example==" in third and third.endswith("@third.example")
    assert rewriter(b"third", domain="third.example").reverse(third, NOW) == first
    with pytest.raises(SRSError, match="signature is wrong"):
        rewriter().reverse(ours.replace("=fwd.example=", "=evil.example=", 1), NOW)


def test_an_address_at_another_domain_or_without_a_tag_is_none_of_ours() -> None:
    forwarded = rewriter().forward("bob@example.com", NOW)
    assert rewriter().reverse(forwarded.replace("@isp.example", "@elsewhere.example"), NOW) is None
    # Any of our domains is ours: an address made before srs_domain changed still comes back.
    assert rewriter().reverse(forwarded.replace("@isp.example", "@other.example"), NOW) == "bob@example.com"
    assert rewriter().reverse("alice@isp.example", NOW) is None
    assert not is_srs("srs0") and is_srs("srs0=x") and is_srs("SRS1-x") and not is_srs("SRS2=x")


@given(st.text(max_size=120))
def test_any_text_is_undone_refused_or_none_of_ours(local: str) -> None:
    try:
        result = rewriter().reverse(f"{local}@isp.example", NOW)
    except SRSError:
        return
    assert result is None or "@" in result


@given(st.from_regex(r"[A-Za-z0-9.+=_-]{1,30}@[a-z0-9-]{1,20}\.example", fullmatch=True))
def test_whatever_is_signed_is_undone(sender: str) -> None:
    forwarded = rewriter().forward(sender, NOW)
    undone = rewriter().reverse(forwarded, NOW)
    if is_srs(sender.rpartition("@")[0]):  # (someone's SRS address: ours is an SRS1 back to them)
        assert undone is not None
    else:  # (a local part that is no dot-atom, a..b, comes back quoted: the same mailbox)
        local, _, domain = sender.rpartition("@")
        assert undone == f"{quoted(local)}@{domain}"


@pytest.mark.parametrize("sender", ['"john doe"@example.com', '"a\\"b"@example.com', "bob@[192.0.2.1]",
                                    "bob@[IPv6:2001:db8::1]", '"SRS0=HHHH=TT=[192.0.2.1]=x y"@fwd.example'])
def test_a_sender_that_needs_quotes_gives_an_srs_address_that_parses_and_comes_back(sender: str) -> None:
    """A quoted local part or an address literal puts a space, a quote or brackets into the SRS
    local part: unquoted that is no address (its bounce was refused as one), so it is quoted;
    the MX's parser (aiosmtpd's) hands a bounce to it over quoted, and it is undone to the sender."""
    forwarded = rewriter().forward(sender, NOW)
    addr_spec, rest = get_addr_spec(forwarded)
    assert not rest and not addr_spec.all_defects and addr_spec.addr_spec == forwarded, forwarded
    assert is_srs(forwarded.rpartition("@")[0])
    assert rewriter().reverse(forwarded, NOW) == sender  # (someone's SRS0: an SRS1 of ours, back to them)


def test_the_secret_file_is_made_once_private_and_read_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "srs.secret"
    made = load_secrets(path)
    assert len(made) == 1 and len(made[0]) >= 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_secrets(path) == made  # read, not made again
    path.write_bytes(b"# rotated 2026-12-06\nnew-one\n\n  " + made[0] + b"  \n")
    assert load_secrets(path) == [b"new-one", made[0]]
    path.write_bytes(b"# nothing\n\n")
    with pytest.raises(ValueError, match="holds no secret"):
        load_secrets(path)


def test_a_secret_file_others_may_read_is_refused_and_check_config_says_so(tmp_path: Path) -> None:
    """Whoever reads the secrets can sign addresses the MX relays: as sshd with its keys."""
    path = tmp_path / "srs.secret"
    path.write_bytes(b"s3cret\n")
    path.chmod(0o640)
    with pytest.raises(ValueError, match="may be read by others than its owner \\(mode 640\\): chmod 600 it"):
        load_secrets(path)
    config = MailConfig(domains=["isp.example"], srs_secret_file=path)
    assert check_files(config) == [f"srs: {path} may be read by others than its owner (mode 640): chmod 600 it"]
    path.chmod(0o600)
    assert check_files(config) == [] and load_secrets(path) == [b"s3cret"]
    assert check_files(MailConfig(domains=["isp.example"], srs_secret_file=tmp_path / "missing")) == []  # made at start


def test_a_secret_file_another_process_makes_meanwhile_is_read_not_overwritten_or_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two nodes sharing the directory, started together: both find no file; the second to make
    it reads the first's (and both sign alike) instead of failing to start on "File exists"."""
    path = tmp_path / "srs.secret"
    read = srs.read_secrets

    def first_missing_then_made_by_another(file: Path) -> list[bytes]:
        if file == path and not path.exists():
            path.write_bytes(b"the-other-nodes\n")
            path.chmod(0o600)
            raise FileNotFoundError(path)
        return read(file)

    monkeypatch.setattr(srs, "read_secrets", first_missing_then_made_by_another)
    assert load_secrets(path) == [b"the-other-nodes"]
    assert path.read_bytes() == b"the-other-nodes\n" and os.listdir(tmp_path) == ["srs.secret"]


def test_a_bounce_after_the_wall_clock_was_stepped_back_across_midnight_still_comes_back() -> None:
    """Forwarded at 00:30 UTC, then the clock stepped back two hours: the address's day was
    "tomorrow", 1023 days old by the modular count, and the bounce was refused as "older than
    21 days"."""
    srs = SenderRewriter([b"secret"], "isp.example", ["isp.example"])
    forwarded_at = 1_796_603_400.0  # 2026-12-07 00:30 UTC
    address = srs.forward("bob@example.com", forwarded_at)
    assert srs.reverse(address, forwarded_at - 7200) == "bob@example.com"
    with pytest.raises(SRSError, match="older than 21 days"):
        srs.reverse(address, forwarded_at + 22 * 86400)
