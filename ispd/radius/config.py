"""The ``[radius]`` section: listeners, the NASes allowed to talk to ispd, and what replies carry.

Defaults are a careful server's: loopback listeners until the operator names real addresses, no
client until one is configured (a request from an unknown address is dropped, RFC 2865 §5.4's
"silently discard"), Message-Authenticator required from every NAS (the BlastRADIUS fix,
CVE-2024-3596; ``auto`` for firmware that learnt it late), Proxy-State without a
Message-Authenticator refused, suspended subscribers rejected. Reply attributes are written as
FreeRADIUS writes them (``Mikrotik-Address-List = walled-garden``); their names are checked
against the dictionaries when the service starts and by ``ispd check-config``.
"""

from __future__ import annotations

import itertools
import os
import re
from collections import Counter
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, field_validator, model_validator

from ispd.configtypes import (
    ConfigWarning,
    IPNetwork,
    IPv4RangeText,
    ListenAddress,
    Section,
    SocketAddress,
    not_ipv4_mapped,
    parse_range,
)

OWN_PROCESS_MIN_CPUS = 4
_ASSIGNMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?::(\d{1,2}))?\s*=\s*(.*?)\s*$")


class MessageAuthenticatorPolicy(StrEnum):
    """Per NAS, as FreeRADIUS 3.2.5+ (``require_message_authenticator``, ``limit_proxy_state``)."""

    YES = "yes"  # requests without a valid Message-Authenticator are dropped
    AUTO = "auto"  # as "no" until the NAS sends one, then as "yes" (until ispd restarts)
    NO = "no"  # checked when present, not required


class NasKind(StrEnum):
    """What the NAS is, which decides how a plan's rate limit is written into an Access-Accept."""

    GENERIC = "generic"  # no rate-limit attribute (use [[radius.plan]] attributes)
    MIKROTIK = "mikrotik"  # Mikrotik-Rate-Limit = "UPk/DOWNk"
    ACCEL_PPP = "accel-ppp"  # Filter-Id = "DOWN/UP" (kbit/s), accel-ppp's shaper default
    CISCO = "cisco"  # Cisco-AVPair = "lcp:interface-config=rate-limit ..." is site-specific: none
    JUNIPER = "juniper"  # ERX policies are named per site: none


class SuspendedAction(StrEnum):
    REJECT = "reject"  # Access-Reject; open sessions get a Disconnect-Request
    WALLED_GARDEN = "walled-garden"  # Access-Accept with the walled-garden attributes; open sessions get CoA


# The reason a session is disconnected with when it leaves the walled garden: its plan's profile
# lacks an attribute of the garden's, which a CoA could not take away (`subscriber show` reads it).
LEAVING_THE_GARDEN = "leaving the walled garden"
# The same onto another plan (or none) whose profile lacks an attribute of the old plan's (its
# rate limit, its over-quota throttle): the next login gets the new plan's profile whole.
LEAVING_THE_PLAN = "leaving the old plan's attributes"


def _assignment(text: str) -> str:
    """``Name = value`` or ``Name:tag = value`` (a tag for tunnel attributes), value as written."""
    _name, tag, _value = parse_assignment(text)
    if tag == 0:
        raise ValueError(f"{text!r}: a tag is a number from 1 to 31")
    return text.strip()


AttributeAssignment = Annotated[str, AfterValidator(_assignment)]


def parse_assignment(text: str) -> tuple[str, int | None, str]:
    """(name, tag, value) of an assignment; quotes around the value are removed. Checked here, not
    only in the config's validator, because a subscriber's own attributes come from the command line."""
    match = _ASSIGNMENT.match(text)
    if match is None or not match.group(3):
        raise ValueError(f"{text!r} is not an attribute assignment (write it like 'Mikrotik-Address-List = home')")
    # RFC 2868 §3.1: a tag is at most 0x1F; a larger first octet is a tagged string's data, not
    # its tag. (0, "unused", was taken from the command line before: still read from the store.)
    if match.group(2) is not None and int(match.group(2)) > 31:
        raise ValueError(f"{text!r}: a tag is a number from 1 to 31")
    value = match.group(3)
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        # As FreeRADIUS reads them: escapes in double quotes, single quotes as written.
        value = _ESCAPE.sub(_unescaped, value[1:-1]) if value[0] == '"' else value[1:-1]
    return match.group(1), int(match.group(2)) if match.group(2) else None, value


_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "r": "\r", "t": "\t"}


def _unescaped(match: re.Match[str]) -> str:
    return _ESCAPES.get(match.group(1), match.group(0))


