"""Proxying's pure half (ispd/radius/proxy.py): which realm a User-Name goes to, and the rewriting
of the request for the home server and of its answer for the NAS, checked with the codec."""

from __future__ import annotations

import os

import pytest

from ispd.radius import mschap
from ispd.radius.codec import (
    Attr,
    Code,
    Packet,
    Vendor,
    check_message_authenticator,
    check_request_authenticator,
    check_response_authenticator,
    decode,
    encode_attributes,
    encode_request,
    encode_response,
    hide_password,
    hide_salted,
    reveal_password,
    reveal_salted,
    vendor_specific,
)
from ispd.radius.proxy import (
    HomeServer,
    ProxyError,
    Realm,
    Realms,
    forward_access_request,
    forward_accounting_request,
    relay_answer,
)

NAS, HOME = b"nas-secret", b"home-secret"


def realm(name: str = "home.example", *, strip: bool = False) -> Realm:
    return Realm(name, (HomeServer("198.18.5.1", 1812),), (), HOME, strip, 1.0, 1, True)


def test_which_realm() -> None:
    realms = Realms([realm("home.example"), realm("*")], ["campus.example"])
    assert realms.route("alice@home.example").name == "home.example"  # type: ignore[union-attr]
    assert realms.route("alice@HOME.Example.").name == "home.example"  # type: ignore[union-attr]
    assert realms.route("alice@other.example").name == "*"  # type: ignore[union-attr]
    assert realms.route("a@b@home.example").name == "home.example"  # type: ignore[union-attr]  # the last @
    for local in ("alice", "alice@campus.example", "alice@", "@campus.example", "@"):
        assert realms.route(local) is None, local
    # RFC 7542 §2.4's anonymous NAI, an EAP outer identity (from a review: it was taken as a
    # local login, and the visitor rejected here)
    assert realms.route("@home.example").name == "home.example"  # type: ignore[union-attr]
    only = Realms([realm("home.example")], [])
    assert only.route("alice@other.example") is None and bool(only) and not Realms([], ["x"])


def test_pap_is_hidden_again_for_the_home_server_and_signed_with_its_secret() -> None:
    nas_auth = os.urandom(16)
    packet = decode(encode_request(Code.ACCESS_REQUEST, 7, encode_attributes(
        [(Attr.USER_NAME, b"alice@home.example"), (Attr.PROXY_STATE, b"nas-proxy"),
         (Attr.USER_PASSWORD, hide_password(b"s3cret-but-longer-than-16", NAS, nas_auth))]), NAS,
        authenticator=nas_auth))
    sent_auth = os.urandom(16)
    forwarded = decode(forward_access_request(packet, NAS, realm(), 33, sent_auth))
    assert (forwarded.code, forwarded.identifier, forwarded.authenticator) == (Code.ACCESS_REQUEST, 33, sent_auth)
    assert check_message_authenticator(forwarded, HOME) and forwarded.attributes[0][0] == Attr.MESSAGE_AUTHENTICATOR
    password = forwarded.get(Attr.USER_PASSWORD)
    assert password is not None and reveal_password(password, HOME, sent_auth) == b"s3cret-but-longer-than-16"
    assert forwarded.get(Attr.USER_NAME) == b"alice@home.example"
    assert forwarded.get_all(Attr.PROXY_STATE) == [b"nas-proxy"]  # the NAS's travel on
    stripped = decode(forward_access_request(packet, NAS, realm(strip=True), 1))
    assert stripped.get(Attr.USER_NAME) == b"alice"


