"""The RADIUS server's decisions: (request, NAS, what the store says, now) → reply.

Theory of operation
-------------------
Access-Request (RFC 2865 §4.1), after the transport found the NAS and decoded the packet:

1. Message-Authenticator (RFC 3579 §3.2) and BlastRADIUS (CVE-2024-3596), per NAS: a value that
   is present must be right; absent, the request is dropped when the NAS's
   ``require_message_authenticator`` is yes (or auto, once that NAS has sent one), when it
   carries EAP (always required) or Proxy-State (``limit_proxy_state``). Status-Server always
   needs one (RFC 5997 §3) and is answered Access-Accept.
2. The method, from what the request carries: EAP-Message (EAP-MD5, ``ispd.radius.eap``; and
   EAP-TTLS/PAP and PEAP/MSCHAPv2 in a TLS tunnel, ``ispd.radius.eaptls``, with the login and
   its credentials inside the tunnel, and EAP-TLS with a client certificate that must name the
   login; a Nak moves to the first of ``eap_methods`` it names),
   User-Password (PAP), CHAP-Password (CHAP, RFC 2865 §2.2), MS-CHAP-Challenge with
   MS-CHAP2-Response (MS-CHAPv2) or MS-CHAP-Response (MS-CHAPv1) (RFC 2548). None: reject.
3. The credentials: the login (User-Name) must name a subscriber or one of its ``username``
   reservations, and the method needs a stored form that serves it (PAP and EAP-TTLS: any;
   MS-CHAP and PEAP: the NT hash or the cleartext; CHAP and EAP-MD5: the cleartext). PAP against
   a scrypt verifier is the one slow check: the decision is handed back as ``pending`` for the
   transport to run off the loop, and ``finish_password_check`` completes it.
4. Authorization: closed subscribers are rejected; suspended ones are rejected or accepted into
   the walled-garden profile (``[radius] suspended``, per plan); a plan's ``max_sessions``
   bounds the open sessions (Simultaneous-Use).
5. The Access-Accept carries Class (``ispd:<subscriber id>``, echoed in accounting), the plan's
   Session-Timeout and Idle-Timeout, Acct-Interim-Interval, Framed-IP-Address (the login's
   reservation, or a reservation of the subscriber matching Calling-Station-Id, the circuit-id
   or the remote-id) or else the plan's Framed-Pool, the rate limit in the NAS's dialect, the
   plan's extra attributes and the method's own (MS-CHAP2-Success and MPPE keys, EAP-Success).
   What the store must give first comes back as a ``PendingClaim`` for the transport, and
   ``finish_claim`` completes it: an address of the plan's ``address_pool``, and, for a
   login whose reservations fix no prefix (not in the walled garden), a prefix of its
   ``prefix_pool`` reserved for that login for good, in its reservation or a new one
   (Delegated-IPv6-Prefix; none to be had is no reject). The login's reserved IPv6 address
   and prefix stay with the station whose open session has them: a concurrent session of the
   same login from another station is accepted without them (``withheld``).

Rejects carry only what the method needs (MS-CHAP-Error, EAP-Failure): nothing that tells a
client why. The reason goes to metrics and logs (``RejectReason``).

Accounting-Request (RFC 2866): the Request Authenticator must check out (else dropped); the
request becomes an ``AccountingRecord`` — event time is arrival minus Acct-Delay-Time, octets
include their Gigawords, the subscriber comes from Class (when it names one the directory knows)
or else the login — for the store to
apply durably before the transport answers. Accounting-Requests need no Message-Authenticator
(their authenticator already covers the packet) but one that is present must be right.

Deliberately not here: sockets, the duplicate cache, the store, timers (the transport's).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import TypeVar

from ispd.credentials import PasswordChecker, nt_hash
from ispd.dhcp.identifiers import normalize_key, opaque_text
from ispd.logs import get_logger
from ispd.radius import mschap
from ispd.radius.addresses import holder_of, line_of
from ispd.radius.attributes import (
    AttributeValueError,
    ReplyAttribute,
    ipv6_prefix_value,
    subscriber_reply_attribute,
)
from ispd.radius.codec import (
    MAX_ATTRIBUTE_VALUE,
    Attr,
    Code,
    Packet,
    RadiusDecodeError,
    Vendor,
    chap_response,
    check_message_authenticator,
    check_request_authenticator,
    hide_password,
    reveal_password,
    u32,
    vendor_specific,
)
from ispd.radius.config import EAPMethod, MessageAuthenticatorPolicy, NasKind, SuspendedAction
from ispd.radius.dictionary import Dictionary
from ispd.radius.directory import AuthSubject, Directory, Fixed
from ispd.radius.eap import (
    Conversation,
    EAPCode,
    EAPConversations,
    EAPPacket,
    EAPType,
    check_md5_response,
    decode_eap,
    eap_attributes,
    encode_eap,
    md5_challenge_request,
    md5_response_value,
)
from ispd.radius.eaptls import (
    EAP_MSCHAPV2,
    EAP_PEAP,
    EAP_TLS,
    EAP_TLV,
    EAP_TTLS,
    InnerPAP,
    Tunnel,
    TunnelError,
    TunnelServer,
    TunnelStep,
    certificate_names,
    fragment_size_for,
    result_tlv,
)
from ispd.radius.proxy import Realm, Realms
from ispd.radius.sessions import OpenSessions, fills_in
from ispd.store.models import (
    AccountingRecord,
    AccountingStatus,
    OverQuota,
    RadiusSession,
    Reservation,
    ReservationKind,
    SubscriberStatus,
)

_U32 = struct.Struct("!I")
CLASS_PREFIX = b"ispd:"
WALLED_SUFFIX = b":walled"
EAP_CHALLENGE_TIMEOUT = 30  # Session-Timeout of an Access-Challenge: the NAS's retry timer (RFC 3579 §2.6.1)
_MS_MPPE_ENCRYPTION_POLICY = 7
_MS_MPPE_ENCRYPTION_TYPES = 8
_MS_CHAP_ERROR = 2
_MS_CHAP_RESPONSE = 1
_MS_CHAP_MPPE_KEYS = 12
_MS_CHAP_CHALLENGE = 11
_MS_MPPE_SEND_KEY = 16
_MS_MPPE_RECV_KEY = 17
_MS_CHAP2_RESPONSE = 25
_MS_CHAP2_SUCCESS = 26
_ADSL_AGENT_CIRCUIT_ID = 1
_ADSL_AGENT_REMOTE_ID = 2
# Plain ints for the hot path: an enum member lookup (Attr.X) costs ~0.2 µs in CPython 3.11.
_USER_NAME, _USER_PASSWORD, _CHAP_PASSWORD = int(Attr.USER_NAME), int(Attr.USER_PASSWORD), int(Attr.CHAP_PASSWORD)
_EAP_MESSAGE, _MESSAGE_AUTHENTICATOR = int(Attr.EAP_MESSAGE), int(Attr.MESSAGE_AUTHENTICATOR)
_EAP_TYPES = {EAPMethod.MD5: int(EAPType.MD5_CHALLENGE), EAPMethod.TTLS: EAP_TTLS,
              EAPMethod.PEAP: EAP_PEAP, EAPMethod.TLS: EAP_TLS}  # as a Nak names them
_TUNNEL_METHODS = {EAP_TLS: "eap-tls", EAP_TTLS: "eap-ttls", EAP_PEAP: "peap"}
# EAP-MSCHAPv2 op codes (draft-kamath-pppext-eap-mschapv2 §2) and PEAP's Result TLV (type 3,
# mandatory) with its status, success or failure
_MSCHAPV2_CHALLENGE, _MSCHAPV2_RESPONSE, _MSCHAPV2_SUCCESS = 1, 2, 3
_RESULT_TLV_SUCCESS = b"\x80\x03\x00\x02\x00\x01"  # mandatory, Result, length 2, Success
_PROXY_STATE, _VENDOR_SPECIFIC = int(Attr.PROXY_STATE), int(Attr.VENDOR_SPECIFIC)
_ACCESS_REQUEST, _STATUS_SERVER = int(Code.ACCESS_REQUEST), int(Code.STATUS_SERVER)
_ACCESS_ACCEPT, _ACCESS_REJECT = int(Code.ACCESS_ACCEPT), int(Code.ACCESS_REJECT)
_ACTIVE, _CLOSED = SubscriberStatus.ACTIVE, SubscriberStatus.CLOSED
_CLASS, _NAS_IP_ADDRESS, _NAS_IPV6_ADDRESS = int(Attr.CLASS), int(Attr.NAS_IP_ADDRESS), int(Attr.NAS_IPV6_ADDRESS)
_ACCT_STATUS_TYPE, _ACCT_DELAY_TIME = int(Attr.ACCT_STATUS_TYPE), int(Attr.ACCT_DELAY_TIME)
_ACCT_SESSION_ID, _ACCT_TERMINATE_CAUSE = int(Attr.ACCT_SESSION_ID), int(Attr.ACCT_TERMINATE_CAUSE)
_ACCT_INPUT_OCTETS, _ACCT_INPUT_GIGAWORDS = int(Attr.ACCT_INPUT_OCTETS), int(Attr.ACCT_INPUT_GIGAWORDS)
_ACCT_OUTPUT_OCTETS, _ACCT_OUTPUT_GIGAWORDS = int(Attr.ACCT_OUTPUT_OCTETS), int(Attr.ACCT_OUTPUT_GIGAWORDS)
_ACCT_INPUT_PACKETS, _ACCT_OUTPUT_PACKETS = int(Attr.ACCT_INPUT_PACKETS), int(Attr.ACCT_OUTPUT_PACKETS)
_ACCT_SESSION_TIME, _NAS_IDENTIFIER = int(Attr.ACCT_SESSION_TIME), int(Attr.NAS_IDENTIFIER)
_ACCT_INTERIM_INTERVAL = int(Attr.ACCT_INTERIM_INTERVAL)
_FRAMED_IP_ADDRESS, _FRAMED_IPV6_PREFIX = int(Attr.FRAMED_IP_ADDRESS), int(Attr.FRAMED_IPV6_PREFIX)
_DELEGATED_IPV6_PREFIX, _CALLING_STATION_ID = int(Attr.DELEGATED_IPV6_PREFIX), int(Attr.CALLING_STATION_ID)
_FRAMED_IPV6_ADDRESS = int(Attr.FRAMED_IPV6_ADDRESS)
_CALLED_STATION_ID, _NAS_PORT_ID = int(Attr.CALLED_STATION_ID), int(Attr.NAS_PORT_ID)
_FRAMED_MTU = int(Attr.FRAMED_MTU)
_STATUS_TYPES = {1: AccountingStatus.START, 2: AccountingStatus.STOP, 3: AccountingStatus.INTERIM_UPDATE,
                 7: AccountingStatus.ACCOUNTING_ON, 8: AccountingStatus.ACCOUNTING_OFF}

log = get_logger("ispd.radius")


def _line_keys(packet: Packet) -> list[tuple[ReservationKind, str]]:
    """The request's line as reservations name one: Calling-Station-Id (as a MAC), the DSL Forum
    circuit-id and remote-id, NAS-Port-Id (as a circuit-id)."""
    keys: list[tuple[ReservationKind, str]] = []
    calling = packet.text(Attr.CALLING_STATION_ID)
    if calling:
        with contextlib.suppress(ValueError):  # not a MAC address: nothing to match
            keys.append((ReservationKind.MAC, normalize_key("mac", calling)))
    for vendor_type, kind in ((_ADSL_AGENT_CIRCUIT_ID, ReservationKind.CIRCUIT_ID),
                              (_ADSL_AGENT_REMOTE_ID, ReservationKind.REMOTE_ID)):
        value = packet.vendor_attribute(Vendor.DSL_FORUM, vendor_type)
        if value:
            keys.append((kind, opaque_text(value)))
    port_id = packet.get(Attr.NAS_PORT_ID)
    if port_id:
        keys.append((ReservationKind.CIRCUIT_ID, opaque_text(port_id)))
    return keys


class RejectReason(StrEnum):
    """Why an Access-Reject (a metric label: keep it closed)."""

    NO_USER_NAME = "no_user_name"
    NO_CREDENTIALS = "no_credentials"  # neither a password nor a challenge response
    UNKNOWN_USER = "unknown_user"
    WRONG_PASSWORD = "wrong_password"
    NO_PASSWORD_FORM = "no_password_form"  # the method needs a form the store does not keep
    SUSPENDED = "suspended"
    CLOSED = "closed"
    SIMULTANEOUS_USE = "simultaneous_use"
    EAP_FAILED = "eap_failed"  # malformed, unknown or expired conversation, another method asked
    POOL_EXHAUSTED = "pool_exhausted"  # the plan's address pool has no address left
    HOME_SERVER_UNREACHABLE = "home_server_unreachable"  # a proxied realm's servers did not answer
    PROXY_LOOP = "proxy_loop"  # a request this ispd proxied came back to it: the realm routes here
    WRONG_LINE = "wrong_line"  # the plan's line_lock, and the request came from none of its lines


class Drop(StrEnum):
    """Why a request got no reply, beyond the codec's reasons (a metric label: keep it closed)."""

    UNKNOWN_CLIENT = "unknown_client"
    WRONG_PORT = "wrong_port"  # e.g. an Accounting-Request to the auth port, or a response
    BAD_REQUEST_AUTHENTICATOR = "bad_request_authenticator"
    MISSING_STATUS_TYPE = "missing_status_type"  # an Accounting-Request without Acct-Status-Type
    MISSING_MESSAGE_AUTHENTICATOR = "missing_message_authenticator"
    BAD_MESSAGE_AUTHENTICATOR = "bad_message_authenticator"
    PROXY_STATE_WITHOUT_MESSAGE_AUTHENTICATOR = "proxy_state_without_message_authenticator"
    DUPLICATE_IN_PROGRESS = "duplicate_in_progress"
    PASSWORD_CHECKS_FULL = "password_checks_full"  # max_pending_password_checks scrypt checks waiting
    ACCOUNTING_QUEUE_FULL = "accounting_queue_full"  # the store cannot keep up
    STORE_ERROR = "store_error"
    ADDRESS_CLAIMS_FULL = "address_claims_full"  # MAX_PENDING_CLAIMS Access-Accepts waiting for an address
    REPLY_TOO_LARGE = "reply_too_large"  # over 4096 octets: the request's Proxy-States and the reply's own
    INTERNAL_ERROR = "internal_error"


