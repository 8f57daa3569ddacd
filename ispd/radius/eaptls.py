"""EAP-TLS (RFC 5216), EAP-TTLS (RFC 5281) and PEAPv0: TLS through Access-Challenges, and the
subscriber's credentials inside it (or its certificate).

Theory of operation. Wi-Fi (WPA2/WPA3-Enterprise) needs an EAP method that makes keys; EAP-MD5
makes none. These do: EAP-TTLS carries PAP inside (so it works with every credential policy,
``verifier`` included), PEAP carries EAP-MSCHAPv2 (the NT hash), and EAP-TLS needs no password:
the client's certificate, which OpenSSL checks against the configured client CA in the handshake.

1. The engine offers a method (or the peer asks for it in a Nak): ``TunnelServer.start`` sends
   an EAP-Request with the Start flag and keeps a ``Tunnel`` under a fresh State.
2. Each EAP-Response carries TLS records, split over several round trips when they are long
   (RFC 5216 §2.1.5, which both use as it is): a fragment with the More flag is acknowledged
   with an empty request; the whole message goes into the TLS server (pyOpenSSL on memory
   buffers, TLS 1.2: what supplicants and NASes do, and what both methods' key derivations are
   defined for). What the server writes back goes out in fragments of ``FRAGMENT_SIZE``, the
   next one each time the peer acknowledges the last.
3. EAP-TLS ends when the peer acknowledges the server's Finished: ``step`` says ``verified``
   and the engine matches the certificate's names (``certificate_names``) with the identity.
   Inside the established tunnel, TTLS: the peer sends its AVPs (RFC 5281 §10), User-Name (the
   real login; the outer one may be ``anonymous@realm``) and User-Password, which ``step``
   hands back as ``InnerPAP``. PEAP: the peer acknowledges the server's Finished, the server
   sends an Identity request, and each inner EAP response (PEAPv0 leaves out the EAP header
   but for EAP-TLV) goes back to the engine, whose replies ``send_inner`` encrypts.
4. On success the engine answers EAP-Success with the tunnel's MSK (``Tunnel.msk``: the TLS
   exporter with the method's label, RFC 5281 §8 and RFC 5216 §2.3) as MS-MPPE-Recv-Key and
   MS-MPPE-Send-Key (RFC 2548, as RFC 3580 §3.16 has it), from which the access point and the
   station derive their keys.

Every tunnel is used under one State for one round trip, then kept under a new one; each round
trip may take ``EAP_TIMEOUT_SECONDS`` (the Access-Challenge's Session-Timeout), a conversation at
most ``MAX_ROUNDS`` of them, and there are at most ``MAX_TUNNELS`` (the oldest go first, and the
log says so: ``radius.eap.tunnels_full``, at most once a minute). A TLS
message longer than ``MAX_TLS_MESSAGE``, fragments whose lengths do not add up, an AVP that runs
past its message (or a mandatory one ispd does not know), too many round trips or a TLS error
raise ``TunnelError``: the conversation ends with EAP-Failure. TLS session resumption is off:
every conversation makes a full handshake.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from OpenSSL import SSL

from ispd.logs import LogThrottle, get_logger
from ispd.radius.eap import EAP_TIMEOUT_SECONDS, EAPCode, EAPPacket, EAPType, decode_eap, encode_eap

log = get_logger("ispd.radius")

EAP_TLS = 13  # the EAP method types (RFC 5216, RFC 5281 §9.1, and PEAP's as IANA lists it)
EAP_TTLS = 21
EAP_PEAP = 25
EAP_MSCHAPV2 = 26  # inside PEAP (draft-kamath-pppext-eap-mschapv2)
EAP_TLV = 33  # PEAP's result (draft-josefsson-pppext-eap-tls-eap §4.2)
TUNNEL_VERSION = 0  # TTLSv0 and PEAPv0, the versions every supplicant speaks
# TLS octets per EAP-Request: with the EAP and TTLS headers the packet stays within the
# 1 020-octet EAP-Message budget that NASes and supplicants assume (FreeRADIUS: fragment_size 1024).
FRAGMENT_SIZE = 1000
# A TLS message from the peer, reassembled: EAP-TLS's carries the client's certificate chain;
# TTLS's and PEAP's are a ClientHello or a few hundred octets.
MAX_TLS_MESSAGE = {EAP_TLS: 64 * 1024, EAP_TTLS: 16 * 1024, EAP_PEAP: 16 * 1024}
MAX_TUNNELS = 4096  # a TLS session in flight holds tens of kilobytes
FULL_LOG_INTERVAL_SECONDS = 60.0  # radius.eap.tunnels_full, at most this often
# Round trips of one conversation, at most (hostapd's EAP_MAX_AUTH_ROUNDS): each may take up to
# EAP_TIMEOUT_SECONDS, as the Access-Challenge's Session-Timeout tells the NAS.
MAX_ROUNDS = 50
KEYING_LABELS = {EAP_TLS: b"client EAP encryption", EAP_TTLS: b"ttls keying material",
                 EAP_PEAP: b"client EAP encryption"}  # the MSK's


class TLSFlag(IntFlag):
    LENGTH = 0x80  # a 4-octet TLS Message Length follows
    MORE = 0x40  # more fragments follow
    START = 0x20


class AVPCode(IntEnum):  # the RADIUS attribute numbers, as RFC 5281 §10.4 reuses them
    USER_NAME = 1
    USER_PASSWORD = 2


class TunnelError(Exception):
    """The conversation cannot go on: the peer gets EAP-Failure. The text says why, for the log."""


@dataclass(frozen=True, slots=True)
class TLSFragment:
    flags: int
    total: int | None  # the whole message's length, when the LENGTH flag says it is given
    data: bytes


def decode_tls_payload(data: bytes) -> TLSFragment:
    """An EAP-TTLS payload (after the Type octet): Flags, [TLS Message Length], TLS Data."""
    if not data:
        raise TunnelError("no flags octet")
    flags = data[0]
    if flags & TLSFlag.LENGTH:
        if len(data) < 5:
            raise TunnelError("the length flag without a length")
        return TLSFragment(flags, int.from_bytes(data[1:5], "big"), data[5:])
    return TLSFragment(flags, None, data[1:])


def tunnel_request(method: int, identifier: int, flags: int = 0, data: bytes = b"",
                   total: int | None = None) -> EAPPacket:
    if total is not None:
        flags |= TLSFlag.LENGTH
    head = bytes((flags | TUNNEL_VERSION,)) + (total.to_bytes(4, "big") if total is not None else b"")
    return EAPPacket(EAPCode.REQUEST, identifier, method, head + data)


# The mandatory AVPs that name another inner method than PAP (RFC 5281 §11.2: CHAP, MS-CHAP,
# MS-CHAP-V2, EAP), by (vendor, code): a station set up for one of them is told apart in the log
# from one that sends garbage.
_INNER_METHODS = {(0, 60): "CHAP", (0, 3): "CHAP", (311, 11): "MS-CHAP or MS-CHAP-V2", (311, 1): "MS-CHAP",
                  (311, 25): "MS-CHAP-V2", (0, 79): "EAP"}


def decode_avps(data: bytes, known: frozenset[int] = frozenset()) -> dict[int, bytes]:
    """The AVPs of vendor 0 by code (the first of each), RFC 5281 §10.1: Code(4) Flags(1)
    Length(3) [Vendor-ID(4)] Data, padded to four octets. An AVP outside ``known`` (vendor AVPs
    included) is skipped, unless its M bit says it must be understood (RFC 5281 §10.2)."""
    avps: dict[int, bytes] = {}
    at = 0
    while at < len(data):
        if len(data) - at < 8:
            raise TunnelError("a truncated AVP header")
        code = int.from_bytes(data[at:at + 4], "big")
        flags, length = data[at + 4], int.from_bytes(data[at + 5:at + 8], "big")
        header = 12 if flags & 0x80 else 8
        if length < header or at + length > len(data):
            raise TunnelError("an AVP length that does not fit its message")
        if not flags & 0x80 and code in known:
            avps.setdefault(code, data[at + header:at + length])
        elif flags & 0x40:
            vendor = int.from_bytes(data[at + 8:at + 12], "big") if flags & 0x80 else 0
            method = _INNER_METHODS.get((vendor, code))
            if method is not None:
                raise TunnelError(f"{method} inside EAP-TTLS (only PAP is offered there)")
            of_vendor = f", vendor {vendor}" if vendor else ""
            raise TunnelError(f"a mandatory AVP ispd does not know (code {code}{of_vendor})")
        at += length + (-length % 4)
    return avps


def encode_avp(code: int, value: bytes, mandatory: bool = True) -> bytes:
    length = 8 + len(value)
    return (code.to_bytes(4, "big") + bytes((0x40 if mandatory else 0,)) + length.to_bytes(3, "big") + value
            + bytes(-length % 4))


def server_context(certificate: Path, private_key: Path, client_ca: Path | None = None) -> SSL.Context:
    """The TLS server's context, asking for a client certificate from ``client_ca`` when given
    (EAP-TLS); raises OSError or SSL.Error with a reason for the operator."""
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_max_proto_version(SSL.TLS1_2_VERSION)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.set_options(SSL.OP_NO_TICKET)
    for path in (certificate, private_key):
        path.stat()  # a missing file as OSError with its name, not as OpenSSL's bare "no such file"
    context.use_certificate_chain_file(str(certificate))
    # Read here, not by OpenSSL: for an encrypted key OpenSSL would ask for the passphrase on
    # the terminal (and a password callback is a cffi callback, which MemoryDenyWriteExecute
    # forbids).
    try:
        key = serialization.load_pem_private_key(private_key.read_bytes(), password=None)
    except TypeError:
        raise SSL.Error([("", "", f"{private_key}: the private key is encrypted; give it without a passphrase")]) \
            from None
    except ValueError as exc:
        raise SSL.Error([("", "", f"{private_key}: not a PEM private key ({exc})")]) from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise SSL.Error([("", "", f"{private_key}: a kind of key a TLS server cannot use")])
    context.use_privatekey(key)
    context.check_privatekey()
    if client_ca is not None:
        client_ca.stat()
        try:
            context.load_verify_locations(str(client_ca))
            context.load_client_ca(str(client_ca).encode())
        except SSL.Error as exc:  # named as such: the certificate and key were loaded above
            raise ClientCAError(f"client_ca {client_ca}: {_ssl_reason(exc)}") from None
        # OpenSSL's own chain check, no Python callback (which would need W+X memory for cffi)
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
    return context


def tunnel_server(certificate: Path, private_key: Path, client_ca: Path | None = None) -> TunnelServer:
    """A ``TunnelServer`` from the PEM files of ``[radius.eap]``."""
    client_context = server_context(certificate, private_key, client_ca) if client_ca is not None else None
    return TunnelServer(server_context(certificate, private_key), client_context)


@dataclass(frozen=True, slots=True)
class InnerPAP:
    """What the peer sent through a TTLS tunnel."""

    username: str
    password: bytes


@dataclass(slots=True)
class Tunnel:
    method: int  # EAP_TTLS or EAP_PEAP
    outer_username: str
    identifier: int  # of the last EAP-Request sent
    expires_at: float
    connection: SSL.Connection
    incoming: bytearray = field(default_factory=bytearray)
    expected: int | None = None  # the announced length of the message being reassembled
    outgoing: bytes = b""  # TLS octets not sent yet
    rounds: int = 0  # EAP-Requests sent
    # "start" until the peer sends TLS (a Nak is welcome only before), "handshake", then PEAP's
    # inner conversation, kept by the engine: where it is, whom it is with, its challenge
    phase: str = "start"
    inner_username: str = ""
    challenge: bytes = b""
    challenge_id: int = 0
    # TLS octets per EAP-Request: FRAGMENT_SIZE, less when the NAS's Framed-MTU is smaller
    fragment_size: int = FRAGMENT_SIZE
    # A response whose answer was dropped (a password check or an address claim that could not
    # be made then), with the step it gave: the NAS's copy of it is answered from that step, as
    # its TLS records were decrypted already and cannot be fed to the connection again.
    parked: tuple[bytes, TunnelStep] | None = None

    @property
    def msk(self) -> bytes:
        """The Master Session Key (64 octets) of an established tunnel: MS-MPPE-Recv-Key is
        its first half, MS-MPPE-Send-Key its second (RFC 5216 §2.3, RFC 5281 §8)."""
        return self.connection.export_keying_material(KEYING_LABELS[self.method], 64)


@dataclass(frozen=True, slots=True)
class TunnelStep:
    """The outcome of one EAP-Response: a request to send under a new State, or what the peer
    said inside the tunnel (TTLS: its AVPs as ``pap``; PEAP: an inner EAP packet as ``inner``)."""

    state: bytes = b""
    request: EAPPacket | None = None
    pap: InnerPAP | None = None
    inner: EAPPacket | None = None
    verified: bool = False  # EAP-TLS: the handshake, client certificate included, is done


class TunnelServer:
    """The TLS conversations under way, by State: EAP-TTLS and PEAP share ``context``, EAP-TLS
    has ``client_context`` (which asks for the client's certificate), when configured."""

    def __init__(self, context: SSL.Context, client_context: SSL.Context | None = None) -> None:
        self.context, self.client_context = context, client_context
        self._tunnels: dict[bytes, Tunnel] = {}
        # Conversations under way dropped to make room (a flood of starts): their stations'
        # next message finds no tunnel, as an expired one would; said in the log, not only so.
        self.evicted = 0
        self._not_logged = 0
        self._full_logged = LogThrottle(FULL_LOG_INTERVAL_SECONDS)

    def start(self, method: int, outer_username: str, identifier: int, now: float) -> TunnelStep:
        context = self.client_context if method == EAP_TLS else self.context
        if context is None:
            raise TunnelError("EAP-TLS without a client_ca")
        connection = SSL.Connection(context, None)
        connection.set_accept_state()
        tunnel = Tunnel(method, outer_username, identifier, now + EAP_TIMEOUT_SECONDS, connection)
        return TunnelStep(self._keep(tunnel, now), tunnel_request(method, identifier, TLSFlag.START))

    def take(self, state: bytes, now: float) -> Tunnel | None:
        tunnel = self._tunnels.pop(state, None)
        if tunnel is None or tunnel.expires_at <= now:
            return None
        return tunnel

    def step(self, tunnel: Tunnel, response: EAPPacket, now: float) -> TunnelStep:
        """Go on with ``tunnel`` (taken from its State) after the peer's ``response``."""
        if response.identifier != tunnel.identifier or response.type != tunnel.method:
            raise TunnelError("an EAP response that answers no request sent")
        fragment = decode_tls_payload(response.data)
        if tunnel.phase == "start":
            tunnel.phase = "handshake"
        if tunnel.outgoing:
            if fragment.data:
                raise TunnelError("TLS data while the server's message was still being sent")
            return self._send_next(tunnel, now)
        self._receive(tunnel, fragment)
        if fragment.flags & TLSFlag.MORE:
            return self._send(tunnel, now)  # an acknowledgement
        message, tunnel.incoming, tunnel.expected = bytes(tunnel.incoming), bytearray(), None
        if not message:
            if tunnel.method == EAP_TLS and self._established(tunnel):
                return TunnelStep(verified=True)  # the peer acknowledged the server's Finished
            if tunnel.method == EAP_PEAP and tunnel.phase == "handshake" and self._established(tunnel):
                # PEAP: the peer acknowledged the server's Finished; the server speaks first
                # inside the tunnel, with an Identity request (header-less, as PEAPv0 has it).
                tunnel.phase = "identity"
                return self.send_inner(tunnel, EAPPacket(EAPCode.REQUEST, 0, EAPType.IDENTITY), now)
            raise TunnelError("an empty response with nothing left to send")
        plaintext = self._feed(tunnel, message)
        if plaintext:
            if tunnel.method == EAP_TLS:
                raise TunnelError("application data in EAP-TLS")
            if tunnel.method == EAP_TTLS:
                return TunnelStep(pap=inner_pap(plaintext))
            return TunnelStep(inner=unwrap_peap(plaintext, tunnel.identifier))
        tunnel.outgoing = self._drain(tunnel.connection)
        if not tunnel.outgoing:
            raise TunnelError("the TLS server has nothing to answer")
        return self._send_next(tunnel, now, first=True)

    def send_inner(self, tunnel: Tunnel, packet: EAPPacket, now: float) -> TunnelStep:
        """Send an EAP packet through a PEAP tunnel (its header left out, but for EAP-TLV)."""
        try:
            tunnel.connection.send(wrap_peap(packet))
        except SSL.Error as exc:
            raise TunnelError(f"TLS: {_ssl_reason(exc)}") from None
        tunnel.outgoing = self._drain(tunnel.connection)
        return self._send_next(tunnel, now, first=True)

    @staticmethod
    def _established(tunnel: Tunnel) -> bool:
        return bool(tunnel.connection.get_finished())

    def _receive(self, tunnel: Tunnel, fragment: TLSFragment) -> None:
        if fragment.total is not None:
            if tunnel.incoming or tunnel.expected is not None:
                if fragment.total != tunnel.expected:
                    raise TunnelError("a TLS message length that changed between fragments")
            elif fragment.total > MAX_TLS_MESSAGE[tunnel.method]:
                raise TunnelError(f"a TLS message of {fragment.total} octets (at most "
                                  f"{MAX_TLS_MESSAGE[tunnel.method]})")
            tunnel.expected = fragment.total
        elif fragment.flags & TLSFlag.MORE and tunnel.expected is None:
            raise TunnelError("a first fragment without the message's length")
        tunnel.incoming += fragment.data
        if len(tunnel.incoming) > (tunnel.expected if tunnel.expected is not None else MAX_TLS_MESSAGE[tunnel.method]):
            raise TunnelError("more TLS data than the message's length")
        complete = not fragment.flags & TLSFlag.MORE
        if complete and tunnel.expected is not None and len(tunnel.incoming) != tunnel.expected:
            raise TunnelError("a TLS message shorter than its length")

    @staticmethod
    def _feed(tunnel: Tunnel, message: bytes) -> bytes:
        """Hand the peer's TLS records to the server; what they carried as application data."""
        connection = tunnel.connection
        try:
            connection.bio_write(message)
            try:
                connection.do_handshake()  # established already: returns at once
            except SSL.WantReadError:
                return b""
            plaintext = bytearray()
            with contextlib.suppress(SSL.WantReadError):
                while True:
                    plaintext += connection.recv(16384)
        except SSL.ZeroReturnError:
            raise TunnelError("the peer closed the TLS session") from None
        except SSL.Error as exc:
            raise TunnelError(f"TLS: {_ssl_reason(exc)}") from None
        return bytes(plaintext)

    @staticmethod
    def _drain(connection: SSL.Connection) -> bytes:
        out = bytearray()
        with contextlib.suppress(SSL.WantReadError):
            while chunk := connection.bio_read(65536):
                out += chunk
        return bytes(out)

    def _send_next(self, tunnel: Tunnel, now: float, *, first: bool = False) -> TunnelStep:
        """The next fragment of what the TLS server wrote; the first of several says the
        message's length (RFC 5216 §2.1.5)."""
        size = tunnel.fragment_size
        total = len(tunnel.outgoing) if first and len(tunnel.outgoing) > size else None
        data, tunnel.outgoing = tunnel.outgoing[:size], tunnel.outgoing[size:]
        return self._send(tunnel, now, TLSFlag.MORE if tunnel.outgoing else 0, data, total)

    def _send(self, tunnel: Tunnel, now: float, flags: int = 0, data: bytes = b"",
              total: int | None = None) -> TunnelStep:
        tunnel.identifier = (tunnel.identifier + 1) & 0xFF
        return TunnelStep(self._keep(tunnel, now), tunnel_request(tunnel.method, tunnel.identifier, flags, data, total))

    def park(self, state: bytes, tunnel: Tunnel, response: bytes, step: TunnelStep, now: float) -> None:
        """Put ``tunnel`` back under ``state`` with the ``step`` that ``response`` (the EAP
        message, whole) gave: it must be answered again (it was dropped before any answer, and
        the NAS will send it again)."""
        tunnel.expires_at = now + EAP_TIMEOUT_SECONDS
        tunnel.parked = (response, step)
        self._tunnels[state] = tunnel

    def _keep(self, tunnel: Tunnel, now: float) -> bytes:
        """A new State for ``tunnel``, which waits at most EAP_TIMEOUT_SECONDS for the answer."""
        tunnel.rounds += 1
        if tunnel.rounds > MAX_ROUNDS:
            raise TunnelError(f"more than {MAX_ROUNDS} round trips")
        tunnel.expires_at = now + EAP_TIMEOUT_SECONDS
        tunnels = self._tunnels
        if len(tunnels) >= MAX_TUNNELS:
            self.expire(now)
            if len(tunnels) >= MAX_TUNNELS:  # a flood: the oldest make room
                oldest = list(itertools.islice(tunnels, MAX_TUNNELS // 10))
                for state in oldest:
                    del tunnels[state]
                self.evicted += len(oldest)
                self._not_logged += len(oldest)
                if self._full_logged.due("full", now):
                    log.warning("radius.eap.tunnels_full", limit=MAX_TUNNELS, dropped=self._not_logged)
                    self._not_logged = 0
        state = os.urandom(16)
        tunnels[state] = tunnel
        return state

    def expire(self, now: float) -> None:
        for state in [s for s, t in self._tunnels.items() if t.expires_at <= now]:
            del self._tunnels[state]

    def __len__(self) -> int:
        return len(self._tunnels)


def fragment_size_for(framed_mtu: int | None) -> int:
    """TLS octets per EAP-Request for a NAS that announced ``framed_mtu``, the largest EAP packet
    it can pass on (RFC 3579): the EAP and TLS headers (10 octets) left out. A value of 100
    or less is taken for a mistake (FreeRADIUS ignores those too)."""
    if framed_mtu is None or framed_mtu <= 100:
        return FRAGMENT_SIZE
    return min(FRAGMENT_SIZE, framed_mtu - 10)


def certificate_names(tunnel: Tunnel) -> list[str]:
    """The names the peer's (verified) certificate carries: its subject's common name, and its
    DNS and e-mail subjectAltNames."""
    peer = tunnel.connection.get_peer_certificate(as_cryptography=True)
    if peer is None:
        return []
    try:
        names = [str(a.value) for a in peer.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
        with contextlib.suppress(x509.ExtensionNotFound):
            alternatives = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names += alternatives.get_values_for_type(x509.DNSName) + alternatives.get_values_for_type(x509.RFC822Name)
    except ValueError:  # an extension OpenSSL let through and cryptography cannot read: no names
        return []
    return names


def inner_pap(plaintext: bytes) -> InnerPAP:
    """TTLS's phase 2: the User-Name and User-Password AVPs (the password padded with NULs)."""
    avps = decode_avps(plaintext, frozenset((AVPCode.USER_NAME, AVPCode.USER_PASSWORD)))
    name, password = avps.get(AVPCode.USER_NAME), avps.get(AVPCode.USER_PASSWORD)
    if name is None or password is None:
        raise TunnelError("no User-Name and User-Password inside the tunnel (only PAP is offered there)")
    return InnerPAP(name.decode("utf-8", "replace"), password.rstrip(b"\0"))


def result_tlv(data: bytes) -> int | None:
    """The status of the Result TLV (type 3: 1 success, 2 failure) among an EAP-TLV's TLVs, each
    Type(2: M and R bits, then the type) Length(2) Value."""
    at = 0
    while at + 4 <= len(data):
        kind, length = int.from_bytes(data[at:at + 2], "big") & 0x3FFF, int.from_bytes(data[at + 2:at + 4], "big")
        if kind == 3 and length == 2 and at + 6 <= len(data):
            return int.from_bytes(data[at + 4:at + 6], "big")
        at += 4 + length
    return None


def wrap_peap(packet: EAPPacket) -> bytes:
    """PEAPv0 sends inner EAP packets without their code, identifier and length, but for
    EAP-TLV, which keeps its header (as Windows and wpa_supplicant expect)."""
    whole = encode_eap(packet)
    return whole if packet.type == EAP_TLV else whole[4:]


def unwrap_peap(plaintext: bytes, identifier: int) -> EAPPacket:
    """An inner EAP response from PEAPv0: a whole EAP-TLV packet, or a header-less Type + Data."""
    if len(plaintext) >= 5 and plaintext[0] == EAPCode.RESPONSE and plaintext[4] == EAP_TLV:
        packet = decode_eap(plaintext)
        if packet is None:
            raise TunnelError("a malformed EAP-TLV packet inside the tunnel")
        return packet
    return EAPPacket(EAPCode.RESPONSE, identifier, plaintext[0], plaintext[1:])


class ClientCAError(SSL.Error):
    """``client_ca`` (EAP-TLS) could not be loaded; the message names it."""


def tls_context_error(exc: OSError | SSL.Error) -> str:
    """What went wrong loading the certificate, key or client CA, for the operator."""
    if isinstance(exc, OSError):
        return f"{exc.filename or 'a file'}: {exc.strerror or exc}"
    if isinstance(exc, ClientCAError):
        return str(exc)
    return f"the certificate or private key: {_ssl_reason(exc)}"


def _ssl_reason(exc: SSL.Error) -> str:
    details = exc.args[0] if exc.args else None
    if isinstance(details, list) and details and isinstance(details[0], tuple) and len(details[0]) >= 3:
        return str(details[0][2])
    return str(exc) or type(exc).__name__
