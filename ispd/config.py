"""The daemon's configuration: one TOML file, one pydantic model per section.

Loading never raises anything but ``ConfigError``, whose message names the file, the key path
and what is wrong, in words an operator can act on (no traceback, no pydantic jargon).
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, Field, SecretStr, ValidationError, model_validator

from ispd.admin.config import AdminConfig
from ispd.configtypes import ConfigWarning, Section, SocketAddress, parse_range
from ispd.control import MAX_PATH_BYTES as MAX_SOCKET_PATH_BYTES
from ispd.dhcp.config import DHCPConfig
from ispd.dhcp6.config import DHCP6Config
from ispd.dns.config import DNSConfig
from ispd.logs import LogConfig
from ispd.mail.config import MailConfig
from ispd.metrics.config import MetricsConfig
from ispd.radius.config import AccountingFeedConfig, AddressPoolConfig, RadiusConfig, SuspendedAction
from ispd.store.config import StoreConfig


def _socket_path(value: Any) -> Any:
    """A path as text; "" (disabled) is None."""
    if isinstance(value, Path) or value is None:
        return value
    if not isinstance(value, str):
        raise ValueError(f'{value!r} is not a path: write it as text, e.g. "/run/ispd/control.sock" ("" disables it)')
    return Path(value) if value.strip() else None


class DaemonConfig(Section):
    # On SIGTERM, services stop accepting and finish what they have in hand for at most this long.
    shutdown_grace_seconds: float = Field(default=10.0, gt=0, le=600)
    # How often changes made by other processes (the admin CLI, other nodes) are picked up from
    # the store's audit log and announced to the services.
    store_poll_interval_seconds: float = Field(default=0.5, gt=0, le=60)
    # The Unix socket the admin CLI reaches the running daemon through (`ispd dns cache ...`);
    # mode 0600. An empty string in the file disables it (None here). Changing it needs a restart.
    control_socket: Annotated[Path | None, BeforeValidator(_socket_path)] = Path("/run/ispd/control.sock")
    # When another node's daemon holds the store (PostgreSQL shared by two nodes), wait as its hot
    # standby rather than fail the start: metrics and /healthz answer, no other service runs, and
    # when the active daemon stops or loses the store this one takes it over and starts serving,
    # its state loaded from the store as at any start.
    standby: bool = False
    # What a standby serves while it waits: "dns", the resolver, whose lease names and walled
    # garden follow the active node's leases and sessions through the database. Nothing else
    # can: DHCP, RADIUS and mail keep state that one daemon owns.
    standby_serves: list[Literal["dns"]] = []


_WILDCARD = {False: "0.0.0.0", True: "::"}


def _overlap(a: Any, b: Any) -> bool:
    """Two listening addresses on one port clash: the same, or one the wildcard of the other's
    family (which takes the port on all its addresses)."""
    if a.family_is_ipv6 != b.family_is_ipv6:
        return False
    return a.host == b.host or _WILDCARD[a.family_is_ipv6] in (a.host, b.host)


class Config(Section):
    daemon: DaemonConfig = DaemonConfig()
    store: StoreConfig = StoreConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    dhcp: DHCPConfig = DHCPConfig()
    dhcp6: DHCP6Config = DHCP6Config()
    dns: DNSConfig = DNSConfig()
    radius: RadiusConfig = RadiusConfig()
    # DHCP leases as RADIUS accounting to collectors (on when a collector is listed).
    accounting_feed: AccountingFeedConfig = AccountingFeedConfig()
    mail: MailConfig = MailConfig()
    # The admin HTTP API (on the Unix socket beside the control socket by default).
    admin: AdminConfig = AdminConfig()

    @model_validator(mode="after")
    def _listeners_apart(self) -> Config:
        """No two listeners on one address, port and transport: the second would fail to bind
        at start, after check-config said the file was fine. An admin socket that is the
        control socket is the same mistake."""
        seen: list[tuple[str, str, Any]] = []
        for transport, key, addresses in self._listeners():
            for address in addresses:
                mapped = ipaddress.ip_address(address.host.partition("%")[0])
                if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped is not None:
                    # Every IPv6 listener is IPv6-only (IPV6_V6ONLY): its bind failed at start,
                    # "Invalid argument", after check-config said the file was fine.
                    raise ValueError(f"{key}: [{address.host}]:{address.port} is IPv4-mapped IPv6, which an IPv6 "
                                     f"listener cannot take (each is IPv6-only): write "
                                     f"{mapped.ipv4_mapped}:{address.port}")
                if address.port == 0:  # any free port: never the same
                    continue
                for other_transport, other_key, other in seen:
                    if other_transport == transport and other.port == address.port and _overlap(address, other):
                        raise ValueError(f"{key} ({address}) and {other_key} ({other}) both take port "
                                         f"{address.port} ({transport.upper()})")
                seen.append((transport, key, address))
        control = self.daemon.control_socket
        if control is not None and self.admin.socket_path(control) == control:
            raise ValueError(f"admin.socket is daemon.control_socket ({control}): give each a path of its own")
        return self

    def certificates(self, every: bool = False) -> list[tuple[str, Path]]:
        """(key, file) of every server certificate an enabled service serves with, each file once
        (under the first service that names it; ``every``: once per service): what check-config,
        the daemon's expiry warnings and its expiry metric look at."""
        found: list[tuple[str, Path]] = []
        dns, mail, eap = self.dns, self.mail, self.radius.eap
        if dns.enabled:
            for key, section in (("dns.dot", dns.dot), ("dns.doh", dns.doh), ("dns.doq", dns.doq)):
                if section.enabled and section.certificate is not None:
                    found.append((key, section.certificate))
        if mail.enabled and mail.certificate is not None:
            found.append(("mail", mail.certificate))
        if self.radius.enabled and eap.certificate is not None:
            found.append(("radius.eap", eap.certificate))
        if every:
            return found
        first: dict[Path, str] = {}
        for key, path in found:
            first.setdefault(path, key)
        return [(key, path) for path, key in first.items()]

    def _listeners(self) -> Iterator[tuple[str, str, list[Any]]]:
        """(transport, key, addresses) of every enabled service's listeners."""
        dns, mail, radius = self.dns, self.mail, self.radius
        if dns.enabled:
            yield from (("udp", "dns.listen", dns.listen), ("tcp", "dns.listen", dns.listen),
                        ("tcp", "dns.dot.listen", dns.dot.listen), ("tcp", "dns.doh.listen", dns.doh.listen),
                        ("udp", "dns.doh.listen_http3", dns.doh.listen_http3),
                        ("udp", "dns.doq.listen", dns.doq.listen))
        if mail.enabled:
            yield from (("tcp", f"mail.{key}", getattr(mail, key)) for key in (
                "listen_mx", "listen_submission", "listen_submissions", "listen_imap", "listen_imaps"))
        if radius.enabled:
            yield from (("udp", "radius.listen_auth", radius.listen_auth),
                        ("udp", "radius.listen_acct", radius.listen_acct))
        # DHCP and DHCPv6 take their port on every address of their family (0.0.0.0:67, [::]:547).
        if self.dhcp.enabled:
            yield "udp", "dhcp.port", [SocketAddress("0.0.0.0", self.dhcp.port)]
        if self.dhcp6.enabled:
            yield "udp", "dhcp6.port", [SocketAddress("::", self.dhcp6.port)]
        if self.metrics.enabled:
            yield "tcp", "metrics.listen", [self.metrics.listen]
        yield "tcp", "admin.listen", self.admin.listen

    @model_validator(mode="after")
    def _standby_on_a_shared_store(self) -> Config:
        if self.daemon.standby and self.store.backend != "postgresql":
            raise ValueError('daemon.standby needs [store] backend = "postgresql": a standby takes over a store '
                             "that several nodes reach, and a SQLite file lives on one host (there, systemd's "
                             "Restart= is the standby)")
        if self.daemon.standby_serves and not self.daemon.standby:
            raise ValueError("daemon.standby_serves is what a standby serves while it waits: set daemon.standby "
                             "= true too, or leave it out")
        for name in self.daemon.standby_serves:
            if not getattr(self, name).enabled:
                raise ValueError(f"daemon.standby_serves names {name!r}, which is not enabled ([{name}] enabled "
                                 "= true)")
        return self

    @model_validator(mode="after")
    def _prefix_pools_apart_from_dhcp6(self) -> Config:
        """A RADIUS prefix pool shares no prefix with DHCPv6's pools: DHCPv6 hands those out to
        whoever asks, and could give one at the moment RADIUS reserves it for a login."""
        if not self.radius.enabled or not self.dhcp6.enabled or not self.radius.prefix_pool:
            return self
        for pool in self.radius.prefix_pool:
            first, last = int(pool.prefix.network_address), int(pool.prefix.broadcast_address)
            for subnet in self.dhcp6.subnet:
                spans = [*((what, pool_first, pool_last, "DHCPv6 could hand out a prefix RADIUS reserves")
                           for what, pool_first, pool_last in subnet.handed_out()),
                         (f"the link prefix ({subnet.prefix})", int(subnet.prefix.network_address),
                          int(subnet.prefix.broadcast_address),
                          "a login's prefix would hold the link where DHCPv6 gives the routers their addresses")]
                for what, other_first, other_last, why in spans:
                    if first <= other_last and other_first <= last:
                        raise ValueError(f"radius.prefix_pool {pool.name!r} ({pool.prefix}) overlaps {what} of "
                                         f"subnet {subnet.name!r}: {why}; give the two parts of your allocation "
                                         "that do not overlap")
        return self

    @model_validator(mode="after")
    def _a_walled_garden_that_walls(self) -> Config:
        """Suspended subscribers accepted into the walled garden get ``walled_garden_attributes``
        instead of the plan's profile (its rate limit and timeouts too): with none, and no DNS
        walled garden to find them by their sessions' addresses, nothing walls them in and their
        NAS gives them its own default, often no rate limit at all."""
        radius = self.radius
        if not radius.enabled or radius.walled_garden_attributes:
            return self
        garden = self.dns.walled_garden
        if self.dns.enabled and (garden.portal_ipv4 is not None or garden.portal_ipv6 is not None):
            return self
        walled = ["radius.suspended"] if radius.suspended is SuspendedAction.WALLED_GARDEN else []
        walled += [f"[[radius.plan]] {plan.plan!r} suspended" for plan in radius.plan
                   if plan.suspended is SuspendedAction.WALLED_GARDEN]
        if walled:
            raise ValueError(f'{walled[0]} = "walled-garden", but radius.walled_garden_attributes is empty and '
                             f"there is no DNS walled garden ([dns.walled_garden] portal_ipv4): a suspended "
                             f"subscriber would be accepted with no profile at all (no rate limit); give the "
                             f'garden\'s attributes (e.g. "Mikrotik-Address-List = walled-garden"), or "reject"')
        return self

    @model_validator(mode="after")
    def _shared_pools(self) -> Config:
        """A RADIUS plan may take addresses from a DHCP pool by its name: that pool joins
        ``radius.address_pool`` with its range (the store keeps the two services from giving one
        address twice). A RADIUS pool of its own must not overlap a DHCP pool it is not."""
        radius = self.radius
        if not radius.enabled:
            return self
        dhcp_pools = {p.name: p for subnet in self.dhcp.subnet for p in subnet.pool}
        own = {p.name: p for p in radius.address_pool}
        for pool in own.values():
            first, last = pool.bounds
            for other in dhcp_pools.values():
                other_first, other_last = (int(a) for a in parse_range(other.range))
                if other.name == pool.name and (first, last) != (other_first, other_last):
                    raise ValueError(f"radius.address_pool {pool.name!r}: the DHCP pool of that name is "
                                     f"{other.range}; give the same range to share it, or another name")
                if other.name != pool.name and first <= other_last and other_first <= last:
                    raise ValueError(f"radius.address_pool {pool.name!r} overlaps the DHCP pool {other.name!r}; "
                                     f"to share that pool, name it in the plan's address_pool instead")
            if pool.name in dhcp_pools:
                continue  # the DHCP pool's own checks apply
            for subnet in self.dhcp.subnet:  # addresses a subnet's clients rely on are no one's to lease
                fixed = [*self.dhcp.routers_of(subnet), *([subnet.server_id] if subnet.server_id else [])]
                if subnet.network.prefixlen < 31:
                    fixed += [subnet.network.network_address, subnet.network.broadcast_address]
                for address in fixed:
                    if first <= int(address) <= last:
                        raise ValueError(f"radius.address_pool {pool.name!r} includes {address}, a router, "
                                         f"server or network address of the DHCP subnet {subnet.network}")
        added = []
        for plan in radius.plan:
            name = plan.address_pool
            if name is None or name in own:
                continue
            shared = dhcp_pools.get(name)
            if shared is None:
                raise ValueError(f"radius.plan {plan.plan!r}: address_pool {name!r} is neither a "
                                 f"[[radius.address_pool]] nor a [[dhcp.subnet.pool]]")
            own[name] = AddressPoolConfig(name=name, range=shared.range)
            added.append(own[name])
        if not added:
            return self
        return self.model_copy(update={"radius": radius.model_copy(update={
            "address_pool": [*radius.address_pool, *added]})})


    def warnings(self) -> list[ConfigWarning]:
        """What the enabled sections' settings, and settings of two sections together, do not do
        as written: for check-config, and for the supervisor's log at each start and reload."""
        found = [*self.admin.warnings(), *self.accounting_feed.warnings()]
        for section in (self.dhcp, self.dhcp6, self.dns, self.radius, self.mail):
            if section.enabled:
                found += section.warnings()
        found += [ConfigWarning("radius.address_pool.router_excluded", warning)
                  for warning in self.radius_pool_routers().values()]
        return found

    def radius_pool_routers(self) -> dict[int, str]:
        """Addresses of RADIUS's own pools that a DHCP pool sends as its router, each with its
        warning. The subnet's routers there are refused (``_shared_pools``); a pool's were not
        checked, and a config that ran must still start: RADIUS never gives them instead (a
        session on the gateway's address cuts that pool's DHCP clients off)."""
        radius = self.radius
        if not radius.enabled or not self.dhcp.enabled:
            return {}
        dhcp_pools = {p.name for subnet in self.dhcp.subnet for p in subnet.pool}
        found: dict[int, str] = {}
        for pool in radius.address_pool:
            if pool.name in dhcp_pools:
                continue  # a shared DHCP pool: its own checks keep routers out of it
            first, last = pool.bounds
            for subnet in self.dhcp.subnet:
                for dhcp_pool in subnet.pool:
                    for router in dhcp_pool.sent_routers() or []:
                        if first <= int(router) <= last and int(router) not in found:
                            found[int(router)] = (
                                f"radius.address_pool {pool.name!r} includes {router}, a router of the DHCP pool "
                                f"{dhcp_pool.name!r} (subnet {subnet.network}): RADIUS does not give it; leave it "
                                "out of the range")
        return found