@dataclass(slots=True)
class Nas:
    """A configured client as the engine uses it; ``message_authenticator_seen`` is what
    ``auto`` learns (kept for the life of the process, as FreeRADIUS does; never for a network)."""

    name: str
    secret: bytes
    kind: NasKind = NasKind.GENERIC
    require_message_authenticator: MessageAuthenticatorPolicy = MessageAuthenticatorPolicy.YES
    limit_proxy_state: MessageAuthenticatorPolicy = MessageAuthenticatorPolicy.YES
    coa_port: int = 3799
    # The addresses the client is configured as: a NAS-IP-Address outside them is not believed
    # (another NAS's sessions are not a client's to open, close or have disconnected).
    network: IPv4Network | IPv6Network | None = None
    message_authenticator_seen: bool = False

    @property
    def one_address(self) -> bool:
        """Configured as one address, not a network (of NASes that need not run the same firmware)."""
        return self.network is None or self.network.prefixlen == self.network.max_prefixlen

    def requires(self, policy: MessageAuthenticatorPolicy) -> bool:
        return policy == MessageAuthenticatorPolicy.YES or (
            policy == MessageAuthenticatorPolicy.AUTO and self.message_authenticator_seen)


@dataclass(frozen=True, slots=True)
class PlanReply:
    attributes: tuple[ReplyAttribute, ...] = ()
    framed_pool: str | None = None
    suspended: SuspendedAction | None = None
    address_pool: str | None = None  # ispd gives Framed-IP-Address from this pool
    prefix_pool: str | None = None  # ispd reserves a Delegated-IPv6-Prefix from this pool, for good
    line_lock: bool = False  # logins only from the subscriber's reserved lines (when it has any)


@dataclass(slots=True)
class ReplySettings:
    interim_interval: int = 300
    suspended: SuspendedAction = SuspendedAction.REJECT
    walled_garden: tuple[ReplyAttribute, ...] = ()
    plans: dict[str, PlanReply] = field(default_factory=dict)


Found = tuple[AuthSubject, Fixed | None] | None  # who logs in with a login, and what it has reserved


@dataclass(slots=True)
class PendingCheck:
    """A PAP password to check against a scrypt verifier, off the event loop."""

    subject: AuthSubject
    fixed: Fixed | None  # what a reservation fixes for the login
    password: bytes
    verifier: str
    # PAP inside EAP-TTLS: the method's name, and what its Access-Accept or Access-Reject carries
    method: str = "pap"
    method_attributes: bytes = b""
    failure: Callable[[], bytes] | None = None
    # When the check cannot even start (too many at once) and the request is dropped for the NAS
    # to send again: puts back what answering it needs (the EAP-TTLS tunnel under its State).
    restore: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class Withheld:
    """The login's reserved IPv6 left out of an Access-Accept (``kinds``: "prefix",
    "address"), and the open session from another station that has them."""

    kinds: tuple[str, ...]
    login: str
    session: RadiusSession


@dataclass(slots=True)
class PendingClaim:
    """An Access-Accept that waits for the store: for an address of ``pool`` (claimed durably
    before the NAS is told), for a prefix of ``prefix_pool`` reserved for the login (its
    first on a plan with a prefix pool), or for both."""

    subject: AuthSubject
    pool: str | None
    holder: str
    walled: bool
    method: str
    method_attributes: bytes
    hw_address: str | None
    line: str | None
    failure: Callable[[], bytes] | None = None  # what a reject carries (EAP-Failure, MS-CHAP-Error)
    # When the claim cannot be made now and the request is dropped: as PendingCheck's.
    restore: Callable[[], None] | None = None
    acct_session_id: str | None = None  # the session the request names (a re-authentication)
    # What the login's and the line's reservations fix, which goes out with what the store gives.
    fixed: Fixed | None = None
    prefix_pool: str | None = None
    prefix_reservation: Reservation | None = None  # the login's reservation to hold it; None: a new one of the username
    withheld: Withheld | None = None  # the login's reserved IPv6 another station's session has


@dataclass(slots=True)
class Decision:
    """What to answer: ``code`` None means drop (``drop`` says why) or wait (``pending``)."""

    code: int | None = None
    attributes: bytes = b""
    method: str = ""
    reject: RejectReason | None = None
    drop: str = Drop.INTERNAL_ERROR
    pending: PendingCheck | None = None
    claim: PendingClaim | None = None
    subscriber_id: int | None = None
    detail: str | None = None  # why a reject, beyond its reason (a TLS error), for the log
    proxy: Realm | None = None  # not ours: the service sends it to this realm's home servers
    # An Access-Accept without the login's reserved IPv6 ("prefix", "address"): another
    # station's open session of the login has them (the service counts and logs it).
    withheld: Withheld | None = None


