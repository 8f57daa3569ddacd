"""Warnings of server certificates whose dates are wrong, and their expiry metric."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ispd.certificates import (
    CertificateExpiryCollector,
    CertificateValidity,
    certificate_problems,
    certificate_validity,
)
from ispd.config import Config
from tests.lab.certs import issue

ISPD = str(Path(sys.executable).with_name("ispd"))
DAY = 86400.0


def test_a_certificate_is_warned_of_when_expired_not_yet_valid_or_expiring_soon() -> None:
    validity = CertificateValidity("/etc/ispd/tls.pem", 1000 * DAY, 2000 * DAY)
    assert validity.problem(1500 * DAY) is None
    assert validity.problem(2000 * DAY) == "the certificate /etc/ispd/tls.pem expired on 1975-06-24 00:00 UTC"
    assert validity.problem(999 * DAY) == ("the certificate /etc/ispd/tls.pem is not valid before 1972-09-27 "
                                           "00:00 UTC (is the clock right?)")
    assert validity.problem(1990 * DAY) == ("the certificate /etc/ispd/tls.pem expires on 1975-06-24 00:00 UTC, "
                                            "in 10.0 days")


def test_the_dates_are_read_from_the_files_the_config_names(tmp_path: Path) -> None:
    soon = datetime.now(UTC) + timedelta(days=3)
    mail = issue(tmp_path / "mail", "mx.isp.example", not_after=soon)
    dot = issue(tmp_path / "dot", "dns.isp.example")
    config = Config.model_validate({
        "mail": {"enabled": True, "domains": ["isp.example"], "certificate": str(mail.certificate),
                 "private_key": str(mail.private_key)},
        "dns": {"enabled": True, "dot": {"listen": ["127.0.0.1:8853"], "certificate": str(dot.certificate),
                                         "private_key": str(dot.private_key)},
                "doh": {"listen": ["127.0.0.1:8443"], "certificate": str(dot.certificate),
                        "private_key": str(dot.private_key)}},
    })
    assert config.certificates() == [("dns.dot", dot.certificate), ("mail", mail.certificate)]  # each file once
    validity = certificate_validity(mail.certificate)
    assert validity is not None and abs(validity.not_after - soon.replace(microsecond=0).timestamp()) < 1
    [(key, path, problem)] = certificate_problems(config.certificates(), time.time())
    assert (key, path) == ("mail", mail.certificate) and "expires on" in problem
    assert certificate_validity(tmp_path / "missing.pem") is None  # (loading it says why)

    loaded = [(key, certificate_validity(path)) for key, path in config.certificates()]
    registry = CollectorRegistry()
    registry.register(CertificateExpiryCollector(lambda: [(key, v) for key, v in loaded if v is not None]))

    def expiry(service: str, path: Path) -> float | None:
        return registry.get_sample_value("ispd_tls_certificate_expiry_timestamp_seconds",
                                         {"service": service, "file": str(path)})

    assert expiry("mail", mail.certificate) == validity.not_after
    assert expiry("dns.dot", dot.certificate) is not None
    # A renewal replaces the file: the metric speaks of what the service loaded (the daemon's
    # supervisor reads the file again when the service reloads), not of the file on disk.
    renewed = issue(tmp_path / "renewed", "mx.isp.example", not_after=soon + timedelta(days=90))
    os.replace(renewed.certificate, mail.certificate)
    assert expiry("mail", mail.certificate) == validity.not_after


def test_check_config_warns_of_a_certificate_that_expired(tmp_path: Path) -> None:
    expired = issue(tmp_path, "mx.isp.example", not_before=datetime(2020, 1, 1, tzinfo=UTC),
                    not_after=datetime(2021, 1, 1, tzinfo=UTC))
    path = tmp_path / "ispd.toml"
    path.write_text(f'[mail]\nenabled = true\ndomains = ["isp.example"]\ncertificate = "{expired.certificate}"\n'
                    f'private_key = "{expired.private_key}"\n')
    result = subprocess.run([ISPD, "check-config", "-c", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr  # a warning: refusing to start would take mail down too
    assert result.stderr == (f"ispd: {path}: mail: warning: the certificate {expired.certificate} expired on "
                             "2021-01-01 00:00 UTC\n")


def test_an_intermediate_in_the_chain_that_ends_first_is_warned_of(tmp_path: Path) -> None:
    """A chain file whose intermediate expires before the server's own certificate: from then
    every client that checks the chain refuses the server ("certificate has expired" at depth
    1), and neither check-config, the log nor the expiry metric said a word: only the first
    certificate's dates were read."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)

    def certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
                    not_after: datetime) -> bytes:
        built = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                 .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                 .public_key(key.public_key()).serial_number(x509.random_serial_number())
                 .not_valid_before(now - timedelta(days=30)).not_valid_after(not_after)
                 .sign(signer, hashes.SHA256()))
        return built.public_bytes(serialization.Encoding.PEM)

    root, intermediate, server = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    chain = tmp_path / "chain.pem"
    for ends_in, expected in ((timedelta(days=-2), "expired on"), (timedelta(days=5), "expires on")):
        intermediate_ends = now + ends_in
        chain.write_bytes(certificate("mx.isp.example", server, "Lab Intermediate", intermediate,
                                      now + timedelta(days=300))
                          + certificate("Lab Intermediate", intermediate, "Lab Root", root, intermediate_ends))
        validity = certificate_validity(chain)
        assert validity is not None and abs(validity.not_after - intermediate_ends.timestamp()) < 1
        [(_, _, problem)] = certificate_problems([("mail", chain)], time.time())
        assert problem.startswith(f"the chain in {chain} (its certificate CN=Lab Intermediate) {expected}")
    # A chain whose certificates all outlast the server's own speaks of that one, as before.
    chain.write_bytes(certificate("mx.isp.example", server, "Lab Intermediate", intermediate, now + timedelta(days=5))
                      + certificate("Lab Intermediate", intermediate, "Lab Root", root, now + timedelta(days=900)))
    [(_, _, problem)] = certificate_problems([("mail", chain)], time.time())
    assert problem.startswith(f"the certificate {chain} expires on")


