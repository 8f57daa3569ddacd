"""EAP-TTLS and PEAP's tunnel (ispd.radius.eaptls): the payload codec, AVPs, fragmentation in
both directions, and a whole TTLS conversation with Python's TLS client on memory buffers."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from ispd.radius.eap import EAPCode, EAPPacket, EAPType, decode_eap, encode_eap
from ispd.radius.eaptls import (
    EAP_PEAP,
    EAP_TLS,
    EAP_TLV,
    EAP_TTLS,
    FRAGMENT_SIZE,
    MAX_ROUNDS,
    MAX_TLS_MESSAGE,
    MAX_TUNNELS,
    AVPCode,
    TLSFlag,
    Tunnel,
    TunnelError,
    TunnelServer,
    TunnelStep,
    certificate_names,
    decode_avps,
    decode_tls_payload,
    encode_avp,
    fragment_size_for,
    inner_pap,
    server_context,
    tls_context_error,
    tunnel_request,
    tunnel_server,
    unwrap_peap,
    wrap_peap,
)
from tests.lab.certs import Certificates
from tests.lab.eapstation import TLSStation, client_hello

NOW = 1_000_000.0


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A leaf under an intermediate CA, as public CAs issue them: the server's first flight is
    longer than one fragment."""
    directory = tmp_path_factory.mktemp("tls")
    root = trustme.CA()
    issued = root.create_child_ca().issue_cert("radius.isp.test")
    certificates = Certificates(directory / "ca.pem", directory / "chain.pem", directory / "key.pem")
    root.cert_pem.write_to_path(str(certificates.ca))
    for index, pem in enumerate(issued.cert_chain_pems):
        pem.write_to_path(str(certificates.certificate), append=index > 0)
    issued.private_key_pem.write_to_path(str(certificates.private_key))
    return certificates


@pytest.fixture
def server(certificates: Certificates) -> TunnelServer:
    return TunnelServer(server_context(certificates.certificate, certificates.private_key))


class Station(TLSStation):
    """The station talking to a ``TunnelServer`` directly; ``step`` is the server's last answer,
    ``tunnel`` the tunnel it last took."""

    def __init__(self, server: TunnelServer, certificates: Certificates, method: int = EAP_TTLS,
                 fragment: int = 1400, client: trustme.LeafCert | None = None) -> None:
        client_pem = None
        if client is not None:
            client_pem = certificates.ca.with_name("client.pem")
            client.private_key_and_cert_chain_pem.write_to_path(str(client_pem))
        self.server = server
        self.step = server.start(method, "anonymous", 1, NOW)
        self.tunnel: Tunnel | None = None
        super().__init__(certificates.ca, method, self.step.request, fragment=fragment, client_pem=client_pem)

    def exchange(self, response: EAPPacket) -> EAPPacket | None:
        self.tunnel = self.server.take(self.step.state, NOW)
        assert self.tunnel is not None
        self.step = self.server.step(self.tunnel, response, NOW)
        return self.step.request


def exchange(server: TunnelServer, state: bytes, identifier: int, payload: bytes,
             method: int = EAP_TTLS) -> TunnelStep:
    tunnel = server.take(state, NOW)
    assert tunnel is not None
    return server.step(tunnel, EAPPacket(EAPCode.RESPONSE, identifier, method, payload), NOW)


def run_ttls(server: TunnelServer, certificates: Certificates, avps: bytes, fragment: int = 1400) -> Station:
    station = Station(server, certificates, EAP_TTLS, fragment)
    assert station.step.request is not None and station.step.request.data[0] & TLSFlag.START
    station.handshake()
    station.send_inner(avps)
    return station


def test_the_payload_codec() -> None:
    assert decode_tls_payload(b"\x80\x00\x00\x00\x05hello").total == 5
    assert decode_tls_payload(b"\x00abc").data == b"abc"
    request = tunnel_request(EAP_TTLS, 9, TLSFlag.MORE, b"xyz", total=1000)
    assert request.data == bytes((0xC0,)) + (1000).to_bytes(4, "big") + b"xyz"
    for bad in (b"", b"\x80\x00\x00"):
        with pytest.raises(TunnelError):
            decode_tls_payload(bad)