class AuthEngine:
    def __init__(self, directory: Directory, sessions: OpenSessions, passwords: PasswordChecker,
                 dictionary: Dictionary, settings: ReplySettings) -> None:
        self.directory = directory
        self.sessions = sessions
        self.passwords = passwords
        self.dictionary = dictionary
        self.settings = settings
        self.conversations = EAPConversations()
        # The address the request being handled came from (``handle``, ``finish_password_check``):
        # a client that is a network is several NASes, told apart by it (``_nas_address``).
        self._source: str | None = None
        self.eap_methods: list[EAPMethod] = [EAPMethod.MD5]  # offered, in order (the service sets them)
        self.tunnels: TunnelServer | None = None  # EAP-TTLS and PEAP, when a certificate is configured
        self.realms = Realms([], [])  # proxied realms ([[radius.realm]]; the service sets them)
        self._mikrotik_rate_limit = dictionary.attribute("Mikrotik-Rate-Limit").code

    # --- the entry point

    def handle(self, packet: Packet, nas: Nas, now: float, source: str | None = None) -> Decision:
        """``source``: the address the request came from."""
        self._source = source
        code = packet.code
        if code == _STATUS_SERVER:
            return self._status_server(packet, nas)
        if code != _ACCESS_REQUEST:
            return Decision(drop=Drop.WRONG_PORT)
        refused = self._check_message_authenticator(packet, nas)
        if refused is not None:
            return Decision(drop=refused)
        first = packet.first
        login = first.get(_USER_NAME)
        if login is None:
            return self._reject(RejectReason.NO_USER_NAME, "none")
        # NUL-terminated by some NASes (RFC 2865 §5 says it should not be): read without, as
        # FreeRADIUS does, so that "alice\0" is alice.
        username = login.rstrip(b"\x00").decode("utf-8", "replace")
        found = self.directory.find(username)
        if found is None and self.realms:
            realm = self.realms.route(username)  # a local login wins over a realm of that name
            if realm is not None:
                if self.realms.looped(packet):
                    return self._reject(RejectReason.PROXY_LOOP, "proxy",
                                        detail=f"proxied to realm {realm.name!r} already, and back here again")
                return Decision(proxy=realm, method="proxy")
        if _EAP_MESSAGE in first:
            return self._eap(packet, nas, username, found, now)
        hidden = first.get(_USER_PASSWORD)
        if hidden is not None:
            return self._pap(packet, nas, hidden, found, now)
        chap = first.get(_CHAP_PASSWORD)
        if chap is not None:
            return self._chap(packet, nas, chap, found)
        challenge = packet.vendor_attribute(Vendor.MICROSOFT, _MS_CHAP_CHALLENGE)
        if challenge is not None:
            v2 = packet.vendor_attribute(Vendor.MICROSOFT, _MS_CHAP2_RESPONSE)
            if v2 is not None:
                return self._mschap_v2(packet, nas, username, challenge, v2, found)
            v1 = packet.vendor_attribute(Vendor.MICROSOFT, _MS_CHAP_RESPONSE)
            if v1 is not None:
                return self._mschap_v1(packet, nas, challenge, v1, found)
        return self._reject(RejectReason.NO_CREDENTIALS, "none")

    def _check_message_authenticator(self, packet: Packet, nas: Nas) -> str | None:
        if packet.signature_at:
            try:
                valid = check_message_authenticator(packet, nas.secret)
            except RadiusDecodeError as exc:
                return str(exc.reason)
            if not valid:
                return Drop.BAD_MESSAGE_AUTHENTICATOR
            if not nas.message_authenticator_seen and _EAP_MESSAGE not in packet.first and nas.one_address:
                # Not learnt from EAP, which always carries one (RFC 3579 §3.2): a NAS that does
                # 802.1X and also MAC authentication or PAP, without one there, is not upgraded
                # by it. Nor for a network of NASes: one upgraded is no sign of the others'
                # firmware (FreeRADIUS 3.2.5 leaves "auto" alone in both cases).
                nas.message_authenticator_seen = True
                if MessageAuthenticatorPolicy.AUTO in (nas.require_message_authenticator, nas.limit_proxy_state):
                    log.warning("radius.client.message_authenticator_required", nas=nas.name)
            return None
        if _EAP_MESSAGE in packet.first or nas.requires(nas.require_message_authenticator):
            return Drop.MISSING_MESSAGE_AUTHENTICATOR
        if _PROXY_STATE in packet.first and nas.requires(nas.limit_proxy_state):
            return Drop.PROXY_STATE_WITHOUT_MESSAGE_AUTHENTICATOR
        return None

    def _status_server(self, packet: Packet, nas: Nas) -> Decision:
        # RFC 5997 §3: without a (valid) Message-Authenticator it is silently discarded.
        try:
            if not check_message_authenticator(packet, nas.secret):
                return Decision(drop=Drop.BAD_MESSAGE_AUTHENTICATOR)
        except RadiusDecodeError as exc:
            return Decision(drop=str(exc.reason))
        return Decision(Code.ACCESS_ACCEPT, method="status")

    # --- methods

    def _pap(self, packet: Packet, nas: Nas, hidden: bytes, found: Found,
             now: float) -> Decision:
        password = reveal_password(hidden, nas.secret, packet.authenticator)
        if found is None:
            return self._reject(RejectReason.UNKNOWN_USER, "pap")
        subject, fixed = found
        if password is None:
            return self._reject(RejectReason.WRONG_PASSWORD, "pap", subject)
        verdict = self.passwords.check_fast(subject.id, subject.credentials, password, now)
        if verdict is None:
            verifier = subject.credentials.verifier
            assert verifier is not None  # check_fast answers False when there is no verifier
            return Decision(method="pap", pending=PendingCheck(subject, fixed, password, verifier),
                            subscriber_id=subject.id)
        if not verdict:
            return self._reject(RejectReason.WRONG_PASSWORD, "pap", subject)
        return self._authorize(packet, nas, subject, fixed, "pap")

    def finish_password_check(self, packet: Packet, nas: Nas, pending: PendingCheck, ok: bool,
                              now: float, source: str | None = None) -> Decision:
        self._source = source
        # The subscriber as it is now: a suspension or a new password during the check counts.
        subject = self.directory.subjects.get(pending.subject.id)
        method, failure = pending.method, pending.failure
        if subject is None:
            return self._reject(RejectReason.UNKNOWN_USER, method, failure=failure)
        if not ok or subject.credentials.updated_at != pending.subject.credentials.updated_at:
            return self._reject(RejectReason.WRONG_PASSWORD, method, subject, failure)
        self.passwords.remember(subject.id, subject.credentials, pending.password, now)
        decision = self._authorize(packet, nas, subject, pending.fixed, method, pending.method_attributes, failure)
        if decision.claim is not None:
            decision.claim.restore = pending.restore
        return decision

    def _chap(self, packet: Packet, nas: Nas, chap: bytes, found: Found) -> Decision:
        if found is None:
            return self._reject(RejectReason.UNKNOWN_USER, "chap")
        subject, fixed = found
        cleartext = subject.credentials.cleartext
        if cleartext is None:
            return self._reject(RejectReason.NO_PASSWORD_FORM, "chap", subject)
        challenge = packet.get(Attr.CHAP_CHALLENGE) or packet.authenticator  # RFC 2865 §5.3
        if len(chap) != 17 or not hmac.compare_digest(chap_response(chap[0], cleartext.encode("utf-8"), challenge),
                                                      chap[1:]):
            return self._reject(RejectReason.WRONG_PASSWORD, "chap", subject)
        return self._authorize(packet, nas, subject, fixed, "chap")

    def _nt_hash(self, subject: AuthSubject) -> bytes | None:
        credentials = subject.credentials
        if credentials.nt_hash is not None:
            return credentials.nt_hash
        if credentials.cleartext is not None:
            return nt_hash(credentials.cleartext)
        return None

    def _mschap_v2(self, packet: Packet, nas: Nas, username: str, challenge: bytes, response: bytes,
                   found: Found) -> Decision:
        ident = response[0] if response else 0

        def error() -> bytes:
            return _encode(vendor_specific(Vendor.MICROSOFT, _MS_CHAP_ERROR, mschap.mschap_error_value(ident)))

        if found is None:
            return self._reject(RejectReason.UNKNOWN_USER, "mschapv2", failure=error)
        subject, fixed = found
        nt = self._nt_hash(subject)
        if nt is None:
            return self._reject(RejectReason.NO_PASSWORD_FORM, "mschapv2", subject, failure=error)
        if len(challenge) != 16 or len(response) != 50:
            return self._reject(RejectReason.WRONG_PASSWORD, "mschapv2", subject, failure=error)
        peer_challenge, nt_response = response[2:18], response[26:50]
        user = mschap.strip_domain(username.encode("utf-8"))
        if not mschap.verify_nt_response_v2(nt_response, challenge, peer_challenge, user, nt):
            return self._reject(RejectReason.WRONG_PASSWORD, "mschapv2", subject, failure=error)
        proof = mschap.authenticator_response(nt, nt_response, peer_challenge, challenge, user)
        send_key, recv_key = mschap.mppe_keys_v2(nt, nt_response)
        hide_key = mschap.encrypt_mppe_key  # salted with the request's authenticator (RFC 2548 §2.4.2)
        method_attributes = _encode(
            vendor_specific(Vendor.MICROSOFT, _MS_CHAP2_SUCCESS, mschap.mschap2_success_value(ident, proof)),
            vendor_specific(Vendor.MICROSOFT, _MS_MPPE_SEND_KEY, hide_key(send_key, nas.secret, packet.authenticator)),
            vendor_specific(Vendor.MICROSOFT, _MS_MPPE_RECV_KEY, hide_key(recv_key, nas.secret, packet.authenticator)),
            vendor_specific(Vendor.MICROSOFT, _MS_MPPE_ENCRYPTION_POLICY, u32(1)),  # encryption allowed
            vendor_specific(Vendor.MICROSOFT, _MS_MPPE_ENCRYPTION_TYPES, u32(6)),  # RC4 40 or 128 bit
        )
        return self._authorize(packet, nas, subject, fixed, "mschapv2", method_attributes, error)

    def _mschap_v1(self, packet: Packet, nas: Nas, challenge: bytes, response: bytes,
                   found: Found) -> Decision:
        ident = response[0] if response else 0

        def error() -> bytes:  # RFC 2433 §8: version 2, an 8-octet challenge, as FreeRADIUS sends it
            return _encode(vendor_specific(Vendor.MICROSOFT, _MS_CHAP_ERROR,
                                           mschap.mschap_error_value(ident, version=2, message="")))

        if found is None:
            return self._reject(RejectReason.UNKNOWN_USER, "mschapv1", failure=error)
        subject, fixed = found
        nt = self._nt_hash(subject)
        if nt is None:
            return self._reject(RejectReason.NO_PASSWORD_FORM, "mschapv1", subject, failure=error)
        # Flags bit 1: the NT-Response is used (RFC 2548 §2.1.3); an LM-only response is refused.
        if len(challenge) != 8 or len(response) != 50 or not response[1] & 1:
            return self._reject(RejectReason.WRONG_PASSWORD, "mschapv1", subject, failure=error)
        if not mschap.verify_nt_response_v1(response[26:50], challenge, nt):
            return self._reject(RejectReason.WRONG_PASSWORD, "mschapv1", subject, failure=error)
        keys = hide_password(mschap.mppe_keys_v1(nt), nas.secret, packet.authenticator)
        method_attributes = _encode(
            vendor_specific(Vendor.MICROSOFT, _MS_CHAP_MPPE_KEYS, keys),
            vendor_specific(Vendor.MICROSOFT, _MS_MPPE_ENCRYPTION_POLICY, u32(1)),
            vendor_specific(Vendor.MICROSOFT, _MS_MPPE_ENCRYPTION_TYPES, u32(6)),
        )
        return self._authorize(packet, nas, subject, fixed, "mschapv1", method_attributes, error)

    def _eap(self, packet: Packet, nas: Nas, username: str, found: Found,
             now: float) -> Decision:
        message = b"".join(packet.get_all(Attr.EAP_MESSAGE))
        if not message:  # EAP-Start (RFC 3579 §2.1): the NAS asks the server to begin
            request = encode_eap(EAPPacket(EAPCode.REQUEST, 0, EAPType.IDENTITY))
            return Decision(Code.ACCESS_CHALLENGE, _encode((Attr.EAP_MESSAGE, request)), method=self._first_method())
        eap = decode_eap(message)
        if eap is None or eap.code != EAPCode.RESPONSE:
            return self._reject(RejectReason.EAP_FAILED, self._first_method(), failure=partial(_eap_failure, 0))
        if eap.type == EAPType.IDENTITY:
            # A challenge for every identity, known or not: the reply must not tell which exist.
            return self._eap_offer(self.eap_methods[0], username, eap.identifier, now)
        state = packet.get(Attr.STATE) or b""
        failure = partial(_eap_failure, eap.identifier)
        # Whom the outer identity names, if anyone (EAP-TLS's always, TTLS's and PEAP's unless
        # anonymous): a failure of the tunnel is logged as that subscriber's, not as nobody's,
        # which every other station's failure on the same access point would hide for a minute.
        claimed = found[0] if found is not None else None
        if eap.type in _TUNNEL_METHODS:
            method = _TUNNEL_METHODS[eap.type]
            tunnel = self.tunnels.take(state, now) if self.tunnels is not None else None
            if tunnel is None or tunnel.outer_username != username:
                return self._reject(RejectReason.EAP_FAILED, method, claimed, failure,
                                    detail="no tunnel under this State and User-Name (expired, dropped for newer ones "
                                           "when the tunnels were full, or never begun)")
            tunnel.fragment_size = fragment_size_for(_u32(packet.first, _FRAMED_MTU))
            return self._tunnel(packet, nas, eap, message, tunnel, state, now, claimed)
        conversation = self.conversations.take(state, now)
        if eap.type == EAPType.NAK:
            return self._nak(eap, username, state, conversation, now)
        response = md5_response_value(eap)
        if conversation is None or response is None or conversation.username != username:
            return self._reject(RejectReason.EAP_FAILED, _method_name(eap.type) or self._first_method(),
                                failure=failure)
        if found is None:
            return self._reject(RejectReason.UNKNOWN_USER, "eap-md5", failure=failure)
        subject, fixed = found
        cleartext = subject.credentials.cleartext
        if cleartext is None:
            return self._reject(RejectReason.NO_PASSWORD_FORM, "eap-md5", subject, failure)
        if (eap.identifier != conversation.identifier
                or not check_md5_response(eap.identifier, cleartext.encode("utf-8"), conversation.challenge, response)):
            return self._reject(RejectReason.WRONG_PASSWORD, "eap-md5", subject, failure)
        success = _encode((Attr.EAP_MESSAGE, encode_eap(EAPPacket(EAPCode.SUCCESS, eap.identifier))))
        return _on_drop(self._authorize(packet, nas, subject, fixed, "eap-md5", success, failure),
                        partial(self.conversations.put_back, state, conversation))

    def _nak(self, eap: EAPPacket, username: str, state: bytes, conversation: Conversation | None,
             now: float) -> Decision:
        """The peer wants another method (RFC 3748 §5.3.1): the first of ours it names, but only
        in answer to the request that proposed the current one (an MD5 challenge, a Start)."""
        failure = partial(_eap_failure, eap.identifier)
        current = None
        if conversation is not None:
            if conversation.username == username and conversation.identifier == eap.identifier:
                current = int(EAPType.MD5_CHALLENGE)
        elif self.tunnels is not None:
            tunnel = self.tunnels.take(state, now)
            if (tunnel is not None and tunnel.outer_username == username and tunnel.identifier == eap.identifier
                    and tunnel.phase == "start"):
                current = tunnel.method
        if current is None:
            return self._reject(RejectReason.EAP_FAILED, self._first_method(), failure=failure,
                                detail="a Nak that answers no method proposal")
        wanted = next((m for m in self.eap_methods if _EAP_TYPES[m] in eap.data and _EAP_TYPES[m] != current), None)
        if wanted is None:  # counted as a reject of the method proposed, the one the peer refused
            return self._reject(RejectReason.EAP_FAILED, _method_name(current) or "eap-md5", failure=failure,
                                detail=f"a Nak for types {list(eap.data[:8])}: none offered here")
        return self._eap_offer(wanted, username, eap.identifier, now)

    def _first_method(self) -> str:
        """The metric label of the method offered first: a failure that names no method of ours
        (a malformed packet, a Nak that answers nothing) is counted under it, not under EAP-MD5,
        which may not even be offered."""
        return _method_name(_EAP_TYPES[self.eap_methods[0]]) or "eap-md5"

    def _eap_offer(self, method: EAPMethod, username: str, answered: int, now: float) -> Decision:
        """An Access-Challenge that starts ``method``: the EAP-Request after the response ``answered``."""
        identifier = (answered + 1) & 0xFF
        if method != EAPMethod.MD5 and self.tunnels is not None:
            kind = _EAP_TYPES[method]
            try:
                return self._challenge(self.tunnels.start(kind, username, identifier, now), _TUNNEL_METHODS[kind])
            except TunnelError as exc:  # EAP-TLS asked for in a Nak, and no client CA configured
                return self._reject(RejectReason.EAP_FAILED, _TUNNEL_METHODS[kind],
                                    failure=partial(_eap_failure, answered), detail=str(exc))
        state, started = self.conversations.begin(username, identifier, now)
        return self._challenge(TunnelStep(state, md5_challenge_request(identifier, started.challenge)), "eap-md5")

    @staticmethod
    def _challenge(step: TunnelStep, method: str) -> Decision:
        assert step.request is not None
        request = encode_eap(step.request)
        attributes = _encode(*((Attr.EAP_MESSAGE, part) for part in eap_attributes(request)),
                             (Attr.STATE, step.state), (Attr.SESSION_TIMEOUT, u32(EAP_CHALLENGE_TIMEOUT)))
        return Decision(Code.ACCESS_CHALLENGE, attributes, method=method)

    def _tunnel(self, packet: Packet, nas: Nas, eap: EAPPacket, message: bytes, tunnel: Tunnel, state: bytes,
                now: float, claimed: AuthSubject | None = None) -> Decision:
        assert self.tunnels is not None
        method = _TUNNEL_METHODS[tunnel.method]
        failure = partial(_eap_failure, eap.identifier)
        parked, tunnel.parked = tunnel.parked, None
        try:
            step = parked[1] if parked is not None and parked[0] == message else self.tunnels.step(tunnel, eap, now)
            if step.verified:
                decision = self._certificate_login(packet, nas, eap, tunnel, claimed)
            elif step.pap is not None:
                decision = self._inner_pap(packet, nas, eap, tunnel, step.pap, now)
            elif step.inner is not None:
                decision = self._inner_peap(packet, nas, eap, tunnel, step.inner, now)
            else:
                return self._challenge(step, method)
        except TunnelError as exc:
            return self._reject(RejectReason.EAP_FAILED, method, claimed, failure, detail=str(exc))
        return _on_drop(decision, partial(self.tunnels.park, state, tunnel, message, step, now))

    def _certificate_login(self, packet: Packet, nas: Nas, eap: EAPPacket, tunnel: Tunnel,
                           claimed: AuthSubject | None = None) -> Decision:
        """EAP-TLS: the client certificate chains to the client CA (OpenSSL checked it in the
        handshake); it logs in the subscriber its EAP identity names if it carries that name, so
        that one subscriber's certificate cannot be presented under another's identity."""
        failure = partial(_eap_failure, eap.identifier)
        identity = tunnel.outer_username
        if identity.casefold() not in {name.casefold() for name in certificate_names(tunnel)}:
            return self._reject(RejectReason.EAP_FAILED, "eap-tls", claimed, failure,
                                detail=f"the client certificate does not name {identity!r}")
        found = self.directory.find(identity)
        if found is None:
            return self._reject(RejectReason.UNKNOWN_USER, "eap-tls", failure=failure)
        subject, fixed = found
        success = self._tunnel_keys(packet, nas, eap, tunnel, identity)
        return self._authorize(packet, nas, subject, fixed, "eap-tls", success, failure)

    def _tunnel_keys(self, packet: Packet, nas: Nas, eap: EAPPacket, tunnel: Tunnel, username: str) -> bytes:
        """An Access-Accept's EAP-Success, the inner identity (for the NAS's accounting) and the
        tunnel's keys for the access point."""
        msk, hide_key = tunnel.msk, mschap.encrypt_mppe_key  # salted with the request's authenticator
        return _encode(
            (Attr.EAP_MESSAGE, encode_eap(EAPPacket(EAPCode.SUCCESS, eap.identifier))),
            (Attr.USER_NAME, username.encode("utf-8")[:MAX_ATTRIBUTE_VALUE].decode("utf-8", "ignore").encode("utf-8")),
            vendor_specific(Vendor.MICROSOFT, _MS_MPPE_RECV_KEY, hide_key(msk[:32], nas.secret, packet.authenticator)),
            vendor_specific(Vendor.MICROSOFT, _MS_MPPE_SEND_KEY, hide_key(msk[32:], nas.secret, packet.authenticator)),
        )

    def _inner_peap(self, packet: Packet, nas: Nas, eap: EAPPacket, tunnel: Tunnel, inner: EAPPacket,
                    now: float) -> Decision:
        """PEAPv0's inner conversation, one step per round trip: Identity, EAP-MSCHAPv2 challenge
        and response, its success, then the Result TLV that the peer must confirm."""
        assert self.tunnels is not None
        failure = partial(_eap_failure, eap.identifier)
        ident = tunnel.identifier  # for the MS-CHAPv2-ID and EAP-TLV's header: any value serves
        opcode = inner.data[0] if inner.type == EAP_MSCHAPV2 and inner.data else None

        def send(kind: int, body: bytes, phase: str) -> Decision:
            assert self.tunnels is not None
            tunnel.phase = phase
            step = self.tunnels.send_inner(tunnel, EAPPacket(EAPCode.REQUEST, ident, kind, body), now)
            return self._challenge(step, "peap")

        if tunnel.phase == "identity" and inner.type == EAPType.IDENTITY:
            tunnel.inner_username = inner.data.decode("utf-8", "replace")
            tunnel.challenge, tunnel.challenge_id, name = os.urandom(16), ident, b"ispd"
            # OpCode, MS-CHAPv2-ID, MS-Length (from OpCode on), Value-Size, Challenge, Name
            return send(EAP_MSCHAPV2, bytes((_MSCHAPV2_CHALLENGE, ident)) + (21 + len(name)).to_bytes(2, "big")
                        + b"\x10" + tunnel.challenge + name, "challenge")
        answers_challenge = inner.data[1:2] == bytes((tunnel.challenge_id,))  # the MS-CHAPv2-ID sent
        if tunnel.phase == "challenge" and opcode == _MSCHAPV2_RESPONSE and answers_challenge:
            found = self.directory.find(tunnel.inner_username)
            if found is None:
                return self._reject(RejectReason.UNKNOWN_USER, "peap", failure=failure)
            subject = found[0]
            nt = self._nt_hash(subject)
            if nt is None:
                return self._reject(RejectReason.NO_PASSWORD_FORM, "peap", subject, failure)
            value = inner.data[4:]  # Value-Size(1) Peer-Challenge(16) Reserved(8) NT-Response(24) Flags(1) Name
            if len(value) < 50 or value[0] != 49:
                return self._reject(RejectReason.WRONG_PASSWORD, "peap", subject, failure)
            peer_challenge, nt_response = value[1:17], value[25:49]
            user = mschap.strip_domain(tunnel.inner_username.encode("utf-8"))
            if not mschap.verify_nt_response_v2(nt_response, tunnel.challenge, peer_challenge, user, nt):
                return self._reject(RejectReason.WRONG_PASSWORD, "peap", subject, failure)
            message = mschap.authenticator_response(nt, nt_response, peer_challenge, tunnel.challenge, user) + b" M=OK"
            return send(EAP_MSCHAPV2, bytes((_MSCHAPV2_SUCCESS, inner.data[1])) + (4 + len(message)).to_bytes(2, "big")
                        + message, "success")
        if tunnel.phase == "success" and opcode == _MSCHAPV2_SUCCESS:
            return send(EAP_TLV, _RESULT_TLV_SUCCESS, "result")
        if tunnel.phase == "result" and inner.type == EAP_TLV and result_tlv(inner.data) == 1:
            found = self.directory.find(tunnel.inner_username)  # as it is now
            if found is None:
                return self._reject(RejectReason.UNKNOWN_USER, "peap", failure=failure)
            subject, fixed = found
            success = self._tunnel_keys(packet, nas, eap, tunnel, tunnel.inner_username)
            return self._authorize(packet, nas, subject, fixed, "peap", success, failure)
        return self._reject(RejectReason.EAP_FAILED, "peap", failure=failure,
                            detail=f"inner EAP type {inner.type} out of turn ({tunnel.phase})")

    def _inner_pap(self, packet: Packet, nas: Nas, eap: EAPPacket, tunnel: Tunnel, inner: InnerPAP,
                   now: float) -> Decision:
        """PAP through a TTLS tunnel: the inner User-Name names the subscriber (the outer one may
        be anonymous), and the password is checked as PAP's is."""
        failure = partial(_eap_failure, eap.identifier)
        found = self.directory.find(inner.username)
        if found is None:
            return self._reject(RejectReason.UNKNOWN_USER, "eap-ttls", failure=failure)
        subject, fixed = found
        success = self._tunnel_keys(packet, nas, eap, tunnel, inner.username)
        verdict = self.passwords.check_fast(subject.id, subject.credentials, inner.password, now)
        if verdict is None:
            verifier = subject.credentials.verifier
            assert verifier is not None  # check_fast answers False when there is no verifier
            return Decision(method="eap-ttls", subscriber_id=subject.id, pending=PendingCheck(
                subject, fixed, inner.password, verifier, "eap-ttls", success, failure))
        if not verdict:
            return self._reject(RejectReason.WRONG_PASSWORD, "eap-ttls", subject, failure)
        return self._authorize(packet, nas, subject, fixed, "eap-ttls", success, failure)

    # --- authorization and the reply

    def _reject(self, reason: RejectReason, method: str, subject: AuthSubject | None = None,
                failure: Callable[[], bytes] | None = None, detail: str | None = None) -> Decision:
        """An Access-Reject, with what the method puts into one (``failure``: MS-CHAP-Error,
        EAP-Failure), built only when it is needed; ``detail`` is for the log."""
        return Decision(_ACCESS_REJECT, failure() if failure is not None else b"", method=method, reject=reason,
                        subscriber_id=subject.id if subject is not None else None, detail=detail)

    def _distinct_sessions(self, subscriber_id: int) -> int:
        """The subscriber's open sessions, one per Acct-Session-Id on each client: BNGs of one
        client network that move a session between them (a redundant pair's failover keeps its
        Acct-Session-Id) report it from the new BNG's address, where accounting keeps it as a
        session of its own, and the one on the old BNG stays open until it goes stale. Counted
        twice, the moved session used up a max_sessions = 1 subscriber's slot, and its own
        re-authentication (or a redial from the station) was rejected for stale_session_intervals."""
        return len({(s.nas_client, s.acct_session_id) for s in self.sessions.of_subscriber(subscriber_id)})

    def _same_station(self, subscriber_id: int, packet: Packet, nas: Nas) -> int:
        """1 when this request re-authenticates one of the subscriber's open sessions, else 0:
        802.1X re-authenticates a station periodically, and a CPE redials after its Stop was
        lost; counting its own session against it rejected every re-authentication at
        max_sessions = 1. The session is the one the request names (Acct-Session-Id, on any NAS of
        the client: a session moved between BNGs keeps it), else one on
        the same NAS (by its address when the client is a network of NASes: a station's login on
        another BNG is another session, whose address would be given twice) from the same
        station (Calling-Station-Id, and NAS-Port-Id when both have one: a port alone is often a
        whole PPPoE interface). The station is looked for also when
        the request names a session that is not open: a NAS that rebooted without Accounting-On
        gives the station's new login a new Acct-Session-Id. One at most: a copied MAC buys at
        most one session more."""
        return 1 if self._station_sessions(subscriber_id, packet, nas) else 0

    def _station_sessions(self, subscriber_id: int, packet: Packet, nas: Nas) -> list[RadiusSession]:
        """The subscriber's open sessions that this request's station has (``_same_station``):
        the one the request names, else those from the same station on the same NAS."""
        session_id = _text(packet.first, _ACCT_SESSION_ID)
        station, port = _text(packet.first, _CALLING_STATION_ID), _text(packet.first, _NAS_PORT_ID)
        if session_id is None and station is None:
            return []
        on_this_client = [s for s in self.sessions.of_subscriber(subscriber_id) if s.nas_client == nas.name]
        # The session the request names is itself on whichever NAS of the client it now is: BNGs
        # of one network may move a session between them (a redundant pair's failover keeps its
        # Acct-Session-Id). A station alone is matched on its own NAS only.
        if session_id is not None:
            named = [s for s in on_this_client if s.acct_session_id == session_id]
            if named:
                return named
        if station is None:
            return []
        where = None if nas.one_address else _nas_address(packet, nas, self._source)
        on_this_nas = on_this_client if where is None else [s for s in on_this_client if s.nas_address == where]
        return [s for s in on_this_nas if s.calling_station_id == station
                and (port is None or s.nas_port_id is None or s.nas_port_id == port)]

    def _held_elsewhere(self, subject: AuthSubject, fixed: Fixed, packet: Packet,
                        nas: Nas) -> tuple[Fixed, Withheld | None]:
        """The login's reservation without the IPv6 prefix and address that an open session of
        the login from another station has, and what was left out. One prefix routed to two
        home routers (or one address on two links) breaks IPv6 for one of them, so the station
        that has them keeps them (redialling, it gets them back: its session stands in for the
        new one) and a concurrent session from another station goes without (FreeRADIUS's
        sqlippool gives each session its own). The session that has them is the one that
        reports them (Delegated-IPv6-Prefix, Framed-IPv6-Address), else, as not every NAS
        reports them, the login's oldest open session that reports no other. A request that
        names no station (no Calling-Station-Id) is told from none: it gets them, as does one whose
        holder's NAS reported none; the same Calling-Station-Id on another port is this station."""
        reservation = fixed.reservation
        if reservation is None or (fixed.prefix6 is None and fixed.address6 is None) or (
                packet.get(Attr.CALLING_STATION_ID) is None and packet.get(Attr.ACCT_SESSION_ID) is None):
            return fixed, None
        login = reservation.key
        sessions = [s for s in self.sessions.of_subscriber(subject.id) if s.username == login]
        if not sessions:
            return fixed, None
        mine = {id(s) for s in self._station_sessions(subject.id, packet, nas)}
        station = _text(packet.first, _CALLING_STATION_ID)

        def another_station(s: RadiusSession) -> bool:
            """Whether ``s`` is known to be another station's: not the session the request names
            nor this station's, and of another Calling-Station-Id (the same one on another port or
            NAS is this home router redialling before its old session's Stop; a session or a
            request without one, as from a NAS that sends it only on some requests, is told from
            none)."""
            return (id(s) not in mine and station is not None and s.calling_station_id is not None
                    and s.calling_station_id != station)

        def held_by(has: Callable[[RadiusSession], bool | None]) -> RadiusSession | None:
            """The other station's session that has it (``has``: True, False for another one, None
            for none reported), or None when this station has it or nobody does."""
            reporting = [s for s in sessions if has(s)]
            if not reporting:
                reporting = sorted((s for s in sessions if has(s) is None), key=lambda s: (s.started_at, s.id))[:1]
            if not reporting or not all(another_station(s) for s in reporting):
                return None
            return reporting[0]

        kinds, holder = [], None
        if fixed.prefix6 is not None:
            # (A session's as its NAS reported it: some send bits past the length, which are kept.)
            prefix = IPv6Network(fixed.prefix6)
            held = held_by(lambda s: None if s.delegated_ipv6_prefix is None
                           else IPv6Network(s.delegated_ipv6_prefix, strict=False).overlaps(prefix))
            if held is not None:
                kinds.append("prefix")
                holder = held
        if fixed.address6 is not None:
            address6 = fixed.address6
            held = held_by(lambda s: None if s.framed_ipv6_address is None else s.framed_ipv6_address == address6)
            if held is not None:
                kinds.append("address")
                holder = holder or held
        if holder is None:
            return fixed, None
        kept = Fixed(fixed.address, None if "address" in kinds else fixed.address6,
                     None if "prefix" in kinds else fixed.prefix6, reservation)
        return kept, Withheld(tuple(kinds), login, holder)

    def _authorize(self, packet: Packet, nas: Nas, subject: AuthSubject, fixed: Fixed | None, method: str,
                   method_attributes: bytes = b"", failure: Callable[[], bytes] | None = None) -> Decision:
        status = subject.subscriber.status
        plan = subject.plan
        walled = False
        if status is not _ACTIVE:
            if status is _CLOSED:
                return self._reject(RejectReason.CLOSED, method, subject, failure)
            plan_reply = self.settings.plans.get(plan.name) if plan is not None else None
            action = (plan_reply.suspended if plan_reply is not None and plan_reply.suspended is not None
                      else self.settings.suspended)
            if action == SuspendedAction.REJECT:
                return self._reject(RejectReason.SUSPENDED, method, subject, failure)
            walled = True
        if subject.lines and plan is not None:
            plan_reply = self.settings.plans.get(plan.name)
            if plan_reply is not None and plan_reply.line_lock and not any(
                    (str(kind), key) in subject.lines for kind, key in _line_keys(packet)):
                return self._reject(RejectReason.WRONG_LINE, method, subject, failure)
        if subject.over_quota and plan is not None and plan.over_quota is OverQuota.WALLED_GARDEN \
                and _for_nas(self.settings.walled_garden, nas.kind):
            # (Without garden attributes - none, or only other vendors' for this NAS - the garden
            # would be an empty profile, no rate limit: more than the plan gives. DNS's walled
            # garden walls suspended subscribers only.)
            walled = True
        if plan is not None and plan.max_sessions is not None:
            open_sessions = self.sessions.count(subject.id)
            if open_sessions >= plan.max_sessions:
                open_sessions = self._distinct_sessions(subject.id)
            if open_sessions >= plan.max_sessions and \
                    open_sessions - self._same_station(subject.id, packet, nas) >= plan.max_sessions:
                return self._reject(RejectReason.SIMULTANEOUS_USE, method, subject, failure)
        # The login's reservation, which gets a pool's prefix if it fixes none (else one is made).
        login_reservation = fixed.reservation if fixed is not None else None
        withheld = None
        if fixed is not None and not walled:  # (its IPv6 stays with the station whose open session has it)
            fixed, withheld = self._held_elsewhere(subject, fixed, packet, nas)
        if fixed is None:
            fixed = self._reserved_for_line(packet, subject)
        elif not fixed.complete:  # the login's, then the line's for what the login's leaves open
            fixed = fixed.over(self._reserved_for_line(packet, subject))
        plan_reply = self.settings.plans.get(plan.name) if plan is not None else None
        if plan_reply is not None:
            address_pool = plan_reply.address_pool if fixed is None or fixed.address is None else None
            # A prefix of the pool is reserved once and kept; not for the walled garden, which
            # is IPv4 only (the next login out of it reserves one), nor for a subscriber whose
            # own reply attributes give its static prefix (a business line: the reserved one
            # would replace it in the Access-Accept, and the pool lose a prefix for good).
            # (Nor for a second station's session while the first has the login's: the pool
            # would hand back the login's reserved one.)
            prefix_pool = (plan_reply.prefix_pool if not walled and (fixed is None or fixed.prefix6 is None)
                           and (withheld is None or "prefix" not in withheld.kinds)
                           and not self._own_delegated_prefix(subject) else None)
            if address_pool is not None or prefix_pool is not None:
                claim = self._pending_claim(packet, subject, address_pool, walled, method, method_attributes,
                                            failure)
                claim.fixed, claim.prefix_pool, claim.prefix_reservation = fixed, prefix_pool, login_reservation
                claim.withheld = withheld
                return Decision(claim=claim, subscriber_id=subject.id)
        profile = self.profile(subject, nas, fixed, walled, packet.authenticator)
        return Decision(_ACCESS_ACCEPT, profile + method_attributes if method_attributes else profile, method=method,
                        subscriber_id=subject.id, withheld=withheld)

    def _own_delegated_prefix(self, subject: AuthSubject) -> bool:
        """Whether the subscriber's own reply attributes say where its prefix comes from: a
        static Delegated-IPv6-Prefix, or a pool of the NAS's (Delegated-IPv6-Prefix-Pool)."""
        return any((a.vendor, a.code) in _OWN_PREFIX_SOURCES for a in self._own_reply(subject))

    def _pending_claim(self, packet: Packet, subject: AuthSubject, pool: str | None, walled: bool, method: str,
                       method_attributes: bytes, failure: Callable[[], bytes] | None) -> PendingClaim:
        port_id = packet.get(Attr.NAS_PORT_ID)
        port = opaque_text(port_id) if port_id else None
        hw_address, line = line_of(packet.text(Attr.CALLING_STATION_ID), port)
        return PendingClaim(subject, pool, holder_of(subject.subscriber.username, line), walled, method,
                            method_attributes, hw_address, port, failure,
                            acct_session_id=_text(packet.first, _ACCT_SESSION_ID))

    def finish_claim(self, packet: Packet, nas: Nas, claim: PendingClaim, address: str | None,
                     prefix6: str | None = None) -> Decision:
        """The Access-Accept with the address the store gave for the claim's pool (``None``: the
        pool is full, a reject) and the prefix reserved from its prefix pool (``None``: none
        could be, and the login goes without one: its IPv4 still works)."""
        if claim.pool is not None and address is None:
            return self._reject(RejectReason.POOL_EXHAUSTED, claim.method, claim.subject, claim.failure)
        fixed = claim.fixed if prefix6 is None else Fixed(prefix6=prefix6).over(claim.fixed)
        # The profile without a pool's address is cached (a reserved prefix is the login's for
        # good: it may be); the address (which varies) goes after it.
        profile = self.profile(claim.subject, nas, fixed, claim.walled, packet.authenticator)
        framed_ip = _encode((Attr.FRAMED_IP_ADDRESS, IPv4Address(address).packed)) if claim.pool and address else b""
        return Decision(_ACCESS_ACCEPT, profile + framed_ip + claim.method_attributes, method=claim.method,
                        subscriber_id=claim.subject.id, withheld=claim.withheld)

    def _reserved_for_line(self, packet: Packet, subject: AuthSubject) -> Fixed | None:
        """What the subscriber's reservation of this request's line fixes (address, IPv6)."""
        if not subject.addressed:  # the common case: nothing to match
            return None
        for kind, key in _line_keys(packet):
            fixed = subject.addressed.get((str(kind), key))
            if fixed is not None:
                return fixed
        return None

    def profile(self, subject: AuthSubject, nas: Nas, fixed: Fixed | None, walled: bool,
                request_authenticator: bytes, *, cache: bool = True) -> bytes:
        """The subscriber's reply attributes for this NAS (cached unless something is hidden), with
        what a reservation fixes for this login or line."""
        key = (nas.kind, walled, fixed)
        cached = subject.reply_cache.get(key) if cache else None
        if cached is not None:
            return cached
        items, cacheable = self._profile_items(subject, nas, fixed, walled)
        encoded = b"".join(item if isinstance(item, bytes) else item.encode(nas.secret, request_authenticator)
                           for item in items)
        if cacheable and cache:
            subject.reply_cache[key] = encoded
        return encoded

    def _profile_items(self, subject: AuthSubject, nas: Nas, fixed: Fixed | None, walled: bool, *,
                       session_attributes: bool = True) -> tuple[list[bytes | ReplyAttribute], bool]:
        """The profile's attributes, and whether they may be cached; ``session_attributes``:
        with Class and Acct-Interim-Interval, which a session gets once, at Access-Accept."""
        items: list[bytes | ReplyAttribute] = []
        throttle: list[bytes] = []
        throttled: set[tuple[int, int]] = set()  # the (vendor, type) of the throttle's attributes
        interim = None
        if session_attributes:
            marker = CLASS_PREFIX + str(subject.id).encode() + (WALLED_SUFFIX if walled else b"")
            items.append(_encode((Attr.CLASS, marker)))
            if self.settings.interim_interval:
                interim = _encode((Attr.ACCT_INTERIM_INTERVAL, u32(self.settings.interim_interval)))
                items.append(interim)
        address = fixed.address if fixed is not None else None
        if address is not None:
            items.append(_encode((Attr.FRAMED_IP_ADDRESS, IPv4Address(address).packed)))
        plan = subject.plan
        plan_reply = self.settings.plans.get(plan.name) if plan is not None else None
        # ispd gives this login its address (a reservation's, or the pool's after the profile): a
        # configured Framed-IP-Address (255.255.255.254, "the NAS picks") would be a second one.
        gives_address = address is not None or (plan_reply is not None and plan_reply.address_pool is not None)
        if walled:  # (IPv4 only, as DHCPv6 gives suspended subscribers nothing: the garden is on IPv4)
            garden = _for_nas(self.settings.walled_garden, nas.kind)
            items.extend(_without_address(garden) if gives_address else garden)
            _replace_interim(items, interim, garden)
            return items, not any(a.hidden for a in garden)
        if plan is not None:
            if plan.session_timeout_seconds:
                items.append(_encode((Attr.SESSION_TIMEOUT, u32(plan.session_timeout_seconds))))
            if plan.idle_timeout_seconds:
                items.append(_encode((Attr.IDLE_TIMEOUT, u32(plan.idle_timeout_seconds))))
            if subject.over_quota and plan.over_quota is OverQuota.THROTTLE:  # the plan's slower rates, for the month
                throttle = self._rate_limit(nas.kind, plan.over_quota_download_kbps, plan.over_quota_upload_kbps)
                throttled = {_attribute_key(item) for item in throttle}
                items.extend(throttle)
            else:
                items.extend(self._rate_limit(nas.kind, plan.download_kbps, plan.upload_kbps))
        if plan_reply is not None:
            if address is None and plan_reply.framed_pool and plan_reply.address_pool is None:
                items.append(_encode((Attr.FRAMED_POOL, plan_reply.framed_pool.encode())))
            items.extend(plan_reply.attributes)
            _replace_interim(items, interim, plan_reply.attributes)
            # What ispd writes from the plan (Session-Timeout, Idle-Timeout, the rate limit,
            # Framed-Pool) gives way to the table's own of the same attribute, as the interval
            # does: an Access-Accept carries one of each (RFC 2865 §5.44), and two leave the NAS
            # to pick. Not the month's throttle, which stands over the table's rate as over the
            # subscriber's own.
            configured = {(a.vendor, a.code) for a in plan_reply.attributes}

            def kept(item: bytes | ReplyAttribute) -> bool:
                if isinstance(item, ReplyAttribute):  # the table's
                    return _attribute_key(item) not in throttled
                return item in throttle or _attribute_key(item) not in configured  # ispd's

            items = [item for item in items if kept(item)]
        cacheable = not (plan_reply is not None and any(a.hidden for a in plan_reply.attributes))
        own = self._own_reply(subject)
        if throttle:  # the month's throttle stands over a rate of the subscriber's own
            own = [a for a in own if (a.vendor, a.code) not in throttled]
        if own:
            # The subscriber's own replace the plan's of the same attribute (FreeRADIUS's ":="
            # in a user's entry); ispd's Class and the address stay.
            replaced = {(a.vendor, a.code) for a in own}
            items = [item for item in items if _attribute_key(item) not in replaced]
            items.extend(own)
            cacheable = cacheable and not any(a.hidden for a in own)
        if gives_address:
            items = _without_address(items)
        fixed_ipv6 = _fixed_ipv6(fixed) if fixed is not None else []
        if fixed_ipv6:  # the reservation's, kept with DHCPv6's pools, over the plan's and the subscriber's own
            # (and over a pool the NAS would give the same thing from: RFC 6911's)
            replaced = {key for item in fixed_ipv6 for key in ((0, item[0]), (0, _POOL_FOR[item[0]]))}
            items = [item for item in items if _attribute_key(item) not in replaced]
            items.extend(fixed_ipv6)
        return _for_nas(items, nas.kind), cacheable

    def interim_interval(self, subject: AuthSubject, nas: Nas, walled: bool) -> int | None:
        """The Acct-Interim-Interval this subscriber's Access-Accept gives a NAS (the plan's or
        its own over ``interim_interval_seconds``): how often its sessions are reported on, and
        so how long one may stay silent before it is stale."""
        encoded = self.profile(subject, nas, None, walled, bytes(16))  # (cached, as for its Access-Accepts)
        interval, offset = None, 0
        while offset + 2 <= len(encoded) and encoded[offset + 1] >= 2:
            code, length = encoded[offset], encoded[offset + 1]
            if code == _ACCT_INTERIM_INTERVAL and length == 6:
                interval = int.from_bytes(encoded[offset + 2:offset + 6], "big") or None
            offset += length
        return interval

    def _own_reply(self, subject: AuthSubject) -> list[ReplyAttribute]:
        """The subscriber's own reply attributes, as the dictionaries read them now (checked when
        they were set; one the dictionaries no longer have is left out and logged)."""
        own = []
        for text in subject.subscriber.radius_reply:
            try:
                own.append(subscriber_reply_attribute(self.dictionary, text))
            except AttributeValueError:  # (not the line itself in the log: it may hold a secret)
                log.warning("radius.subscriber.bad_reply_attribute", subscriber=subject.subscriber.username,
                            attribute=text.partition("=")[0].strip()[:64],
                            detail="the dictionaries do not take it any more, or it is ispd's own")
        return own

    def _rate_limit(self, kind: NasKind, download: int | None, upload: int | None) -> list[bytes]:
        if not download and not upload:
            return []
        if kind == NasKind.MIKROTIK:
            # rx/tx from the router's side: rx is what the subscriber sends (upload).
            text = f"{upload or 0}k/{download or 0}k".encode()
            return [_encode(vendor_specific(Vendor.MIKROTIK, self._mikrotik_rate_limit, text))]
        if kind == NasKind.ACCEL_PPP:
            return [_encode((Attr.FILTER_ID, f"{download or 0}/{upload or 0}".encode()))]
        return []

    def change_of_authorization(self, subject: AuthSubject, nas: Nas, walled: bool) -> bytes:
        """What a CoA-Request carries to move a session to the subscriber's current profile (its
        plan's, or the walled garden's): the authorization attributes, without Class and the
        addresses and prefixes (a session keeps those: a plan's or the subscriber's own
        Delegated-IPv6-Prefix would contradict the reservation the Access-Accept gave)."""
        items, _ = self._profile_items(subject, nas, None, walled, session_attributes=False)
        # (Nor a configured Framed-IP-Address: the session has its address, which names it in the
        # request's identification; fixed=None above cannot tell a reserved address from none.)
        return b"".join(item if isinstance(item, bytes) else item.encode(nas.secret, bytes(16)) for item in items
                        if _attribute_key(item) not in _SESSION_ADDRESSING
                        and not (isinstance(item, ReplyAttribute) and (item.vendor, item.code) == _PLAN_ADDRESS))

    def left_in_the_garden(self, subject: AuthSubject, nas: Nas) -> list[str]:
        """The walled garden's attributes that the subscriber's own profile does not carry: a
        CoA back to that profile names none of them, and a NAS that applies a CoA's attributes
        over the session's (as BNGs do: a CoA cannot say "remove") would keep them in force."""
        items, _ = self._profile_items(subject, nas, None, False, session_attributes=False)
        carried = {_attribute_key(item) for item in items}
        return [a.name for a in _for_nas(self.settings.walled_garden, nas.kind) if (a.vendor, a.code) not in carried]

    def left_by_the_change(self, before: AuthSubject, subject: AuthSubject, nas: Nas) -> list[str]:
        """The attributes the subscriber's profile before a change (``before``: another plan, or
        none) gave a session that its profile now does not carry: the old plan's rate limit or
        over-quota throttle, a [[radius.plan]] attribute. As out of the walled garden, a CoA
        cannot take them away (the NAS would keep the old plan's rates); the session timers and
        Framed-Pool, which a session outlives or used once, are not counted."""
        old, _ = self._profile_items(before, nas, None, False, session_attributes=False)
        new, _ = self._profile_items(subject, nas, None, False, session_attributes=False)
        carried = {_attribute_key(item) for item in new}
        left: list[str] = []
        for item in old:
            key = _attribute_key(item)
            if key in carried or key in _SESSION_ADDRESSING or key in _NOT_LEFT_BEHIND or key == (-1, -1):
                continue
            definition = self.dictionary.by_code(key[1], key[0]) if not isinstance(item, ReplyAttribute) else None
            name = item.name if isinstance(item, ReplyAttribute) else (
                definition.name if definition is not None else f"{key[0]}:{key[1]}")
            if name not in left:
                left.append(name)
        return left

    def forget_profiles(self) -> None:
        for subject in self.directory.subjects.values():
            subject.reply_cache.clear()