def test_a_certificate_of_the_file_no_client_builds_its_chain_through_is_not_warned_of(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The earliest end among every certificate of the file: a chain file with a cross-signed
    root (Let's Encrypt's long chain: ISRG Root X1 signed by DST Root CA X3) whose cross-sign
    expired, a self-signed root appended, or an old intermediate left in the bundle, all of which
    clients pass over (they stop at the root they trust), was warned of as "the chain ... expired"
    in check-config, the daemon's log each day, and the expiry metric, while every client was
    served well."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    import ispd.certificates

    now = datetime.now(UTC)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
                    not_after: datetime) -> bytes:
        built = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                 .public_key(key.public_key()).serial_number(x509.random_serial_number())
                 .not_valid_before(now - timedelta(days=3000)).not_valid_after(not_after)
                 .sign(signer, hashes.SHA256()))
        return built.public_bytes(serialization.Encoding.PEM)

    root, old_root, intermediate, old_intermediate, server = (ec.generate_private_key(ec.SECP256R1())
                                                              for _ in range(5))
    monkeypatch.setattr(ispd.certificates, "_trust_anchor_names", lambda: {name("Lab Root")},
                        raising=False)
    leaf_ends = now + timedelta(days=300)
    leaf = certificate("mx.isp.example", server, "Lab Intermediate", intermediate, leaf_ends)
    served = leaf + certificate("Lab Intermediate", intermediate, "Lab Root", root, now + timedelta(days=900))
    expired = now - timedelta(days=10)
    chain = tmp_path / "chain.pem"
    for passed_over in (certificate("Lab Root", root, "Old Root", old_root, expired),  # the cross-sign
                        certificate("Old Root", old_root, "Old Root", old_root, expired),  # a root
                        certificate("Lab Intermediate", old_intermediate, "Lab Root", root, expired)):  # replaced
        chain.write_bytes(served + passed_over)
        validity = certificate_validity(chain)
        assert validity is not None and abs(validity.not_after - leaf_ends.timestamp()) < 1
        assert certificate_problems([("mail", chain)], time.time()) == []
    # An intermediate the chain goes through is still the one warned of.
    chain.write_bytes(leaf + certificate("Lab Intermediate", intermediate, "Lab Root", root, expired))
    [(_, _, problem)] = certificate_problems([("mail", chain)], time.time())
    assert problem.startswith(f"the chain in {chain} (its certificate CN=Lab Intermediate) expired on")