def _client_network(value: object) -> object:
    if isinstance(value, str):
        try:
            network = ip_network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an address or network (e.g. 198.18.0.1 or 198.18.0.0/24): "
                             f"{exc}") from None
        # A NAS is matched by the address it sends from, an IPv4 one as IPv4 (IPv6 sockets take
        # IPv6 only): a client written as ::ffff:198.51.100.2 would match nothing, and its NAS
        # would fall to a wider client's secret, or be dropped as unknown.
        return not_ipv4_mapped(network, value)
    return value


ClientNetwork = Annotated[IPv4Network | IPv6Network, BeforeValidator(_client_network)]


class RadiusClientConfig(Section):
    # A NAS (or a network of them) that may send requests, with its shared secret.
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    address: ClientNetwork
    secret: SecretStr
    require_message_authenticator: MessageAuthenticatorPolicy = MessageAuthenticatorPolicy.YES
    # Access-Requests carrying Proxy-State but no Message-Authenticator are dropped ("yes"), as
    # FreeRADIUS does for BlastRADIUS; "auto" relaxes it until the NAS sends one.
    limit_proxy_state: MessageAuthenticatorPolicy = MessageAuthenticatorPolicy.YES
    kind: NasKind = NasKind.GENERIC
    # Where Disconnect-Request and CoA-Request go (RFC 5176): the session's NAS-IP-Address (or the
    # request's source) at this port.
    coa_port: int = Field(default=3799, ge=1, le=65535)

    @field_validator("secret")
    @classmethod
    def _usable_secret(cls, secret: SecretStr) -> SecretStr:
        return usable_secret(secret)


def usable_secret(secret: SecretStr) -> SecretStr:
    value = secret.get_secret_value()
    if not value:
        raise ValueError("the shared secret is empty")
    if len(value.encode()) > 128:
        raise ValueError("the shared secret is longer than 128 bytes")
    return secret


class CollectorConfig(Section):
    # A RADIUS accounting server (a shaper such as LibreQoS, a billing system) that hears of
    # DHCP leases as if ispd were a NAS: Start, Interim-Update, Stop.
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    address: ListenAddress  # e.g. "198.51.100.9:1813"
    secret: SecretStr

    @field_validator("secret")
    @classmethod
    def _usable_secret(cls, secret: SecretStr) -> SecretStr:
        return usable_secret(secret)


class AccountingFeedConfig(Section):
    """The identity feed: DHCP leases sent as RADIUS accounting to collectors, so that the
    rest of an ISP's tooling sees subscribers who have no BNG (and so no NAS accounting)."""

    collectors: list[CollectorConfig] = []
    # What the Accounting-Requests say about their "NAS" (ispd).
    nas_identifier: str = Field(default="ispd", min_length=1, max_length=253)
    nas_ip_address: IPv4Address | None = None
    # An Interim-Update at each renewal (with the time the lease has lasted).
    interim_on_renew: bool = True
    timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    attempts: int = Field(default=3, ge=1, le=10)

    def warnings(self) -> list[ConfigWarning]:
        return [ConfigWarning("accounting_feed.config.warning", w) for w in self.collector_warnings()]

    def collector_warnings(self) -> list[str]:
        """Collectors that cannot work as written, for check-config and the log to warn of (not
        refused: a config that ran must still start after an upgrade). Port 0 is a listener's
        "any free port": sent to, every request fails and the collector reads as one that does
        not answer ("timeout"). A name is a collector's metric label and its share of the requests
        in flight: two of one name are counted as one. One address listed twice gets every Start,
        Interim-Update and Stop twice, as two sessions' worth of accounting."""
        warnings = []
        for i, collector in enumerate(self.collectors):
            if collector.address.port == 0:
                warnings.append(f"collector {collector.name!r} at {collector.address}: port 0 reaches nothing; "
                                "give the collector's accounting port (1813)")
            for earlier in self.collectors[:i]:
                if collector.name == earlier.name:
                    warnings.append(f"two collectors are named {collector.name!r}: their requests are counted as one's")
                if collector.address == earlier.address:
                    warnings.append(f"collectors {earlier.name!r} and {collector.name!r} are both {collector.address}: "
                                    "it is sent every record twice")
        return warnings