# The NAS's pool of what a reservation fixes (RFC 6911 §3.3, §3.4).
_POOL_FOR = {_FRAMED_IPV6_ADDRESS: 172, _DELEGATED_IPV6_PREFIX: 171}  # Stateful-IPv6-Address-Pool, Delegated-...-Pool

# A subscriber's own reply attribute that settles its delegated prefix: no plan's pool reserves one.
_OWN_PREFIX_SOURCES = frozenset({(0, _DELEGATED_IPV6_PREFIX), (0, _POOL_FOR[_DELEGATED_IPV6_PREFIX])})

# What a session keeps from its Access-Accept, which a CoA does not move.
_PLAN_ADDRESS = (0, int(Attr.FRAMED_IP_ADDRESS))
_SESSION_ADDRESSING = frozenset({(0, _FRAMED_IPV6_ADDRESS), (0, _FRAMED_IPV6_PREFIX), (0, _DELEGATED_IPV6_PREFIX)})

# What a plan's profile gives that a session outlives, or used at its start only: not a reason to
# end a session whose new plan has none of it (left_by_the_change). Its addresses too (a
# configured Framed-IP-Address, as the IPv6 ones): a CoA moves none (change_of_authorization).
# And what sets up the link (the users file's Service-Type = Framed-User, Framed-Protocol = PPP,
# Framed-Compression = Van-Jacobson-TCP-IP, the MTU and netmask, IPv6CP's Framed-Interface-Id):
# negotiated at the start, nothing a NAS would keep applying. (Framed-IPv6-Pool, RFC 3162 §2.6, is
# Framed-Pool's IPv6 twin.)
_FRAMED_COMPRESSION, _FRAMED_INTERFACE_ID, _FRAMED_IPV6_POOL = 13, int(Attr.FRAMED_INTERFACE_ID), 100
_NOT_LEFT_BEHIND = frozenset({(0, int(Attr.SESSION_TIMEOUT)), (0, int(Attr.IDLE_TIMEOUT)),
                              (0, _ACCT_INTERIM_INTERVAL), (0, int(Attr.FRAMED_POOL)), (0, _FRAMED_IPV6_POOL),
                              _PLAN_ADDRESS, *((0, pool) for pool in _POOL_FOR.values()),
                              *((0, int(code)) for code in (Attr.SERVICE_TYPE, Attr.FRAMED_PROTOCOL,
                                                            Attr.FRAMED_MTU, Attr.FRAMED_IP_NETMASK)),
                              (0, _FRAMED_COMPRESSION), (0, _FRAMED_INTERFACE_ID)})


