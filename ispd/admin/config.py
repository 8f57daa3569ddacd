"""[admin]: where the admin HTTP API listens."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from ispd.configtypes import ConfigWarning, ListenAddress, Section, SocketAddress

CLEARTEXT_WARNING = ("the bearer token and every answer cross the network unencrypted: listen on loopback "
                     "and put a TLS proxy in front")
DEFAULT_PER_CLIENT = 16  # [admin] max_connections_per_client when unset


class AdminConfig(Section):
    # The Unix socket (mode 0600: root and the daemon's user only): "auto" puts admin.sock
    # beside [daemon] control_socket, "" turns it off, anything else is its path.
    socket: str = "auto"
    # TCP listeners (e.g. ["127.0.0.1:8740"]); every request on them needs
    # "Authorization: Bearer <token>". Put TLS in front (a reverse proxy) beyond loopback.
    listen: list[ListenAddress] = []
    token: SecretStr | None = None
    # Connections served at once on the Unix socket, and on the TCP listeners together; beyond,
    # requests get 503 (uvicorn's limit_concurrency: connections past it are still accepted, and
    # held until their request, or the request's deadline, REQUEST_HEAD_SECONDS).
    max_connections: int = Field(default=64, ge=1, le=10_000)
    # Of them, connections one client address (an IPv6 one by its /64) may hold on the TCP
    # listeners; beyond it a new one is answered 503 at once, so that one host cannot take all
    # max_connections places (idle connections last 10 s each and can be opened again and again).
    # Not applied on the Unix socket: its peers are root and the daemon's user, all one "client".
    # Unset: DEFAULT_PER_CLIENT, or max_connections when that is smaller (``per_client``).
    max_connections_per_client: int | None = Field(default=None, ge=1, le=10_000)

    @model_validator(mode="after")
    def _token_for_tcp(self) -> AdminConfig:
        if self.listen and self.token is None:
            raise ValueError("admin.listen needs admin.token: a TCP listener is open to anyone who can reach it")
        if self.token is not None and len(self.token.get_secret_value()) < 16:
            raise ValueError("admin.token must be at least 16 characters long")
        if self.max_connections_per_client is not None and self.max_connections_per_client > self.max_connections:
            raise ValueError(f"admin.max_connections_per_client ({self.max_connections_per_client}) is more than "
                             f"admin.max_connections ({self.max_connections}): one client could take every place")
        return self

    def per_client(self) -> int:
        """The per-client limit in force: ``max_connections_per_client``; unset, DEFAULT_PER_CLIENT
        or ``max_connections`` when that is smaller (a small max_connections set alone)."""
        if self.max_connections_per_client is not None:
            return self.max_connections_per_client
        return min(DEFAULT_PER_CLIENT, self.max_connections)

    def warnings(self) -> list[ConfigWarning]:
        return [ConfigWarning("admin.listen.cleartext", f"listen {address}: {CLEARTEXT_WARNING}")
                for address in self.cleartext_listeners()]

    def cleartext_listeners(self) -> list[SocketAddress]:
        """The TCP listeners beyond loopback: there the bearer token, and every answer (passwords
        of new subscribers, who had which address), cross the network unencrypted."""
        return [address for address in self.listen if not ip_address(address.host).is_loopback]

    def socket_path(self, control_socket: Path | None) -> Path | None:
        if self.socket == "auto":
            return control_socket.with_name("admin.sock") if control_socket is not None else None
        return Path(self.socket) if self.socket.strip() else None