def test_chap_gets_its_challenge_as_an_attribute_and_a_bad_password_is_refused() -> None:
    nas_auth = os.urandom(16)
    packet = decode(encode_request(Code.ACCESS_REQUEST, 1, encode_attributes(
        [(Attr.USER_NAME, b"bob@home.example"), (Attr.CHAP_PASSWORD, b"\x01" + bytes(16))]), NAS,
        authenticator=nas_auth))
    forwarded = decode(forward_access_request(packet, NAS, realm(), 2))
    assert forwarded.get(Attr.CHAP_CHALLENGE) == nas_auth
    with_challenge = decode(encode_request(Code.ACCESS_REQUEST, 1, encode_attributes(
        [(Attr.CHAP_PASSWORD, b"\x01" + bytes(16)), (Attr.CHAP_CHALLENGE, b"c" * 16)]), NAS))
    assert decode(forward_access_request(with_challenge, NAS, realm(), 2)).get_all(Attr.CHAP_CHALLENGE) == [b"c" * 16]
    broken = decode(encode_request(Code.ACCESS_REQUEST, 1, encode_attributes([(Attr.USER_PASSWORD, b"x" * 5)]), NAS))
    with pytest.raises(ProxyError):
        forward_access_request(broken, NAS, realm(), 2)


def test_the_answer_is_the_nass_with_keys_salted_again() -> None:
    nas_auth, sent_auth = os.urandom(16), os.urandom(16)
    request = decode(encode_request(Code.ACCESS_REQUEST, 9, encode_attributes(
        [(Attr.USER_NAME, b"carol@home.example"), (Attr.PROXY_STATE, b"one"), (Attr.PROXY_STATE, b"two")]), NAS,
        authenticator=nas_auth))
    send_key, recv_key = os.urandom(32), os.urandom(32)
    home_answer = decode(encode_response(Code.ACCESS_ACCEPT, 200, sent_auth, encode_attributes([
        vendor_specific(Vendor.MICROSOFT, 16, mschap.encrypt_mppe_key(send_key, HOME, sent_auth)),
        vendor_specific(Vendor.MICROSOFT, 17, mschap.encrypt_mppe_key(recv_key, HOME, sent_auth)),
        vendor_specific(Vendor.MICROSOFT, 7, b"\0\0\0\1"),
        (Attr.TUNNEL_PASSWORD, b"\x01" + hide_salted(b"tunnel-pw", HOME, sent_auth)),
        (Attr.PROXY_STATE, b"one"), (Attr.PROXY_STATE, b"two"), (Attr.CLASS, b"home-class")]), HOME))
    relayed = decode(relay_answer(home_answer, realm(), sent_auth, request, NAS))
    assert (relayed.code, relayed.identifier) == (Code.ACCESS_ACCEPT, 9)
    assert check_response_authenticator(relayed, nas_auth, NAS) and check_message_authenticator(relayed, NAS, nas_auth)
    keys = dict(relayed.vendor_attributes(Vendor.MICROSOFT))
    assert mschap.decrypt_mppe_key(keys[16], NAS, nas_auth) == send_key
    assert mschap.decrypt_mppe_key(keys[17], NAS, nas_auth) == recv_key
    assert keys[7] == b"\0\0\0\1"
    tunnel = relayed.get(Attr.TUNNEL_PASSWORD)
    assert tunnel is not None and tunnel[:1] == b"\x01" and reveal_salted(tunnel[1:], NAS, nas_auth) == b"tunnel-pw"
    assert relayed.get_all(Attr.PROXY_STATE) == [b"one", b"two"] and relayed.get(Attr.CLASS) == b"home-class"
    wrong = decode(encode_response(Code.ACCESS_ACCEPT, 200, sent_auth, encode_attributes([
        vendor_specific(Vendor.MICROSOFT, 16, mschap.encrypt_mppe_key(send_key, b"other", sent_auth)[:2] + b"x" * 3)]),
        HOME))
    with pytest.raises(ProxyError):
        relay_answer(wrong, realm(), sent_auth, request, NAS)


def test_accounting_is_signed_with_the_realms_secret() -> None:
    packet = decode(encode_request(Code.ACCOUNTING_REQUEST, 3, encode_attributes(
        [(Attr.USER_NAME, b"dan@home.example"), (Attr.ACCT_STATUS_TYPE, b"\0\0\0\1")]), NAS,
        message_authenticator=False))
    again = decode(forward_accounting_request(packet, realm(strip=True), 4))
    assert check_request_authenticator(again, HOME) and again.get(Attr.USER_NAME) == b"dan"