# The vendors of the NAS kinds that are one vendor's gear. A plan (a walled garden, a subscriber's
# own reply) for a network of several vendors lists each one's attributes; each NAS gets its own
# and no other of these vendors': a MikroTik address list means nothing to a Cisco ASR, and
# in a CoA-Request it is refused with a NAK (Error-Cause 401, Unsupported Attribute). Other
# vendors' (Microsoft's, the standard ones) go to every NAS, and to a generic or accel-ppp NAS
# everything does, as before.
_NAS_VENDORS: dict[NasKind, frozenset[int]] = {
    NasKind.MIKROTIK: frozenset({Vendor.MIKROTIK}),
    NasKind.CISCO: frozenset({Vendor.CISCO}),
    NasKind.JUNIPER: frozenset({Vendor.JUNIPER, Vendor.ERX}),
}
_GEAR_VENDORS = frozenset().union(*_NAS_VENDORS.values())
_Item = TypeVar("_Item", bytes, ReplyAttribute, bytes | ReplyAttribute)


def _for_nas(items: Sequence[_Item], kind: NasKind) -> list[_Item]:
    """``items`` less the attributes of another vendor's gear than this NAS's."""
    own = _NAS_VENDORS.get(kind)
    if own is None:
        return list(items)
    return [item for item in items if (vendor := _attribute_key(item)[0]) not in _GEAR_VENDORS or vendor in own]