def _realm_name(value: str) -> str:
    name = value.strip().lower().rstrip(".")
    if name != "*" and not re.fullmatch(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*", name):
        raise ValueError(f"{value!r} is not a realm: give a domain such as partner.example, or \"*\"")
    return name


RealmName = Annotated[str, AfterValidator(_realm_name)]


class RealmConfig(Section):
    # Proxying (FreeRADIUS's proxy.conf): requests whose User-Name ends in @name and names no
    # local login go to the realm's home servers, and their answers back to the NAS. "*" takes
    # every realm no other entry and no local_realms name (an eduroam federation's proxy).
    name: RealmName
    # Home servers for Access-Requests, tried in order when one does not answer (fail-over), and
    # for accounting (empty: accounting is kept here only).
    auth_servers: list[ListenAddress] = Field(min_length=1)
    acct_servers: list[ListenAddress] = []
    # "fail-over": the first server that is up takes every request. "load-balance": requests are
    # spread over the servers, each device's (NAS and Calling-Station-Id, else User-Name) to one
    # of them, so that an EAP conversation's rounds all reach the server that began it (a server
    # that goes down moves only its own devices to the others).
    balance: Literal["fail-over", "load-balance"] = "fail-over"
    # Status-Server checks (RFC 5997, FreeRADIUS's status_check = status-server): a home server
    # that did not answer gets no more requests, only a Status-Server this often, until it
    # answers one (the home servers must answer Status-Server). With every server of the realm
    # down, requests are rejected at once. 0: off, a silent server is tried after the others
    # for 30 s.
    status_check_seconds: float = Field(default=0, ge=0, le=3600)
    secret: SecretStr
    # Send User-Name without "@realm" (the home server knows its users without it). eduroam wants
    # the realm kept.
    strip_realm: bool = False
    # Each server gets the request this many times, timeout_seconds apart, before the next.
    timeout_seconds: float = Field(default=3.0, gt=0, le=30)
    attempts: int = Field(default=2, ge=1, le=10)
    # Access-Accept/Reject/Challenge from the home servers must carry a valid
    # Message-Authenticator (BlastRADIUS, CVE-2024-3596); false for servers that never send one.
    require_message_authenticator: bool = True

    @field_validator("secret")
    @classmethod
    def _usable_secret(cls, secret: SecretStr) -> SecretStr:
        return usable_secret(secret)

    @field_validator("auth_servers", "acct_servers")
    @classmethod
    def _home_servers(cls, servers: list[SocketAddress]) -> list[SocketAddress]:
        # Port 0 is a listener's "any free port"; sent to, it fails at every send and the server
        # read as silent. A server listed twice is asked twice in a row (fail-over to itself).
        for i, server in enumerate(servers):
            if server.port == 0:
                raise ValueError(f"{server}: give the home server's port (1812 auth, 1813 accounting)")
            if server in servers[:i]:
                raise ValueError(f"{server} is listed twice")
        return servers


class PlanReplyConfig(Section):
    # What the Access-Accept of a plan's subscribers carries besides what the plan itself says
    # (Session-Timeout, Idle-Timeout, the rate limit for the NAS's kind).
    plan: str = Field(min_length=1)
    attributes: list[AttributeAssignment] = []
    # Framed-Pool for the NAS to allocate from, when the subscriber has no reserved address.
    framed_pool: str | None = None
    # Or ispd gives the address (Framed-IP-Address) from this pool: a [[radius.address_pool]],
    # or a [[dhcp.subnet.pool]] by its name, shared with DHCP (the store never lets both hand
    # out one address).
    address_pool: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # A [[radius.prefix_pool]] by its name: a subscriber of this plan whose login has no
    # reservation yet gets the pool's next free prefix at its first login, reserved for good (a
    # username reservation that DHCPv6 skips and `ispd reservation list` shows), and sent as
    # Delegated-IPv6-Prefix from then on (RIPE-690's stable prefixes).
    prefix_pool: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Overrides [radius] suspended for this plan's subscribers.
    suspended: SuspendedAction | None = None
    # Logins only from the subscriber's own lines: a subscriber with reservations of its lines
    # (a MAC as the NAS sends it in Calling-Station-Id, a circuit-id or remote-id) is rejected
    # from any other (reason wrong_line), as a shared password would let anyone log in. One
    # without such reservations is not locked.
    line_lock: bool = False

    @model_validator(mode="after")
    def _one_source_of_addresses(self) -> PlanReplyConfig:
        if self.framed_pool is not None and self.address_pool is not None:
            raise ValueError(f"plan {self.plan!r}: framed_pool (the NAS gives the address) and address_pool "
                             f"(ispd gives it) exclude each other: keep one")
        return self


class AddressPoolConfig(Section):
    # A pool's name is stored with every address it gives; one that a DHCP pool also has names
    # that pool (same range): the two share it.
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # "first - last", e.g. "198.18.8.10 - 198.18.8.250".
    range: IPv4RangeText

    @property
    def bounds(self) -> tuple[int, int]:
        first, last = parse_range(self.range)
        return int(first), int(last)


def _delegable_network(value: object) -> object:
    if isinstance(value, str):
        try:
            value = IPv6Network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IPv6 network without host bits (e.g. 2001:db8:1000::/40): "
                             f"{exc}") from None
    if isinstance(value, IPv6Network):
        if value.is_link_local or value.is_multicast:
            raise ValueError(f"{value} is {'link-local' if value.is_link_local else 'multicast'}: "
                             f"give a global (or unique local) prefix")
        if value.prefixlen < 16:
            raise ValueError(f"{value} is shorter than /16: give the part of your allocation to delegate from")
    return value