def test_mschap_v1_keys_are_hidden_again_for_the_nas() -> None:
    # MS-CHAP-MPPE-Keys (RFC 2548 §2.4.1) is hidden as User-Password is, with the home server's
    # secret and ispd's Request Authenticator: the NAS must get it under its own (from a review:
    # relayed as it came, MS-CHAPv1 through the proxy gave the NAS garbage keys).
    nas_auth, sent_auth = os.urandom(16), os.urandom(16)
    request = decode(encode_request(Code.ACCESS_REQUEST, 9, encode_attributes(
        [(Attr.USER_NAME, b"erin@home.example")]), NAS, authenticator=nas_auth))
    keys = bytes(8) + os.urandom(15) + b"\0" + bytes(8)  # LM-Key, NT-Key (ending in a zero), padding
    home_answer = decode(encode_response(Code.ACCESS_ACCEPT, 200, sent_auth, encode_attributes([
        vendor_specific(Vendor.MICROSOFT, 12, hide_password(keys, HOME, sent_auth)),
        vendor_specific(Vendor.MICROSOFT, 7, b"\0\0\0\1")]), HOME))
    relayed = decode(relay_answer(home_answer, realm(), sent_auth, request, NAS))
    hidden = dict(relayed.vendor_attributes(Vendor.MICROSOFT))[12]
    assert len(hidden) == 32 and reveal_password(hidden, NAS, nas_auth) == keys.rstrip(b"\0")
    assert hidden == hide_password(keys, NAS, nas_auth)  # all 32 octets, the padding too


def test_accounting_held_here_says_so_in_its_acct_delay_time() -> None:
    # The copy goes after the local write, or to the next server when one was silent: the home
    # server dates the record by Acct-Delay-Time (from a review: sent unchanged, it was dated as
    # late as the proxy held it, seconds for each silent server).
    def request(*more: tuple[int, bytes]) -> bytes:
        return encode_request(Code.ACCOUNTING_REQUEST, 3, encode_attributes(
            [(Attr.USER_NAME, b"dan@home.example"), *more, (Attr.ACCT_STATUS_TYPE, b"\0\0\0\1")]), NAS,
            message_authenticator=False)

    delayed = decode(request((Attr.ACCT_DELAY_TIME, b"\0\0\0\5")))
    again = decode(forward_accounting_request(delayed, realm(), 4, held_seconds=6.7))
    assert again.attributes[1] == (Attr.ACCT_DELAY_TIME, b"\0\0\0\x0b") and check_request_authenticator(again, HOME)
    undelayed = decode(request())
    assert decode(forward_accounting_request(undelayed, realm(), 4, held_seconds=3.2)).get(Attr.ACCT_DELAY_TIME) \
        == b"\0\0\0\3"
    assert decode(forward_accounting_request(undelayed, realm(), 4, held_seconds=0.4)).get(Attr.ACCT_DELAY_TIME) is None


def test_load_balance_orders_the_servers_by_device_and_a_lost_server_moves_only_its_devices() -> None:
    servers = tuple(HomeServer(f"198.18.5.{i}", 1812) for i in range(1, 5))
    balanced = Realm("home.example", servers, (), HOME, False, 1.0, 1, True, load_balance=True)

    def packet(device: bytes | None, user: bytes = b"dan@home.example") -> Packet:
        attributes = [(Attr.USER_NAME, user), *([(Attr.CALLING_STATION_ID, device)] if device else [])]
        return decode(encode_request(Code.ACCESS_REQUEST, 1, encode_attributes(attributes), NAS))

    devices = [f"02-00-00-00-01-{i:02x}".encode() for i in range(200)]
    firsts = [balanced.servers_for(servers, packet(d), "198.18.9.1")[0] for d in devices]
    assert all(firsts.count(s) >= 25 for s in servers)  # spread (50 each on average)
    for device in devices[:20]:  # one order per device (and NAS), whatever else the request says
        order = balanced.servers_for(servers, packet(device), "198.18.9.1")
        assert sorted(order, key=str) == sorted(servers, key=str)
        assert balanced.servers_for(servers, packet(device, b"other@home.example"), "198.18.9.1") == order
    # Without Calling-Station-Id: by User-Name.
    assert balanced.servers_for(servers, packet(None, b"a@home.example"), "198.18.9.1") == \
        balanced.servers_for(servers, packet(None, b"a@home.example"), "198.18.9.1")
    # A server gone: its devices move, the others stay where they were.
    fewer = servers[1:]
    moved = [balanced.servers_for(fewer, packet(d), "198.18.9.1")[0] for d in devices]
    assert all(after == before for before, after in zip(firsts, moved, strict=True) if before != servers[0])
    # Fail-over: as configured.
    assert realm().servers_for(servers, packet(devices[0]), "198.18.9.1") == servers