def _without_address(items: Sequence[bytes | ReplyAttribute]) -> list[bytes | ReplyAttribute]:
    """``items`` without a configured Framed-IP-Address (ispd's own, encoded, stays)."""
    return [item for item in items
            if not (isinstance(item, ReplyAttribute) and (item.vendor, item.code) == _PLAN_ADDRESS)]


def _attribute_key(item: bytes | ReplyAttribute) -> tuple[int, int]:
    """(vendor, type) of a reply item; ispd's Class and Framed-IP-Address as none a subscriber
    may give."""
    if isinstance(item, ReplyAttribute):
        return item.vendor, item.code
    if item[0] in (Attr.CLASS, Attr.FRAMED_IP_ADDRESS):
        return -1, -1
    if item[0] == Attr.VENDOR_SPECIFIC and len(item) >= 7:
        return int.from_bytes(item[2:6], "big"), item[6]
    return 0, item[0]


def _replace_interim(items: list[bytes | ReplyAttribute], interim: bytes | None,
                     configured: Sequence[ReplyAttribute]) -> None:
    """Leave out ispd's own Acct-Interim-Interval when the configured attributes give one:
    an Access-Accept carries at most one (RFC 2869 §5.16), and the configured one is meant."""
    if interim is not None and any((a.vendor, a.code) == (0, _ACCT_INTERIM_INTERVAL) for a in configured):
        items.remove(interim)


