"""Where Disconnect and CoA requests are sent from."""

from __future__ import annotations

from ispd.radius.coa import DynamicAuthorizationClient


def test_the_one_listening_address_that_reaches_the_nas_is_the_source() -> None:
    client = DynamicAuthorizationClient(1.0, 1, ("127.0.0.7", "198.51.100.1", "fe80::1", "2001:db8::1"))
    assert client.source_for("127.0.0.1") == "127.0.0.7"  # loopback for loopback
    assert client.source_for("203.0.113.9") == "198.51.100.1"  # not the loopback listener
    assert client.source_for("2001:db8::9") == "2001:db8::1"  # not the link-local one
    # Several that could: NASes on several networks, each with its own; the route decides.
    assert DynamicAuthorizationClient(1.0, 1, ("198.51.100.1", "203.0.113.1")).source_for("203.0.113.9") is None
    assert DynamicAuthorizationClient(1.0, 1, ()).source_for("203.0.113.9") is None
