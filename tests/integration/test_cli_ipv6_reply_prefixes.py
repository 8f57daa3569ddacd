"""One IPAM for IPv6 both ways: a reservation's prefix against another subscriber's own reply attributes."""

from __future__ import annotations

from pathlib import Path

from tests.integration.test_cli import ispd, ok
from tests.lab import toml
from tests.lab.process import base_config


def test_a_reservation_inside_another_subscriber_s_reply_prefix_is_refused(tmp_path: Path) -> None:
    """6ae4600 refuses a reply attribute overlapping another's reply attribute, and c933848 one
    overlapping another's reservation; a reservation made after the attribute was not checked:
    RADIUS sent the /56 to ben and the /48 holding it to anna."""
    config_path = toml.write(tmp_path / "ispd.toml", base_config(tmp_path))
    for name in ("anna", "ben"):
        ok(config_path, "subscriber", "add", name, "--password-stdin", input=f"{name}-pw\n")
    ok(config_path, "subscriber", "radius-reply", "anna", "Delegated-IPv6-Prefix = 2001:db8:77::/48")
    refused = ispd(config_path, "reservation", "add", "ben", "--username", "ben@pppoe",
                   "--prefix6", "2001:db8:77:100::/56")
    assert refused.returncode == 1, refused.stdout
    assert "anna" in refused.stderr, refused.stderr