def _fixed_ipv6(fixed: Fixed) -> list[bytes]:
    """Framed-IPv6-Address (RFC 6911 §3.1) and Delegated-IPv6-Prefix (RFC 4818) of a reservation."""
    items = []
    if fixed.address6 is not None:
        items.append(_encode((Attr.FRAMED_IPV6_ADDRESS, IPv6Address(fixed.address6).packed)))
    if fixed.prefix6 is not None:
        items.append(_encode((Attr.DELEGATED_IPV6_PREFIX, ipv6_prefix_value(IPv6Network(fixed.prefix6)))))
    return items


def _encode(*attributes: tuple[int, bytes]) -> bytes:
    return b"".join(bytes((code, len(value) + 2)) + value for code, value in attributes)


def _on_drop(decision: Decision, restore: Callable[[], None]) -> Decision:
    """``decision`` with what puts its EAP conversation back when its request is dropped
    unanswered (too many password checks or address claims at once, a store error), so that
    the NAS's copy of the request is answered as the first would have been."""
    if decision.pending is not None:
        decision.pending.restore = restore
    if decision.claim is not None:
        decision.claim.restore = restore
    return decision


def _method_name(kind: int | None) -> str | None:
    """The metric label of the EAP method of type ``kind``; None for one ispd does not serve."""
    return "eap-md5" if kind == EAPType.MD5_CHALLENGE else _TUNNEL_METHODS.get(kind) if kind is not None else None


