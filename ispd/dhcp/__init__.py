"""DHCPv4 (RFC 2131/2132): codec, options, engine, pools and the service."""
