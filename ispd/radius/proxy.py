"""Proxying to other RADIUS servers by realm: which requests go where, and the packets' rewriting
both ways. Pure: bytes and packets in, bytes out; the service sends and waits.

Theory of operation. A request whose User-Name is ``user@realm``, that names no local login and
whose realm is not in ``local_realms``, goes to the home servers of the ``[[radius.realm]]`` of
that name, or of ``"*"`` when none has it (FreeRADIUS's DEFAULT realm, an eduroam federation's
proxy). The home server sees ispd as its NAS: every hop has its own shared secret, so what the
secrets protect is taken apart with the NAS's and put back with the home server's, and the
other way for the answer:

- the request keeps its attributes in order, but User-Password is hidden again for the new
  Request Authenticator (RFC 2865 §5.2); a CHAP-Password whose challenge was the NAS's Request
  Authenticator gets it as a CHAP-Challenge attribute (RFC 2865 §2.2), since the new packet has
  another; the Message-Authenticator is made anew (first, as BlastRADIUS advises); the realm
  is cut from User-Name when the realm says ``strip_realm``. The NAS's Proxy-States travel on.
- the answer keeps its code and attributes, but MS-MPPE-Send/Recv-Key (RFC 2548 §2.4.2) and
  Tunnel-Password (RFC 2868 §3.5), salted with the home server's secret and ispd's Request
  Authenticator, are salted again with the NAS's, and MS-CHAPv1's MS-CHAP-MPPE-Keys (§2.4.1,
  hidden as User-Password is) hidden again; Proxy-State is what the NAS sent (each
  once, in order), and the Message-Authenticator and Response Authenticator are the NAS's.
- accounting is forwarded with the realm's secret (its Request Authenticator is computed,
  RFC 2866 §3), its Acct-Delay-Time grown by the time ispd held it.

Which home server: the realm's servers in order (fail-over), or with ``balance =
"load-balance"`` in an order of their own for each device (``servers_for``: rendezvous hashing
of the NAS and the Calling-Station-Id, else the User-Name), so that one device's requests, an
EAP conversation's rounds among them, go to one server while it is up, and a server that goes
down moves only its devices to the others. The service puts the servers that failed lately
last.

A loop (a realm whose servers send it back to ispd: an eduroam institution that left its own
realm out of ``local_realms``, so that an unknown login of its realm goes to the federation and
comes home again) is cut at its second pass: each forwarded request carries a Proxy-State of
ispd's own (``Realms.mark``, RFC 2865 §5.33 lets a proxy add one; the home server returns it and
the answer's Proxy-States are the NAS's anyway), and a request that comes back with it is not
proxied again (``Realms.looped``). Without it each pass was a new request: an Access-Request went
round until 4,096 waited on the one server, an accounting copy until the duplicate cache took one
for a retransmission.

Not here: Tunnel-Password in requests (NASes do not send it), proxying Status-Server, relaying
a home server's CoA or Disconnect-Request to the NAS (RFC 5176 §3.1: ispd listens for none).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from ispd.radius import mschap
from ispd.radius.codec import (
    Attr,
    Code,
    Packet,
    Vendor,
    encode_attributes,
    encode_request,
    encode_response,
    hide_password,
    hide_salted,
    reveal_password,
    reveal_salted,
    split_vendor_specific,
    u32,
    vendor_specific,
)
from ispd.radius.config import RealmConfig

_MS_CHAP_MPPE_KEYS, _MS_MPPE_SEND_KEY, _MS_MPPE_RECV_KEY = 12, 16, 17
_HIDDEN_MICROSOFT = (_MS_CHAP_MPPE_KEYS, _MS_MPPE_SEND_KEY, _MS_MPPE_RECV_KEY)
_MA = int(Attr.MESSAGE_AUTHENTICATOR)
_PROXY_STATE = int(Attr.PROXY_STATE)


class ProxyError(ValueError):
    """A request or answer that cannot be carried across (an unreadable hidden attribute, a
    packet over 4096 octets): the request is not proxied, or the answer not relayed."""


@dataclass(frozen=True, slots=True)
class HomeServer:
    address: str
    port: int

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class Realm:
    name: str  # the realm, or "*"
    auth_servers: tuple[HomeServer, ...]
    acct_servers: tuple[HomeServer, ...]
    secret: bytes
    strip_realm: bool
    timeout: float
    attempts: int
    require_message_authenticator: bool
    load_balance: bool = False
    status_check: float = 0.0  # seconds between Status-Server checks of a dead server; 0: none

    @classmethod
    def from_config(cls, config: RealmConfig) -> Realm:
        return cls(config.name, tuple(HomeServer(a.host, a.port) for a in config.auth_servers),
                   tuple(HomeServer(a.host, a.port) for a in config.acct_servers),
                   config.secret.get_secret_value().encode(), config.strip_realm, config.timeout_seconds,
                   config.attempts, config.require_message_authenticator, config.balance == "load-balance",
                   config.status_check_seconds)

    def servers_for(self, servers: tuple[HomeServer, ...], packet: Packet, nas_address: str) -> tuple[HomeServer, ...]:
        """The order in which ``servers`` (the realm's auth or accounting servers) are asked for
        ``packet`` from the NAS at ``nas_address``: as configured, or load-balanced by device."""
        if not self.load_balance or len(servers) < 2:
            return servers
        device = packet.get(Attr.CALLING_STATION_ID) or packet.get(Attr.USER_NAME) or b""
        key = nas_address.encode() + b"\0" + device + b"\0"
        return tuple(sorted(servers, key=lambda s: hashlib.blake2b(key + str(s).encode(), digest_size=8).digest(),
                            reverse=True))


class Realms:
    """Which realm, if any, a User-Name is proxied to."""

    def __init__(self, realms: list[Realm], local_realms: list[str], mark: bytes | None = None) -> None:
        self.by_name = {r.name: r for r in realms if r.name != "*"}
        self.default = next((r for r in realms if r.name == "*"), None)
        self.local = frozenset(local_realms)
        # The Proxy-State this ispd adds to what it forwards: random, so that two ispd proxies
        # in one loop each know their own.
        self.mark = mark if mark is not None else b"ispd-proxy:" + os.urandom(8)

    def looped(self, packet: Packet) -> bool:
        """Whether ``packet`` is one that this ispd forwarded, come back to it."""
        return _PROXY_STATE in packet.first and any(
            code == _PROXY_STATE and value == self.mark for code, value in packet.attributes)

    def __bool__(self) -> bool:
        return bool(self.by_name) or self.default is not None

    def with_accounting(self) -> list[Realm]:
        """The realms that have accounting servers (Accounting-On/Off go to each)."""
        realms = [*self.by_name.values(), *([self.default] if self.default is not None else [])]
        return [r for r in realms if r.acct_servers]

    def route(self, username: str) -> Realm | None:
        """The realm of ``user@realm`` (the part after the last "@", any case), or None: no
        realm, one of ``local_realms``, or one no entry and no "*" takes. ``@realm`` alone is
        the anonymous NAI of RFC 7542 §2.4, an EAP supplicant's outer identity: proxied too."""
        _, at, realm = username.rpartition("@")
        if not at or not realm:
            return None
        realm = realm.lower().rstrip(".")
        if realm in self.local:
            return None
        return self.by_name.get(realm, self.default)


def status_server_request(identifier: int, secret: bytes) -> bytes:
    """A Status-Server to a home server (RFC 5997 §3: with a Message-Authenticator; the
    NAS-Identifier says who asks)."""
    return encode_request(Code.STATUS_SERVER, identifier, encode_attributes([(Attr.NAS_IDENTIFIER, b"ispd")]), secret)


def stripped(username: bytes) -> bytes:
    return username.rpartition(b"@")[0] or username


def user_name_for(value: bytes, realm: Realm) -> bytes:
    """The User-Name for the home server: without the NULs a NAS may end it with (the login
    ispd routed by, as FreeRADIUS reads and forwards it), and without "@realm" if the realm
    says ``strip_realm``."""
    value = value.rstrip(b"\x00")
    return stripped(value) if realm.strip_realm else value


def forward_access_request(packet: Packet, nas_secret: bytes, realm: Realm, identifier: int,
                           authenticator: bytes | None = None, mark: bytes = b"") -> bytes:
    """The Access-Request for the home server: ``packet`` from the NAS re-secured for the realm,
    with ``mark`` (``Realms.mark``) as a Proxy-State of its own after the NAS's."""
    authenticator = authenticator if authenticator is not None else os.urandom(16)
    out: list[tuple[int, bytes]] = []
    for code, value in packet.attributes:
        if code == _MA:
            continue  # made anew, first
        if code == Attr.USER_NAME:
            out.append((code, user_name_for(value, realm)))
        elif code == Attr.USER_PASSWORD:
            password = reveal_password(value, nas_secret, packet.authenticator)
            if password is None:
                raise ProxyError("a User-Password that does not decrypt")
            out.append((code, hide_password(password, realm.secret, authenticator)))
        else:
            out.append((code, value))
    if Attr.CHAP_PASSWORD in packet.first and Attr.CHAP_CHALLENGE not in packet.first:
        out.append((Attr.CHAP_CHALLENGE, packet.authenticator))  # the challenge the NAS used
    if mark:
        out.append((_PROXY_STATE, mark))
    try:
        return encode_request(Code.ACCESS_REQUEST, identifier, encode_attributes(out), realm.secret,
                              authenticator=authenticator)
    except ValueError as exc:
        raise ProxyError(str(exc)) from None


def forward_accounting_request(packet: Packet, realm: Realm, identifier: int, held_seconds: float = 0.0,
                               mark: bytes = b"") -> bytes:
    """The NAS's Accounting-Request for the realm's server, ``held_seconds`` after it came: its
    Acct-Delay-Time grows by as much (RFC 2866 §5.2), or the home server dates the record that
    much late (a copy sent after the local write, or to the next server when one was silent);
    ``mark`` as in ``forward_access_request``."""
    held = int(held_seconds)
    out: list[tuple[int, bytes]] = []
    for code, value in packet.attributes:
        if code == _MA:
            continue
        if code == Attr.USER_NAME:
            out.append((code, user_name_for(value, realm)))
        elif code == Attr.ACCT_DELAY_TIME and held > 0 and len(value) == 4:
            out.append((code, u32(min(int.from_bytes(value, "big") + held, 0xFFFFFFFF))))
            held = 0
        else:
            out.append((code, value))
    if held > 0 and Attr.ACCT_DELAY_TIME not in packet.first:
        out.append((Attr.ACCT_DELAY_TIME, u32(held)))
    if mark:
        out.append((_PROXY_STATE, mark))
    try:
        return encode_request(Code.ACCOUNTING_REQUEST, identifier, encode_attributes(out), realm.secret,
                              message_authenticator=False)
    except ValueError as exc:
        raise ProxyError(str(exc)) from None


def relay_answer(answer: Packet, realm: Realm, sent_authenticator: bytes, request: Packet, nas_secret: bytes) -> bytes:
    """The home server's Access-Accept, -Reject or -Challenge as the NAS's answer to ``request``."""
    out = [_salted_again(code, value, realm.secret, sent_authenticator, nas_secret, request.authenticator)
           for code, value in answer.attributes if code not in (_MA, _PROXY_STATE)]  # the NAS's own, below
    states = [(c, v) for c, v in request.attributes if c == _PROXY_STATE]
    try:
        return encode_response(answer.code, request.identifier, request.authenticator,
                               encode_attributes([*out, *states]), nas_secret)
    except ValueError as exc:
        raise ProxyError(str(exc)) from None


_MICROSOFT = int(Vendor.MICROSOFT).to_bytes(4, "big")


def _salted_again(code: int, value: bytes, home_secret: bytes, sent_authenticator: bytes, nas_secret: bytes,
                  nas_authenticator: bytes) -> tuple[int, bytes]:
    """An answer's attribute as the NAS must see it: what is salted with the home server's
    secret and ispd's Request Authenticator, salted with the NAS's; the rest as it is."""
    if code == Attr.TUNNEL_PASSWORD and len(value) > 3:
        plain = reveal_salted(value[1:], home_secret, sent_authenticator)
        if plain is None:
            raise ProxyError("a Tunnel-Password that does not decrypt")
        return code, value[:1] + hide_salted(plain, nas_secret, nas_authenticator)  # (its tag first)
    if code != Attr.VENDOR_SPECIFIC or value[:4] != _MICROSOFT:
        return code, value
    parts = split_vendor_specific(value)
    if parts is None or not any(t in _HIDDEN_MICROSOFT for t, _ in parts):
        return code, value
    body = b""
    for vendor_type, sub in parts:
        again = sub
        if vendor_type == _MS_CHAP_MPPE_KEYS:  # MS-CHAPv1's, hidden as User-Password is (RFC 2548 §2.4.1)
            keys = reveal_password(sub, home_secret, sent_authenticator)
            if keys is None:
                raise ProxyError("an MS-CHAP-MPPE-Keys that does not decrypt")
            # (its zero padding is part of the 32 octets: kept, not left to hide_password's rounding)
            again = hide_password(keys.ljust(len(sub), b"\0"), nas_secret, nas_authenticator)
        elif vendor_type in (_MS_MPPE_SEND_KEY, _MS_MPPE_RECV_KEY):
            try:
                again = mschap.encrypt_mppe_key(mschap.decrypt_mppe_key(sub, home_secret, sent_authenticator),
                                                nas_secret, nas_authenticator)
            except ValueError:
                raise ProxyError("an MS-MPPE key that does not decrypt") from None
        body += vendor_specific(Vendor.MICROSOFT, vendor_type, again)[1][4:]
    return code, _MICROSOFT + body