def _eap_failure(identifier: int) -> bytes:
    return _encode((Attr.EAP_MESSAGE, encode_eap(EAPPacket(EAPCode.FAILURE, identifier))))


# --- accounting -------------------------------------------------------------------------------


def subscriber_from_class(packet: Packet) -> int | None:
    """The subscriber id ispd put into Class at Access-Accept, if the NAS echoes it."""
    first = packet.first.get(_CLASS)
    if first is None:
        return None
    for value in (first,) if first.startswith(CLASS_PREFIX) else packet.get_all(_CLASS):
        if value.startswith(CLASS_PREFIX):
            number = value[len(CLASS_PREFIX):].split(b":", 1)[0]
            if number.isdigit() and len(number) < 19:
                return int(number)
    return None


def _walled_class(packet: Packet) -> bool:
    """Whether the Class ispd gave names the walled garden's profile (``ispd:<id>:walled``)."""
    return any(value.startswith(CLASS_PREFIX) and value.endswith(WALLED_SUFFIX) for value in packet.get_all(_CLASS))


def _u32(first: dict[int, bytes], attribute: int) -> int | None:
    value = first.get(attribute)
    return int.from_bytes(value, "big") if value is not None and len(value) == 4 else None


_MAX_COUNTER = (1 << 63) - 1  # what the store (SQLite's INTEGER) holds


def _octets(first: dict[int, bytes], low: int, high: int) -> int | None:
    """A 32-bit counter with its Gigawords (RFC 2869 §5.1) folded in; a Gigawords that would
    make it more than the store can hold (2^31 of them: nothing real) is held at the maximum."""
    value = _u32(first, low)
    if value is None:
        return None
    gigawords = _u32(first, high)
    return min(value + (gigawords << 32), _MAX_COUNTER) if gigawords else value


def _text(first: dict[int, bytes], attribute: int) -> str | None:
    value = first.get(attribute)
    return value.decode("utf-8", "replace") if value is not None else None


# RFC 2865 §5.8: 255.255.255.255 "let the user choose" and 255.255.255.254 "the NAS chooses" are
# requests, not addresses; 0.0.0.0 is none. A NAS that reports them holds no address to record.
_NOT_ADDRESSES = frozenset({b"\xff\xff\xff\xff", b"\xff\xff\xff\xfe", b"\x00\x00\x00\x00"})


def _address_text(value: bytes | None) -> str | None:
    if value is None or len(value) != 4 or value in _NOT_ADDRESSES:
        return None
    return socket.inet_ntoa(value)


def _prefix_text(value: bytes | None) -> str | None:
    if value is None or len(value) < 2 or value[1] > 128 or len(value) > 18:
        return None
    address = IPv6Address(value[2:].ljust(16, b"\x00"))
    return f"{address}/{value[1]}"


def _ipv6_address_text(value: bytes | None) -> str | None:
    """Framed-IPv6-Address (RFC 6911 §3.1): 16 octets; the unspecified address is none."""
    if value is None or len(value) != 16 or not any(value):
        return None
    return str(IPv6Address(value))


def _nas_address(packet: Packet, nas: Nas, source: str | None) -> str | None:
    """The address a NAS's sessions are kept under (as ``AccountingEngine.nas_address`` finds
    it, without its memo: an Access-Request needs it only where a station is looked for)."""
    reported = reported_address(packet)
    return reported if reported is not None and reported != source and _believed(reported, nas) else source


def _believed(reported: str, nas: Nas) -> bool:
    """Whether the address a NAS reports itself as (``reported_address``) is believed: inside
    the client's configured network."""
    return nas.network is None or ip_address(reported) in nas.network


def reported_address(packet: Packet) -> str | None:
    """Who the NAS says it is (NAS-IP-Address, NAS-IPv6-Address), if it says."""
    v4 = packet.first.get(_NAS_IP_ADDRESS)
    if v4 is not None and len(v4) == 4:
        return socket.inet_ntoa(v4)
    v6 = packet.first.get(_NAS_IPV6_ADDRESS)
    if v6 is not None and len(v6) == 16:
        return str(IPv6Address(v6))
    return None


class AccountingEngine:
    def __init__(self, directory: Directory, sessions: OpenSessions, dictionary: Dictionary,
                 interim_interval: int) -> None:
        self.directory = directory
        self.sessions = sessions
        self.dictionary = dictionary
        self.interim_interval = interim_interval
        # The interval a subscriber's Access-Accept gives (AuthEngine.interim_interval; the
        # service sets it): a plan's or a subscriber's own may differ from interim_interval.
        self.interval_of: Callable[[AuthSubject, Nas, bool], int | None] | None = None
        # The client an address falls in (NasTable.find; the service sets it): a NAS-IP-Address
        # that is another client's (a host entry inside this one's network, with a secret of its
        # own) is not this client's to speak for.
        self.client_of: Callable[[str], Nas | None] | None = None
        # (client, NAS-IP-Address) → believed; a client may name several networks
        self._believed: dict[tuple[str, IPv4Network | IPv6Network | None, str], bool] = {}

    def nas_address(self, reported: str | None, nas: Nas, source: str) -> str:
        """The address sessions are kept under: the NAS-IP-Address the NAS reports
        (``reported_address``) when it lies inside the client's configured network, else the
        packet's source."""
        if reported is None or reported == source:
            return source
        key = (nas.name, nas.network, reported)
        believed = self._believed.get(key)
        if believed is None:
            believed = _believed(reported, nas)
            if believed and self.client_of is not None:
                found = self.client_of(reported)
                believed = found is None or found.name == nas.name
            if len(self._believed) > 100_000:
                self._believed.clear()
            self._believed[key] = believed
        return reported if believed else source

    def forget_clients(self) -> None:
        """After a reload: the clients' networks may have changed."""
        self._believed.clear()

    def check(self, packet: Packet, nas: Nas) -> str | None:
        """Why the request must be dropped, or None."""
        if packet.code == Code.STATUS_SERVER:
            try:
                return None if check_message_authenticator(packet, nas.secret) else Drop.BAD_MESSAGE_AUTHENTICATOR
            except RadiusDecodeError as exc:
                return str(exc.reason)
        if packet.code != Code.ACCOUNTING_REQUEST:
            return Drop.WRONG_PORT
        if not check_request_authenticator(packet, nas.secret):
            return Drop.BAD_REQUEST_AUTHENTICATOR
        if packet.has(Attr.MESSAGE_AUTHENTICATOR):
            try:
                if not check_message_authenticator(packet, nas.secret):
                    return Drop.BAD_MESSAGE_AUTHENTICATOR
            except RadiusDecodeError as exc:
                return str(exc.reason)
        return None

    def record(self, packet: Packet, nas: Nas, source: str, received_at: float) -> AccountingRecord | None:
        """The store's view of an Accounting-Request (statuses it does not act on, Tunnel-* and
        Failed, as OTHER: kept in the history); None without an Acct-Status-Type, which RFC 2866
        §5.1 requires. Read straight from ``packet.first`` with plain-int attribute numbers: this
        runs for every accounting request."""
        first = packet.first
        status_type = _u32(first, _ACCT_STATUS_TYPE)
        if status_type is None:
            return None
        status = _STATUS_TYPES.get(status_type, AccountingStatus.OTHER)
        login = _text(first, _USER_NAME)
        if login is not None:
            login = login.rstrip("\x00")  # as the Access-Request's (AuthEngine.handle)
        subscriber_id = subscriber_from_class(packet)
        if subscriber_id is not None and subscriber_id not in self.directory.subjects:
            # A Class naming no subscriber (deleted, or another server's): not attributed to
            # it, nor to whoever holds that id later; the login may still name someone.
            subscriber_id = None
        if subscriber_id is None and login is not None:
            found = self.directory.find(login)
            subscriber_id = found[0].id if found is not None else None
        cause = _u32(first, _ACCT_TERMINATE_CAUSE)
        cause_text = None
        if cause is not None:
            definition = self.dictionary.by_code(_ACCT_TERMINATE_CAUSE)
            cause_text = (definition.value_name(cause) if definition is not None else None) or str(cause)
        reported = reported_address(packet)
        address = self.nas_address(reported, nas, source)
        acct_session_id = _text(first, _ACCT_SESSION_ID)
        framed_ip = _address_text(first.get(_FRAMED_IP_ADDRESS))
        v6_prefix = _prefix_text(first.get(_FRAMED_IPV6_PREFIX))
        delegated = _prefix_text(first.get(_DELEGATED_IPV6_PREFIX))
        v6_address = _ipv6_address_text(first.get(_FRAMED_IPV6_ADDRESS))
        interim_interval = self.interim_interval or None
        known = self.sessions.by_key.get((address, acct_session_id)) if acct_session_id is not None else None
        if known is not None:
            interim_interval = known.interim_interval or interim_interval
        elif subscriber_id is not None and self.interval_of is not None:
            # A session new to ispd: reported on as often as its Access-Accept said (a plan's
            # hourly interims must not make its sessions stale after three of ispd's default).
            subject = self.directory.subjects.get(subscriber_id)
            if subject is not None:
                interim_interval = self.interval_of(subject, nas, _walled_class(packet)) or interim_interval
        # The store fills in what an open session lacks only when this view says it may: the
        # common interim brings nothing new (a dual-stack NAS repeats its prefixes in every
        # one), and the statement it would cost is saved. The view learns what the store fills
        # in (RadiusService._follow), and a value once set is never changed: one it has is the
        # store's.
        fill_in = known is None or fills_in(
            known, subscriber_id=subscriber_id, framed_ip=framed_ip, framed_ipv6_prefix=v6_prefix,
            delegated_ipv6_prefix=delegated, framed_ipv6_address=v6_address, interim_interval=interim_interval)
        delay = _u32(first, _ACCT_DELAY_TIME) or 0
        return AccountingRecord(
            received_at - min(delay, 86400 * 7), status, address, acct_session_id, login, subscriber_id,
            _text(first, _NAS_IDENTIFIER), nas.name, framed_ip, v6_prefix, delegated,
            v6_address, _text(first, _CALLING_STATION_ID), _text(first, _CALLED_STATION_ID), _text(first, _NAS_PORT_ID),
            _octets(first, _ACCT_INPUT_OCTETS, _ACCT_INPUT_GIGAWORDS),
            _octets(first, _ACCT_OUTPUT_OCTETS, _ACCT_OUTPUT_GIGAWORDS),
            _u32(first, _ACCT_INPUT_PACKETS), _u32(first, _ACCT_OUTPUT_PACKETS), _u32(first, _ACCT_SESSION_TIME),
            cause_text, interim_interval, packet.raw, fill_in,
            reported if reported != address else None)  # (not believed: kept apart, for Disconnect and CoA)
