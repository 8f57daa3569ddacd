from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ispd.config import load_config
from ispd.configtypes import SocketAddress
from tests.lab.process import ISPD
from tests.test_config import error_of, write


def test_defaults_are_a_careful_mx(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[mail]\n")).mail
    assert not config.enabled
    assert config.listen_mx == [SocketAddress("127.0.0.1", 25)]
    assert config.maildir_root == Path("/var/lib/ispd/mail")
    assert config.certificate is None and config.postmaster is None
    assert config.max_message_bytes == 25 * 1024 * 1024 and config.max_recipients == 100


def test_relative_paths_are_taken_from_the_config_files_directory(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[mail]\nmaildir_root = "mail"\ncertificate = "mx.pem"\n'
                                         'private_key = "mx.key"\n')).mail
    assert config.maildir_root == tmp_path / "mail"
    assert config.certificate == tmp_path / "mx.pem" and config.private_key == tmp_path / "mx.key"


@pytest.mark.parametrize(("text", "message"), [
    ("enabled = true", "give the domains to receive mail for"),
    ('enabled = true\ndomains = ["isp.example"]\nlisten_mx = []', "give listen_mx addresses"),
    ('domains = ["localhost"]', "not a mail domain (it has no dot)"),
    ('domains = ["isp.example", "ISP.example"]', "a domain is listed twice"),
    ('domains = ["bad_domain.example"]', "is not a host name"),
    ('certificate = "mx.pem"', "give both `certificate` and `private_key`"),
    ('domains = ["isp.example"]\npostmaster = "noc@other.example"', "is not at one of the domains"),
    ('postmaster = "not an address"', "is not a mail address"),
    ('recipient_delimiter = "++"', "recipient_delimiter"),
    ("max_message_bytes = 10", "max_message_bytes"),
    ('listen_submission = ["127.0.0.1:587"]', "submission (listen_submission, listen_submissions) needs `certificate`"),
    ('listen_imaps = ["127.0.0.1:993"]', "IMAP (listen_imap, listen_imaps) needs `certificate`"),
    ("retry_initial_seconds = 600\nretry_max_seconds = 300", "retry_max_seconds is less than retry_initial_seconds"),
    ('resolver = "localhost:53"', "resolver"),
    ('domains = ["isp.example"]\n[[mail.dkim]]\ndomain = "other.example"\nselector = "s1"\nprivate_key = "k.pem"',
     "dkim: other.example is not one of the domains"),
    ('dmarc_enforcement = "always"', "dmarc_enforcement"),
    ('domains = ["isp.example"]\nsrs_domain = "other.example"', "srs_domain: other.example is not one of the domains"),
    ("srs_max_age_days = 0", "srs_max_age_days"),
])
def test_mistakes_are_named(tmp_path: Path, text: str, message: str) -> None:
    assert message in error_of(write(tmp_path, f"[mail]\n{text}\n"))


def test_the_srs_secret_lives_beside_the_queue_unless_named(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[mail]\nqueue_directory = "spool/queue"\n')).mail
    assert config.srs and config.srs_domain is None and config.srs_secrets_path == tmp_path / "spool" / "srs.secret"
    named = load_config(write(tmp_path, '[mail]\nsrs_secret_file = "keys/srs"\n')).mail
    assert named.srs_secrets_path == tmp_path / "keys" / "srs"


def test_check_config_reads_the_certificate(tmp_path: Path) -> None:
    """Every service's file problems are reported, each with the config file and its section,
    not only the first service's."""
    (tmp_path / "mx.pem").write_text("not a certificate\n")
    (tmp_path / "mx.key").write_text("not a key\n")
    path = write(tmp_path, '[store]\npath = "ispd.db"\n[mail]\nenabled = true\ndomains = ["isp.example"]\n'
                           'certificate = "mx.pem"\nprivate_key = "mx.key"\n'
                           '[dns]\nenabled = true\nroot_hints = "missing.hints"\n')
    result = subprocess.run([ISPD, "check-config", "-c", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if ": warning: " not in line]
    assert len(lines) == 2 and lines[0].startswith(f"ispd: {path}: dns: ") and "missing.hints" in lines[0], lines
    assert lines[1].startswith(f"ispd: {path}: mail: cannot use {tmp_path / 'mx.pem'} with {tmp_path / 'mx.key'}")