class PrefixPoolConfig(Section):
    # Delegated prefixes (Delegated-IPv6-Prefix) that ispd reserves for good, one per subscriber
    # of a plan naming the pool, at its first login; the reservation keeps it through restarts.
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # e.g. "2001:db8:1000::/40": no [dhcp6] pool or prefix_pool may overlap it (DHCPv6 would
    # hand out a prefix RADIUS reserves).
    prefix: Annotated[IPv6Network, BeforeValidator(_delegable_network)]
    # The length of each delegated prefix: /56 as RIPE-690 recommends for homes, /48 for
    # businesses; at least the pool's (the same: a pool of that one prefix), at most /64.
    delegated_length: int = Field(default=56, ge=1, le=64)

    @model_validator(mode="after")
    def _delegated_fits(self) -> PrefixPoolConfig:
        # (Equal is a pool of that one prefix.)
        if self.delegated_length < self.prefix.prefixlen:
            raise ValueError(f"prefix_pool {self.name!r}: delegated_length {self.delegated_length} is shorter than "
                             f"the pool's prefix {self.prefix}; give /{self.prefix.prefixlen} or longer "
                             f"(e.g. {max(self.prefix.prefixlen, 56)})")
        return self


class EAPMethod(StrEnum):
    MD5 = "md5"
    TTLS = "ttls"
    PEAP = "peap"
    TLS = "tls"


_ALL_METHODS = (EAPMethod.MD5, EAPMethod.PEAP, EAPMethod.TTLS, EAPMethod.TLS)  # the default order


class EAPConfig(Section):
    """``[radius.eap]``: the EAP methods ispd serves. EAP-TTLS (PAP inside a TLS tunnel: any
    credential policy) and PEAP (EAP-MSCHAPv2 inside: the NT hash or the cleartext), the Wi-Fi
    methods, need the server's certificate and key; EAP-TLS (a client certificate instead of a
    password) also the CA that issues the clients' certificates; EAP-MD5 (wired 802.1X,
    cleartext credentials only) needs nothing."""

    # PEM files: the certificate chain (leaf first) and its private key; read at start and on
    # SIGHUP. Supplicants check this certificate against the CA they are configured with.
    certificate: Path | None = None
    private_key: Path | None = None
    # EAP-TLS: the CA certificates (PEM) that clients' certificates must chain to. A client
    # certificate logs in the subscriber its EAP identity names, when the certificate carries
    # that name (subject CN, or a DNS or e-mail subjectAltName).
    client_ca: Path | None = None
    # The order of preference: the first is offered on an EAP-Response/Identity; a peer that
    # wants another answers with a Nak naming it, and gets it if it is listed here (every
    # supplicant does; FreeRADIUS's radeapclient does not). "ttls" and "peap" are skipped while
    # no certificate is configured, "tls" while no client_ca is (check-config and the log warn of
    # it in a list other than this default). MD5 first, as FreeRADIUS's
    # default_eap_type: a Wi-Fi station costs one round trip more, a wired one that only knows
    # MD5 is not turned away.
    methods: list[EAPMethod] = Field(default_factory=lambda: list(_ALL_METHODS), min_length=1)

    @model_validator(mode="after")
    def _certificate_and_key(self) -> EAPConfig:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("give both `certificate` and `private_key` (PEM file paths), or neither")
        if self.client_ca is not None and self.certificate is None:
            raise ValueError("client_ca (EAP-TLS) needs the server's `certificate` and `private_key` too")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("methods: a method is listed twice")
        if not self.offered:
            raise ValueError("methods: none can be offered (ttls and peap need `certificate` and `private_key`, "
                             "tls also `client_ca`)")
        return self

    @property
    def offered(self) -> list[EAPMethod]:
        def available(method: EAPMethod) -> bool:
            if method == EAPMethod.MD5:
                return True
            return self.certificate is not None and (method != EAPMethod.TLS or self.client_ca is not None)

        return [m for m in self.methods if available(m)]

    def warnings(self) -> list[ConfigWarning]:
        """The methods a list of the operator's own names that cannot be offered: skipped
        without a word, a station set up for one got EAP-Failure after its Nak. Not for the
        default list (written out or not), which names all four for whatever the section configures."""
        if tuple(self.methods) == _ALL_METHODS:
            return []
        offered = self.offered
        return [ConfigWarning("radius.eap.method_unavailable", f"methods: {method.value!r} is not offered: it needs "
                              + ("`client_ca`" if self.certificate is not None else "`certificate` and `private_key`"
                                 + (", and `client_ca`" if method == EAPMethod.TLS else "")))
                for method in self.methods if method not in offered]