def test_avps_skip_what_is_unknown_unless_mandatory() -> None:
    vendor = (5).to_bytes(4, "big") + bytes((0x80,)) + (16).to_bytes(3, "big") + (311).to_bytes(4, "big") + b"junk"
    data = encode_avp(AVPCode.USER_NAME, b"alice") + vendor + encode_avp(AVPCode.USER_PASSWORD, b"pw" + bytes(14))
    known = frozenset((1, 2))
    assert decode_avps(data, known) == {1: b"alice", 2: b"pw" + bytes(14)}
    assert decode_avps(data + encode_avp(98, b"x", mandatory=False), known) == decode_avps(data, known)
    with pytest.raises(TunnelError, match="mandatory"):  # RFC 5281 §10.2: an M-bit AVP must be understood
        decode_avps(data + encode_avp(99, b"x"), known)
    for bad in (b"\x00" * 7, encode_avp(1, b"alice")[:-4], b"\x00\x00\x00\x01\x00\x00\x00\x04"):
        with pytest.raises(TunnelError):
            decode_avps(bad, known)


def test_another_inner_method_than_pap_is_named_in_the_error() -> None:
    # A station set up for TTLS with MS-CHAPv2, CHAP or EAP inside (wpa_supplicant's order: its
    # User-Name, then the method's mandatory AVPs): the log says so, not "code 11", which read as
    # RADIUS's Filter-Id when it is Microsoft's MS-CHAP-Challenge.
    user = encode_avp(AVPCode.USER_NAME, b"alice")
    ms_chap_challenge = (11).to_bytes(4, "big") + bytes((0xC0,)) + (28).to_bytes(3, "big") + (311).to_bytes(4, "big")
    for avps, method in ((ms_chap_challenge + bytes(16), "MS-CHAP-V2"), (encode_avp(60, bytes(16)), "CHAP"),
                         (encode_avp(79, b"\x02\x00\x00\x0a\x01alice"), "EAP")):
        with pytest.raises(TunnelError, match=f"{method}.* inside EAP-TTLS \\(only PAP"):
            inner_pap(user + avps)
    vendor_unknown = (7).to_bytes(4, "big") + bytes((0xC0,)) + (12).to_bytes(3, "big") + (9).to_bytes(4, "big")
    with pytest.raises(TunnelError, match=r"code 7, vendor 9"):
        decode_avps(vendor_unknown, frozenset((1, 2)))


def test_peap_packs_inner_packets_without_their_header_but_tlv() -> None:
    identity = EAPPacket(EAPCode.REQUEST, 7, EAPType.IDENTITY)
    assert wrap_peap(identity) == b"\x01"
    result = EAPPacket(EAPCode.REQUEST, 8, EAP_TLV, b"\x80\x03\x00\x02\x00\x01")
    assert decode_eap(wrap_peap(result)) == result
    assert unwrap_peap(b"\x01carol", 9) == EAPPacket(EAPCode.RESPONSE, 9, EAPType.IDENTITY, b"carol")
    whole = encode_eap(EAPPacket(EAPCode.RESPONSE, 9, EAP_TLV, b"\x80\x03\x00\x02\x00\x01"))
    assert unwrap_peap(whole, 9).data == b"\x80\x03\x00\x02\x00\x01"


@pytest.mark.parametrize("fragment", [1400, 300])
def test_a_whole_ttls_conversation_fragmented_both_ways(server: TunnelServer, certificates: Certificates,
                                                         fragment: int) -> None:
    avps = encode_avp(AVPCode.USER_NAME, b"alice") + encode_avp(AVPCode.USER_PASSWORD, b"s3cret" + bytes(10))
    station = run_ttls(server, certificates, avps, fragment)
    assert station.step.pap is not None
    assert (station.step.pap.username, station.step.pap.password) == ("alice", b"s3cret")
    assert station.fragmented >= 1  # the server's certificate chain took two requests or more
    assert len(server) == 0  # the finished tunnel is no longer kept


def test_the_msk_is_the_tls_exporter_with_each_methods_label(server: TunnelServer,
                                                              certificates: Certificates) -> None:
    station = run_ttls(server, certificates, encode_avp(1, b"a") + encode_avp(2, b"b"))
    assert station.tunnel is not None
    assert station.tunnel.msk == station.tunnel.connection.export_keying_material(b"ttls keying material", 64)
    peap = Station(server, certificates, EAP_PEAP)
    peap.handshake()
    assert peap.tunnel is not None
    assert peap.tunnel.msk == peap.tunnel.connection.export_keying_material(b"client EAP encryption", 64)