def test_a_forwarded_request_carries_ispds_own_proxy_state_which_tells_it_come_back() -> None:
    realms = Realms([realm()], [], mark=b"ispd-proxy:me")
    packet = decode(encode_request(Code.ACCESS_REQUEST, 7, encode_attributes(
        [(Attr.USER_NAME, b"alice@home.example"), (Attr.PROXY_STATE, b"nas-proxy")]), NAS))
    assert not realms.looped(packet)
    sent_auth = os.urandom(16)
    forwarded = decode(forward_access_request(packet, NAS, realm(), 33, sent_auth, realms.mark))
    assert forwarded.get_all(Attr.PROXY_STATE) == [b"nas-proxy", b"ispd-proxy:me"]  # the NAS's first
    assert realms.looped(forwarded) and not Realms([realm()], []).looped(forwarded)  # another ispd's: not ours
    accounting = decode(encode_request(Code.ACCOUNTING_REQUEST, 3, encode_attributes(
        [(Attr.USER_NAME, b"dan@home.example"), (Attr.ACCT_STATUS_TYPE, b"\0\0\0\1")]), NAS,
        message_authenticator=False))
    copied = decode(forward_accounting_request(accounting, realm(), 4, 0.0, realms.mark))
    assert check_request_authenticator(copied, HOME) and realms.looped(copied)
    # The home server returns it: the NAS gets its own Proxy-States only.
    answer = decode(encode_response(Code.ACCESS_REJECT, 33, sent_auth, encode_attributes(
        [(Attr.PROXY_STATE, b"nas-proxy"), (Attr.PROXY_STATE, b"ispd-proxy:me")]), HOME))
    assert decode(relay_answer(answer, realm(), sent_auth, packet, NAS)).get_all(Attr.PROXY_STATE) == [b"nas-proxy"]


def test_a_nul_terminated_user_name_goes_to_the_home_server_without_its_nuls() -> None:
    """From a review: since 06fb3e3 "bob@home.example\\0" is routed to home.example (the login
    read without its NULs), but the home server was sent the NULs, which only FreeRADIUS and
    ispd read past; without strip_realm the name stayed "bob@home.example\\0"."""
    sent_auth = os.urandom(16)
    packet = decode(encode_request(Code.ACCESS_REQUEST, 7, encode_attributes([
        (Attr.USER_NAME, b"bob@home.example\x00"), (Attr.USER_PASSWORD, hide_password(b"pw", NAS, sent_auth))]),
        NAS, authenticator=sent_auth))
    assert decode(forward_access_request(packet, NAS, realm(), 33)).get(Attr.USER_NAME) == b"bob@home.example"
    assert decode(forward_access_request(packet, NAS, realm(strip=True), 33)).get(Attr.USER_NAME) == b"bob"
    accounting = decode(encode_request(Code.ACCOUNTING_REQUEST, 8, encode_attributes([
        (Attr.ACCT_STATUS_TYPE, b"\x00\x00\x00\x01"), (Attr.USER_NAME, b"bob@home.example\x00\x00")]), NAS))
    assert decode(forward_accounting_request(accounting, realm(), 4)).get(Attr.USER_NAME) == b"bob@home.example"