class RadiusConfig(Section):
    enabled: bool = False
    # "own": RADIUS runs in a worker process of its own, so that DNS or DHCP load on the main
    # process cannot slow authentication and accounting (it needs a core to itself to gain
    # anything); "main": in the main process, sharing its event loop; "auto": "own" when ispd
    # may use at least 4 CPUs, else "main".
    process: Literal["auto", "own", "main"] = "auto"

    @property
    def own_process(self) -> bool:
        if self.process == "auto":
            return len(os.sched_getaffinity(0)) >= OWN_PROCESS_MIN_CPUS
        return self.process == "own"
    listen_auth: list[ListenAddress] = Field(default_factory=lambda: [SocketAddress("127.0.0.1", 1812)])
    listen_acct: list[ListenAddress] = Field(default_factory=lambda: [SocketAddress("127.0.0.1", 1813)])
    client: list[RadiusClientConfig] = []
    # More dictionary files in FreeRADIUS's format, on top of those ispd ships (standard,
    # Microsoft, MikroTik, Cisco, Juniper, DSL Forum), e.g. /usr/share/freeradius/dictionary.
    dictionaries: list[Path] = []
    # Acct-Interim-Interval sent in every Access-Accept (0: not sent). A session the NAS has not
    # reported on for stale_session_intervals intervals is closed.
    interim_interval_seconds: int = Field(default=300, ge=0, le=86400)
    stale_session_intervals: int = Field(default=3, ge=2, le=100)
    suspended: SuspendedAction = SuspendedAction.REJECT
    # The walled-garden profile: what an Access-Accept (or CoA) carries for a suspended
    # subscriber instead of the plan's attributes.
    walled_garden_attributes: list[AttributeAssignment] = []
    plan: list[PlanReplyConfig] = []
    address_pool: list[AddressPoolConfig] = []
    prefix_pool: list[PrefixPoolConfig] = []
    # An address given from a pool is the session's for this long, renewed while its NAS keeps
    # accounting for it, and given back at its Stop. Keep it above the interim interval: a NAS
    # that sends no accounting at all keeps an address only this long after Access-Accept.
    address_hold_seconds: int = Field(default=3600, ge=300, le=7 * 86400)
    # A retransmission (same source, ID and authenticator) within this long gets the first reply.
    duplicate_window_seconds: float = Field(default=30.0, ge=1, le=600)
    # A password checked against a slow verifier (scrypt) is remembered this long as a keyed
    # hash in memory, so that the next PAP of that subscriber is quick; 0: never remembered.
    auth_cache_seconds: int = Field(default=3600, ge=0, le=7 * 86400)
    # Verifier checks (each ~50 ms of CPU) waiting at once; beyond it requests are dropped and
    # the NAS retries.
    max_pending_password_checks: int = Field(default=64, ge=1, le=10_000)
    # An Access-Reject waits this long (FreeRADIUS's reject_delay): slows password guessing.
    reject_delay_seconds: float = Field(default=1.0, ge=0, le=10)
    # Disconnect-Request and CoA-Request: wait this long for an answer, send this many times.
    coa_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    coa_attempts: int = Field(default=3, ge=1, le=10)
    # A suspended or closed subscriber's session that no Disconnect or CoA has reached (the NAS
    # did not answer, or the change was made while ispd was down) gets one again this often, up
    # to coa_retry_limit exchanges; a NAK is the NAS's answer and is not retried.
    # The same for a session that a monthly quota's CoA (or Disconnect) did not reach.
    coa_retry_interval_seconds: float = Field(default=300.0, ge=10, le=86400)
    coa_retry_limit: int = Field(default=6, ge=0, le=100)
    # Housekeeping runs this often: it closes stale sessions, renews the pool addresses of open
    # sessions, sends those retries and checks quotas, so each of these lands up to this late.
    # At most 120: an address hold (300 s at the least) is renewed once half of it is left.
    housekeeping_interval_seconds: int = Field(default=60, ge=1, le=120)
    eap: EAPConfig = Field(default_factory=EAPConfig)
    # A UDP receive buffer that rides out bursts (the kernel default drops beyond ~250 requests).
    receive_buffer_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024, le=1024 * 1024 * 1024)
    # Realms proxied to other RADIUS servers ([[radius.realm]]), and the realms that are this
    # server's own: a User-Name ending in @one of these is never proxied, whatever "*" says.
    realm: list[RealmConfig] = []
    local_realms: list[RealmName] = []

    @field_validator("interim_interval_seconds")
    @classmethod
    def _interim_at_least_a_minute(cls, value: int) -> int:
        # RFC 2869 §5.16: it MUST NOT be smaller than 60, and NASes raise a smaller one (pppd's
        # radius plugin to 60): the sessions would not report as often as the Accept said.
        if 0 < value < 60:
            raise ValueError(f"{value} s: an Acct-Interim-Interval is at least 60 s (RFC 2869), or 0 for none")
        return value

    def warnings(self) -> list[ConfigWarning]:
        return self.eap.warnings()

    @model_validator(mode="after")
    def _consistent(self) -> RadiusConfig:
        if not self.enabled:
            return self
        if not self.listen_auth and not self.listen_acct:
            raise ValueError('give listen_auth or listen_acct addresses, e.g. listen_auth = ["198.18.0.1:1812"]')
        names = Counter(c.name for c in self.client)
        duplicates = sorted(n for n, count in names.items() if count > 1)
        if duplicates:
            raise ValueError(f"client: the name {duplicates[0]!r} is used twice")
        networks: set[IPv4Network | IPv6Network] = set()  # (not a test per pair: thousands of NASes)
        for client in self.client:
            if client.address in networks:
                raise ValueError(f"client: {client.address} is configured twice")
            networks.add(client.address)
        plans = [p.plan for p in self.plan]
        if len(plans) != len(set(plans)):
            raise ValueError("plan: a plan has two [[radius.plan]] tables")
        pool_names = [p.name for p in self.address_pool]
        if len(pool_names) != len(set(pool_names)):
            raise ValueError("address_pool: two pools have one name")
        realms = [r.name for r in self.realm]
        twice = sorted({n for n in realms if realms.count(n) > 1})
        if twice:
            raise ValueError(f"realm: {twice[0]!r} has two [[radius.realm]] tables")
        local = sorted(set(realms) & set(self.local_realms))
        if local:
            raise ValueError(f"realm: {local[0]!r} is in local_realms too: proxied or local, not both")
        spans = sorted((*p.bounds, p.name) for p in self.address_pool)
        for (_, last, name), (first, _, other) in itertools.pairwise(spans):
            if first <= last:
                raise ValueError(f"address_pool: pools {name!r} and {other!r} overlap")
        prefix_names = [p.name for p in self.prefix_pool]
        twice = sorted({n for n in prefix_names if prefix_names.count(n) > 1})
        if twice:
            raise ValueError(f"prefix_pool: two pools are named {twice[0]!r}")
        for i, earlier in enumerate(self.prefix_pool):
            for later in self.prefix_pool[i + 1:]:
                if earlier.prefix.overlaps(later.prefix):
                    raise ValueError(f"prefix_pool: pools {earlier.name!r} ({earlier.prefix}) and {later.name!r} "
                                     f"({later.prefix}) overlap")
        for p in self.plan:
            if p.prefix_pool is not None and p.prefix_pool not in prefix_names:
                known = ", ".join(repr(n) for n in prefix_names) or "none is configured"
                raise ValueError(f"plan {p.plan!r}: prefix_pool {p.prefix_pool!r} names no [[radius.prefix_pool]] "
                                 f"(known: {known})")
        return self


def client_networks(config: RadiusConfig) -> list[tuple[IPNetwork, RadiusClientConfig]]:
    """The clients, most specific network first (a host entry wins over its subnet's)."""
    return sorted(((c.address, c) for c in config.client), key=lambda pair: -pair[0].prefixlen)