def config_data(value: Any) -> Any:
    """``value`` (a Config, or any part of one) as plain JSON-able data that ``Config.model_validate``
    reads back into an equal config, secrets included (model_dump's JSON mode masks them): what
    the main process hands its workers, so that they run the config it runs, not whatever the
    file says by the time they start."""
    if isinstance(value, Config):
        data = {name: config_data(getattr(value, name)) for name in type(value).model_fields}
        # Without the DHCP pools that validation added for the plans naming them: validated
        # again, they would be checked as RADIUS's own (and are added again anyway).
        # (They are the last ones; an identical pool the operator gave there is added back the same.)
        if value.radius.enabled:
            shared = {(pool.name, pool.range) for subnet in value.dhcp.subnet for pool in subnet.pool}
            named = {plan.address_pool for plan in value.radius.plan}
            pools = list(value.radius.address_pool)
            while pools and (pools[-1].name, pools[-1].range) in shared and pools[-1].name in named:
                pools.pop()
            data["radius"]["address_pool"] = [config_data(pool) for pool in pools]
        return data
    if isinstance(value, BaseModel):
        return {name: config_data(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Enum):
        return value.value
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [config_data(item) for item in value]
    if isinstance(value, dict):
        return {str(key): config_data(item) for key, item in value.items()}
    return str(value)  # paths, addresses, networks: each field's parser reads its own text back


def write_config_snapshot(config: Config, path: Path) -> None:
    """``config`` as JSON in ``path`` (mode 0600: it holds the secrets), replaced at once."""
    write_private_file(path, json.dumps(config_data(config)).encode("utf-8"))


def write_private_file(path: Path, content: bytes) -> None:
    """``path`` (mode 0600) written through a temporary file and replaced at once. A write that
    fails (the disk full) takes its temporary with it: left there, it would keep the disk full
    for every later try."""
    temporary = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def load_config_snapshot(path: Path | str) -> Config:
    """A config that ``write_config_snapshot`` wrote."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{path}: {line}" for line in describe_errors(exc))) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the config snapshot: {exc}") from None


class ConfigError(Exception):
    """A config file that cannot be used; str() is the message for the operator."""


def load_config(path: Path | str) -> Config:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per level of nested arrays and inline tables
        raise ConfigError(f"{path}: not valid TOML here: arrays or inline tables nested too deeply") from None
    for where in _nul_characters(data):  # no file name, address or secret holds one; os calls fail on them
        raise ConfigError(f"{path}: {where}: a NUL character (\\u0000) cannot be in a config value")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{path}: {line}" for line in describe_errors(exc))) from None
    config = _resolve_relative_paths(config, path.resolve().parent)
    control_socket = config.daemon.control_socket
    if control_socket is not None and len(bytes(control_socket)) > MAX_SOCKET_PATH_BYTES:
        raise ConfigError(f"{path}: daemon.control_socket: {control_socket} is {len(bytes(control_socket))} bytes "
                          f"long; a Unix socket's path can have at most {MAX_SOCKET_PATH_BYTES}")
    # The admin socket too ("auto": admin.sock beside the control socket, 2 bytes longer than
    # control.sock), or check-config says ok to a file whose `ispd run` fails.
    admin_socket = config.admin.socket_path(control_socket)
    if admin_socket is not None and len(bytes(admin_socket)) > MAX_SOCKET_PATH_BYTES:
        where = " (auto: beside daemon.control_socket)" if config.admin.socket == "auto" else ""
        raise ConfigError(f"{path}: admin.socket{where}: {admin_socket} is {len(bytes(admin_socket))} bytes long; "
                          f"a Unix socket's path can have at most {MAX_SOCKET_PATH_BYTES}")
    # The dnstap collector's socket too: ispd would try it for ever ("No such file or directory").
    dnstap = config.dns.dnstap.socket_path
    if dnstap is not None and len(bytes(dnstap)) > MAX_SOCKET_PATH_BYTES:
        raise ConfigError(f"{path}: dns.dnstap.socket_path: {dnstap} is {len(bytes(dnstap))} bytes long; "
                          f"a Unix socket's path can have at most {MAX_SOCKET_PATH_BYTES}")
    return config


def _nul_characters(value: Any, where: str = "") -> Iterator[str]:
    """The keys (``dns.local_zone[0].file``) of the TOML values that hold a NUL character."""
    if isinstance(value, str):
        if "\x00" in value:
            yield where or "(top)"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _nul_characters(key, where)
            yield from _nul_characters(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _nul_characters(item, f"{where}[{index}]")


def _resolve_relative_paths(config: Config, base: Path) -> Config:
    """Every relative file name in the config, at any depth, taken from ``base`` (the config
    file's directory), as operators expect of a config that names its neighbours: a walk of the
    models, so that a field added later is not forgotten."""
    resolved = _anchored(config, base)
    assert isinstance(resolved, Config)
    if resolved.admin.socket not in ("auto", "") and resolved.admin.socket.strip():  # (a text: "auto" or a path)
        admin = resolved.admin.model_copy(update={"socket": str(_anchored(Path(resolved.admin.socket), base))})
        resolved = resolved.model_copy(update={"admin": admin})
    return resolved


def _anchored(value: Any, base: Path) -> Any:
    """``value`` with its relative paths taken from ``base``; the very object when it has none."""
    if isinstance(value, Path):
        return value if value.is_absolute() else (base / value).resolve()
    if isinstance(value, BaseModel):
        update = {name: new for name in type(value).model_fields
                  if (new := _anchored(old := getattr(value, name), base)) is not old}
        return value.model_copy(update=update) if update else value
    if isinstance(value, list):
        items = [_anchored(item, base) for item in value]
        return items if any(new is not old for new, old in zip(items, value, strict=True)) else value
    return value


def describe_errors(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False):
        loc = [part for part in error["loc"] if not isinstance(part, int) or part >= 0]
        key = ".".join(str(part) for part in loc)
        if not key and error["type"] == "value_error":
            lines.append(_describe_one(error, loc))  # a check across sections names its own keys
            continue
        lines.append(f"{key or '(top level)'}: {_describe_one(error, loc)}")
    return lines


SECRET_KEY_MARKERS = ("secret", "password", "key", "token")


def _describe_one(error: Any, loc: list[Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        parent_model = _model_at(Config, loc[:-1])
        known = sorted(parent_model.model_fields) if parent_model else []
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        if hint:
            return f"unknown key (did you mean '{hint[0]}'?)"
        return f"unknown key (known keys here: {', '.join(known)})" if known else "unknown key"
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    if kind == "value_error":
        # Our own validators already phrase the whole problem, value included.
        return message.removeprefix("Value error, ")
    if kind == "model_type":
        return f"must be a table ([{'.'.join(map(str, loc))}]), got {_shown(error['input'])}"
    if any(marker in str(part).lower() for part in loc for marker in SECRET_KEY_MARKERS):
        return message  # never echo what may be a secret into a terminal or a log
    if kind == "list_type" and isinstance(error["input"], dict) and _model_at(Config, loc) is not None:
        # `[radius.client]` for `[[radius.client]]`: one bracket pair short, an easy slip whose
        # fix pydantic's "a valid list" does not say.
        return f"must be a list of tables: write [[{'.'.join(map(str, loc))}]] above each one, " \
               f"got one table {_shown(error['input'])}"
    return f"{message} (got {_shown(error['input'])})"


def _shown(value: Any, limit: int = 200) -> str:
    """A bad value as the error shows it: cut short, since it may be megabytes long, and with
    the values of its secret keys hidden (a NAS's table, shown whole, holds its shared secret)."""
    try:
        text = repr(_without_secrets(value))
    except RecursionError:
        return "(a value nested too deeply to show)"
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def _without_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: "(hidden)" if any(marker in str(key).lower() for marker in SECRET_KEY_MARKERS)
                else _without_secrets(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_secrets(item) for item in value]
    if isinstance(value, str):  # a PostgreSQL url (store.url) carries its password
        return without_url_password(value)
    return value


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@\s]*@")
_CONNINFO_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def without_url_password(text: str) -> str:
    """``text`` with the password of a URL (``scheme://user:password@host``) or a libpq
    ``password=`` setting in it written as ``(hidden)``."""
    return _CONNINFO_PASSWORD.sub(r"\1(hidden)", _URL_PASSWORD.sub(r"\1:(hidden)@", text))


def _model_at(model: type[Section], loc: list[Any]) -> type[Section] | None:
    for part in loc:
        if isinstance(part, int):
            continue  # an item of a list of tables, e.g. dhcp.subnet.0
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if get_origin(annotation) is list:
            annotation = get_args(annotation)[0]
        if not (isinstance(annotation, type) and issubclass(annotation, Section)):
            return None
        model = annotation
    return model
