"""The Wi-Fi EAP methods end to end: ispd as a process with a certificate and a client CA in
[radius.eap], and wpa_supplicant's eapol_test as station and access point doing EAP-TTLS/PAP,
PEAP/MSCHAPv2 and EAP-TLS, checking ispd's certificate against the test CA and the MPPE keys
against its own."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from ispd.radius.codec import Attr, Code, decode, encode_attributes, encode_request
from tests.lab.certs import Certificates, issue
from tests.lab.eapol import eapol_test, require_eapol_test
from tests.lab.ports import free_udp_port
from tests.lab.process import ISPD, IspdProcess, base_config, eventually
from tests.lab.radclient import radtest

SECRET = "testing123"


class Wifi:
    def __init__(self, ispd: IspdProcess, certificates: Certificates, clients: trustme.CA, workdir: Path) -> None:
        self.ispd, self.certificates, self.clients, self.workdir = ispd, certificates, clients, workdir
        self.auth = ispd.config["radius"]["listen_auth"][0]

    def tls(self, identity: str, certificate_names: tuple[str, ...], issuer: trustme.CA | None = None) -> Any:
        """EAP-TLS with a client certificate for ``certificate_names`` (the first its CN)."""
        leaf = (issuer or self.clients).issue_cert(*certificate_names, common_name=certificate_names[0])
        cert, key = self.workdir / f"{identity}-{len(certificate_names)}.crt", self.workdir / f"{identity}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return eapol_test(self.auth, SECRET, method="TLS", identity=identity, ca_cert=self.certificates.ca,
                          client_cert=cert, private_key=key)

    def ttls(self, identity: str, password: str, **options: Any) -> Any:
        return eapol_test(self.auth, SECRET, method="TTLS", identity=identity, password=password,
                          ca_cert=self.certificates.ca, phase2="auth=PAP", **options)

    def peap(self, identity: str, password: str, **options: Any) -> Any:
        return eapol_test(self.auth, SECRET, method="PEAP", identity=identity, password=password,
                          ca_cert=self.certificates.ca, phase2="auth=MSCHAPV2", **options)


def eap_config(workdir: Path, certificates: Certificates, client_ca: Path | None = None,
               **eap: Any) -> dict[str, Any]:
    section = {
        "enabled": True, "listen_auth": [f"127.0.0.1:{free_udp_port()}"],
        "listen_acct": [f"127.0.0.1:{free_udp_port()}"], "reject_delay_seconds": 0,
        "client": [{"name": "ap", "address": "127.0.0.0/8", "secret": SECRET, "kind": "mikrotik"}],
        "eap": {"certificate": str(certificates.certificate), "private_key": str(certificates.private_key), **eap},
    }
    if client_ca is not None:
        section["eap"]["client_ca"] = str(client_ca)
    return base_config(workdir, radius=section)


@pytest.fixture(scope="module")
def wifi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wifi]:
    require_eapol_test()
    workdir = tmp_path_factory.mktemp("eap")
    certificates = issue(workdir / "tls", "radius.isp.test")
    clients = trustme.CA()  # the CA of the subscribers' devices, for EAP-TLS
    clients.cert_pem.write_to_path(str(workdir / "clients-ca.pem"))
    with IspdProcess(workdir, eap_config(workdir, certificates, workdir / "clients-ca.pem")) as ispd:
        ispd.start()
        ispd.cli("plan", "add", "home", "--download-kbps", "100000", "--upload-kbps", "20000",
                 "--credential-policy", "nt-hash")
        ispd.cli("plan", "add", "secure")  # verifier only: TTLS/PAP works, PEAP's MS-CHAPv2 cannot
        ispd.cli("subscriber", "add", "alice", "--plan", "home", "--password-stdin", input="alice-pw\n")
        ispd.cli("subscriber", "add", "carol", "--plan", "secure", "--password-stdin", input="carol-pw\n")
        ispd.cli("subscriber", "add", "dave", "--plan", "home", "--password-stdin", input="dave-pw\n")
        service = Wifi(ispd, certificates, clients, workdir)
        eventually(lambda: radtest("alice", "alice-pw", service.auth, SECRET).code == "Access-Accept", timeout=10)
        yield service


def test_ttls_with_pap_inside_gets_the_plan_and_keys_the_station_derived(wifi: Wifi) -> None:
    result = wifi.ttls("alice", "alice-pw")
    assert result.success, result.output[-3000:]
    assert result.mppe_keys_ok and result.keys_match, result.output[-3000:]
    assert result.methods == ["MD5", "TTLS"]  # MD5 offered first, the station asked for TTLS (Nak)
    assert result.accept["User-Name"] == ["alice"]
    assert result.accept["Class"] == ["697370643a31"]  # "ispd:1": accounting finds the subscriber
    rate_limit = bytes.fromhex(next(v for v in result.accept["Vendor-Specific"] if v.startswith("00003a8c08")))
    assert rate_limit.endswith(b"20000k/100000k")  # Mikrotik-Rate-Limit, vendor 14988 type 8


def test_ttls_keeps_the_real_login_inside_and_works_with_scrypt_verifiers(wifi: Wifi) -> None:
    result = wifi.ttls("carol", "carol-pw", anonymous_identity="anonymous@isp.test")
    assert result.success and result.mppe_keys_ok, result.output[-3000:]
    assert result.accept["User-Name"] == ["carol"]  # the inner identity, for the NAS's accounting


def test_ttls_rejects_a_wrong_password_and_an_unknown_login(wifi: Wifi) -> None:
    for identity, password in (("alice", "wrong"), ("mallory", "alice-pw")):
        result = wifi.ttls(identity, password)
        assert not result.success, identity
        assert "Access-Reject" in result.output
    reasons = {e["reason"] for e in wifi.ispd.log_events("radius.access.rejected") if e["method"] == "eap-ttls"}
    assert {"wrong_password", "unknown_user"} <= reasons


def test_peap_with_mschapv2_inside(wifi: Wifi) -> None:
    result = wifi.peap("dave", "dave-pw", anonymous_identity="anonymous")
    assert result.success, result.output[-3000:]
    assert result.mppe_keys_ok and result.keys_match, result.output[-3000:]
    assert result.methods == ["MD5", "PEAP"]
    assert result.accept["User-Name"] == ["dave"]
    assert "EAP-PEAP: using label 'client EAP encryption' in key derivation" in result.output


def test_peap_rejects_a_wrong_password_and_a_verifier_only_subscriber(wifi: Wifi) -> None:
    assert not wifi.peap("dave", "wrong").success
    assert not wifi.peap("carol", "carol-pw").success  # scrypt cannot answer MS-CHAPv2
    events = [e for e in wifi.ispd.log_events("radius.access.rejected") if e["method"] == "peap"]
    assert {"wrong_password", "no_password_form"} <= {e["reason"] for e in events}


def test_eap_tls_logs_in_the_subscriber_its_certificate_names(wifi: Wifi) -> None:
    result = wifi.tls("dave", ("dave",))
    assert result.success and result.mppe_keys_ok and result.keys_match, result.output[-3000:]
    assert result.methods == ["MD5", "TLS"]
    assert result.accept["User-Name"] == ["dave"]
    assert wifi.tls("alice", ("alice.devices.isp.test", "alice")).success  # a subjectAltName names it


def test_eap_tls_refuses_another_subscribers_certificate_and_a_foreign_ca(wifi: Wifi) -> None:
    assert not wifi.tls("alice", ("dave",)).success  # dave's certificate, presented as alice
    assert not wifi.tls("alice", ("alice",), issuer=trustme.CA()).success  # not from the clients' CA
    assert not wifi.tls("mallory", ("mallory",)).success  # a good certificate, no such subscriber
    # the first of these rejects is logged with why (the next of the same reason within a minute
    # only counted)
    details = [e.get("detail") or "" for e in wifi.ispd.log_events("radius.access.rejected")
               if e["method"] == "eap-tls"]
    assert any("does not name 'alice'" in d for d in details)


def test_a_station_that_distrusts_the_certificate_gets_nowhere(wifi: Wifi, tmp_path: Path) -> None:
    stranger = issue(tmp_path, "other.test")  # another CA: the station must refuse ispd's certificate
    result = eapol_test(wifi.auth, SECRET, method="TTLS", identity="alice", password="alice-pw",
                        ca_cert=stranger.ca, phase2="auth=PAP")
    assert not result.success
    assert "certificate verify failed" in result.output or "unable to get local issuer" in result.output


def test_metrics_count_the_eap_methods(wifi: Wifi) -> None:
    wifi.ttls("alice", "alice-pw")
    assert (wifi.ispd.metric_value("ispd_radius_auth_total", {"method": "eap-ttls", "result": "accept"}) or 0) >= 1
    assert (wifi.ispd.metric_value("ispd_radius_auth_total", {"method": "peap", "result": "challenge"}) or 0) >= 1
    assert wifi.ispd.metric_value("ispd_radius_eap_conversations") == 0  # every tunnel finished


def test_garbage_inside_a_tunnel_ends_that_conversation_not_the_server(wifi: Wifi) -> None:
    """An EAP-Response/TTLS with junk for TLS records under a live State: EAP-Failure, and the
    next station still authenticates."""
    host, port = wifi.auth.rsplit(":", 1)
    failed_before = wifi.ispd.metric_value("ispd_radius_rejects_total", {"reason": "eap_failed"}) or 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)

        def exchange(eap: bytes, state: bytes | None) -> Any:
            attributes = [(Attr.USER_NAME, b"alice"), (Attr.EAP_MESSAGE, eap)]
            if state is not None:
                attributes.append((Attr.STATE, state))
            sock.sendto(encode_request(Code.ACCESS_REQUEST, os.urandom(1)[0], encode_attributes(attributes),
                                       SECRET.encode()), (host, int(port)))
            return decode(sock.recv(4096))

        challenge = exchange(b"\x02\x01\x00\x0a\x01alice", None)  # Identity
        assert challenge.code == Code.ACCESS_CHALLENGE
        nak = exchange(bytes((2, challenge.get(Attr.EAP_MESSAGE)[1], 0, 6, 3, 21)), challenge.get(Attr.STATE))
        assert nak.code == Code.ACCESS_CHALLENGE  # TTLS started
        start = nak.get(Attr.EAP_MESSAGE)
        assert start[4] == 21 and start[5] & 0x20
        junk = bytes((2, start[1], 0, 5 + 1 + 40, 21, 0)) + b"\x16\x03\x01\x00\x23" + os.urandom(35)
        failure = exchange(junk, nak.get(Attr.STATE))
        assert failure.code == Code.ACCESS_REJECT
        assert failure.get(Attr.EAP_MESSAGE)[0] == 4  # EAP-Failure
    assert wifi.ispd.metric_value("ispd_radius_rejects_total", {"reason": "eap_failed"}) == failed_before + 1
    assert wifi.ttls("alice", "alice-pw").success


def test_check_config_and_start_refuse_a_missing_certificate(tmp_path: Path) -> None:
    certificates = issue(tmp_path / "tls", "radius.isp.test")
    missing = Certificates(certificates.ca, tmp_path / "nope.pem", certificates.private_key)
    with IspdProcess(tmp_path, eap_config(tmp_path, missing)) as ispd:
        ispd.write_config()
        checked = subprocess.run([ISPD, "check-config", "-c", str(ispd.config_path)], capture_output=True,
                                 text=True, timeout=60)
        assert checked.returncode != 0
        assert "nope.pem" in checked.stdout + checked.stderr


def test_sighup_reads_a_renewed_certificate(tmp_path: Path) -> None:
    require_eapol_test()
    old, new = issue(tmp_path / "old", "radius.isp.test"), issue(tmp_path / "new", "radius.isp.test")
    with IspdProcess(tmp_path, eap_config(tmp_path, old)) as ispd:
        ispd.start()
        ispd.cli("subscriber", "add", "alice", "--password-stdin", input="alice-pw\n")
        auth = ispd.config["radius"]["listen_auth"][0]

        def login(ca: Path) -> bool:
            return eapol_test(auth, SECRET, method="TTLS", identity="alice", password="alice-pw", ca_cert=ca,
                              phase2="auth=PAP").success

        assert eventually(lambda: login(old.ca), timeout=10)
        ispd.config["radius"]["eap"]["certificate"] = str(new.certificate)
        ispd.config["radius"]["eap"]["private_key"] = str(new.private_key)
        ispd.write_config()
        ispd.reload()
        assert login(new.ca)
        assert not login(old.ca)