def test_peap_speaks_first_inside_the_tunnel(server: TunnelServer, certificates: Certificates) -> None:
    station = Station(server, certificates, EAP_PEAP)
    station.handshake()
    station.respond(b"\x00")  # the peer acknowledges the server's Finished
    assert station.read_inner() == b"\x01"  # a header-less EAP-Request/Identity
    station.send_inner(b"\x01carol")
    step = station.step
    assert step.inner is not None
    assert (step.inner.type, step.inner.data) == (EAPType.IDENTITY, b"carol")
    assert step.request is None


def test_eap_tls_verifies_the_client_certificate(certificates: Certificates) -> None:
    clients = trustme.CA()
    clients.cert_pem.write_to_path(str(certificates.ca.with_name("clients-ca.pem")))
    server = tunnel_server(certificates.certificate, certificates.private_key, certificates.ca.with_name("clients-ca.pem"))
    leaf = clients.issue_cert("alice.devices.isp.test", "alice@isp.test", common_name="alice")
    station = Station(server, certificates, EAP_TLS, client=leaf)
    station.handshake()
    station.respond(b"\x00")  # the peer acknowledges the server's Finished
    step = station.step
    assert step.verified and step.request is None
    assert station.tunnel is not None
    assert sorted(certificate_names(station.tunnel)) == ["alice", "alice.devices.isp.test", "alice@isp.test"]
    assert station.tunnel.msk == station.tunnel.connection.export_keying_material(b"client EAP encryption", 64)
    for stranger in (None, trustme.CA().issue_cert("alice")):  # no certificate; one from another CA
        station = Station(server, certificates, EAP_TLS, client=stranger)
        with pytest.raises(TunnelError, match="TLS"):
            station.handshake()


def test_eap_tls_needs_a_client_ca(server: TunnelServer) -> None:
    with pytest.raises(TunnelError):
        server.start(EAP_TLS, "alice", 1, NOW)


def test_fragments_that_do_not_add_up_end_the_tunnel(server: TunnelServer) -> None:
    cases = [
        bytes((TLSFlag.MORE,)) + b"x" * 10,  # the first of several without the length
        bytes((TLSFlag.LENGTH,)) + (MAX_TLS_MESSAGE[EAP_TTLS] + 1).to_bytes(4, "big") + b"x",  # too long
        bytes((TLSFlag.LENGTH,)) + (100).to_bytes(4, "big") + b"x" * 10,  # shorter than said
        bytes((TLSFlag.LENGTH | TLSFlag.MORE,)) + (5).to_bytes(4, "big") + b"x" * 10,  # longer than said
        b"\x00",  # nothing at all, and nothing to send
        b"\x00" + b"\x16\x03\x01\x00\x05hello",  # not TLS a server can read
    ]
    for payload in cases:
        step = server.start(EAP_TTLS, "alice", 1, NOW)
        with pytest.raises(TunnelError):
            exchange(server, step.state, 1, payload)


def test_a_response_must_answer_the_last_request(server: TunnelServer, certificates: Certificates) -> None:
    hello = client_hello(certificates.ca)
    assert exchange(server, server.start(EAP_TTLS, "alice", 1, NOW).state, 1, hello).request is not None
    for identifier, method in ((2, EAP_TTLS), (1, EAP_PEAP)):  # another identifier; another method
        step = server.start(EAP_TTLS, "alice", 1, NOW)
        with pytest.raises(TunnelError, match="answers no request"):
            exchange(server, step.state, identifier, hello, method)


def test_each_round_trip_may_take_the_timeout_and_there_are_at_most_max_rounds(
        server: TunnelServer, certificates: Certificates) -> None:
    step = server.start(EAP_TTLS, "alice", 1, NOW)
    later = NOW + 25  # within a round's 30 s
    tunnel = server.take(step.state, later)
    assert tunnel is not None
    step = server.step(tunnel, EAPPacket(EAPCode.RESPONSE, 1, EAP_TTLS, client_hello(certificates.ca)), later)
    assert server.take(step.state, later + 25) is not None  # the next round has 30 s of its own
    tunnel.rounds = MAX_ROUNDS
    with pytest.raises(TunnelError, match="round trips"):
        server._send(tunnel, later)


def test_park_puts_a_tunnel_back_under_its_state_with_the_step_it_gave(server: TunnelServer) -> None:
    step = server.start(EAP_TTLS, "alice", 1, NOW)
    tunnel = server.take(step.state, NOW)
    assert tunnel is not None and server.take(step.state, NOW) is None
    server.park(step.state, tunnel, b"response", step, NOW + 5)
    assert server.take(step.state, NOW + 30) is tunnel and tunnel.parked == (b"response", step)


def test_the_fragment_size_follows_a_sensible_framed_mtu() -> None:
    assert fragment_size_for(None) == fragment_size_for(100) == fragment_size_for(5000) == FRAGMENT_SIZE
    assert fragment_size_for(300) == 290  # the EAP packet, headers included, within the MTU


def test_tunnels_expire_are_used_once_and_are_bounded(server: TunnelServer) -> None:
    step = server.start(EAP_TTLS, "alice", 1, NOW)
    assert server.take(step.state, NOW + 31) is None
    step = server.start(EAP_TTLS, "alice", 1, NOW)
    assert server.take(step.state, NOW) is not None
    assert server.take(step.state, NOW) is None
    for _ in range(MAX_TUNNELS + 5):
        server.start(EAP_TTLS, "flood", 1, NOW)
    assert len(server) <= MAX_TUNNELS


def test_a_flood_of_starts_that_pushes_out_conversations_under_way_is_said(server: TunnelServer,
                                                                           certificates: Certificates) -> None:
    """4 096 starts from one NAS (two requests each, seconds of work) dropped a station's tunnel
    well within its 30 s: its next message got EAP-Failure with "expired, or never begun", and
    nothing in the log said the tunnels were full. Now a warning (once a minute) says how many
    were dropped."""
    from structlog.testing import capture_logs

    step = server.start(EAP_TTLS, "alice", 1, NOW)
    with capture_logs() as logs:
        for _ in range(MAX_TUNNELS):
            server.start(EAP_TTLS, "flood", 1, NOW + 1)
        assert server.take(step.state, NOW + 2) is None  # alice's was the oldest
        for later in (20, 40, 62):  # a flood that goes on: another line a minute after the first
            for _ in range(MAX_TUNNELS):
                server.start(EAP_TTLS, "flood", 1, NOW + later)
    full = [e for e in logs if e["event"] == "radius.eap.tunnels_full"]
    assert [(e["log_level"], e["limit"]) for e in full] == [("warning", MAX_TUNNELS)] * 2
    assert full[0]["dropped"] == MAX_TUNNELS // 10
    assert full[1]["dropped"] > MAX_TUNNELS  # all those of the minute between
    assert server.evicted > full[0]["dropped"] + full[1]["dropped"]  # and more since, for the next line


@settings(max_examples=300, deadline=None)
@given(payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_random_payloads_end_in_a_request_or_a_tunnel_error(certificates: Certificates,
                                                            payloads: list[bytes]) -> None:
    server = TunnelServer(server_context(certificates.certificate, certificates.private_key))
    step = server.start(EAP_TTLS, "fuzz", 1, NOW)
    for payload in payloads:
        assert step.request is not None
        tunnel = server.take(step.state, NOW)
        assert tunnel is not None
        try:
            step = server.step(tunnel, EAPPacket(EAPCode.RESPONSE, step.request.identifier, EAP_TTLS, payload), NOW)
        except TunnelError:
            return
        if step.request is None:
            return


def test_a_missing_certificate_names_its_file(tmp_path: Path, certificates: Certificates) -> None:
    with pytest.raises(OSError, match=r"nope\.pem"):
        server_context(tmp_path / "nope.pem", certificates.private_key)


def test_an_encrypted_private_key_is_refused_not_prompted_for(tmp_path: Path, certificates: Certificates) -> None:
    key = serialization.load_pem_private_key(certificates.private_key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(SSL.Error) as raised:
        server_context(certificates.certificate, encrypted)
    assert "without a passphrase" in tls_context_error(raised.value)


def test_an_unusable_client_ca_is_named_as_such(tmp_path: Path, certificates: Certificates) -> None:
    """From a bug hunt: a client_ca that is no PEM certificate (the key given by mistake) was
    reported as "the certificate or private key: no certificate or crl found", at check-config and
    at a reload, sending the operator to the server's certificate and key, which were fine."""
    with pytest.raises(SSL.Error) as raised:
        server_context(certificates.certificate, certificates.private_key, certificates.private_key)
    message = tls_context_error(raised.value)
    assert message.startswith(f"client_ca {certificates.private_key}: "), message
    assert "certificate or private key" not in message
