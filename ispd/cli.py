"""``ispd``: the daemon (``ispd run``) and the admin commands, which work on the same store
while the daemon runs.

Every failure is one line on stderr and a non-zero exit: 1 when the command could not be done
(no such subscriber, a name taken, the store busy), 2 for a bad command line or config file.
Set ISPD_TRACEBACK=1 to see the traceback of an unexpected error.
Listings take ``--json``; ``subscriber show`` is the helpdesk view.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import dataclasses
import getpass
import json
import os
import pwd
import re
import signal
import socket
import sys
import threading
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from enum import Enum
from ipaddress import IPv4Address, IPv6Network
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ispd import __version__
from ispd.config import Config, ConfigError, load_config, load_config_snapshot
from ispd.credentials import (
    PasswordRejected,
    check_password_acceptable,
    derive_credentials,
    effective_policy,
    generate_password,
)
from ispd.dns.config import domain_name
from ispd.effects import effects as status_effects
from ispd.logs import LogConfig, configure_logging
from ispd.mail.maildir import Maildir
from ispd.mail.spool import Spool
from ispd.store import NotFound, Store, StoreError, open_store
from ispd.store.models import (
    UNCHANGED,
    CredentialPolicy,
    DailyUsage,
    Holding,
    Lease,
    Lease6,
    Lease6HistoryEntry,
    Lease6Kind,
    LeaseHistoryEntry,
    LeaseState,
    OverQuota,
    Plan,
    RadiusSession,
    Reservation,
    ReservationKind,
    StoredCredentials,
    SubscriberOverview,
    SubscriberStatus,
    SuspendedMail,
    Unchanged,
)
from ispd.store.sqlite_radius import month_start, usage_days
from ispd.store.validation import (
    attributable_text,
    dhcp6_prefix_text,
    hostname_text,
    ipv4_text,
    mail_address,
    reservable_address,
    reservable_address6,
    reservable_prefix6,
    reservation_key,
    showable,
    usable_text,
)

if TYPE_CHECKING:
    from ispd.daemonlock import DaemonLock
    from ispd.radius.dictionary import Dictionary
    from ispd.store.postgresql import PostgresDaemonLock
    from ispd.store.sqlite import Migration

DEFAULT_CONFIG = "/etc/ispd/ispd.toml"
EXIT_FAILED, EXIT_USAGE = 1, 2


class CommandFailed(Exception):
    """A command that could not be done; str() is the one line the operator sees."""


# --- output -----------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.hex()
    return value


def print_json(value: Any) -> None:
    print(json.dumps(_jsonable(value), indent=2, sort_keys=True))


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def table_lines(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[("-" if v is None else showable(str(v))) for v in row] for row in rows]
    widths = [max([len(h), *(display_width(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    return ["  ".join(v + " " * (w - display_width(v)) for v, w in zip(row, widths, strict=True)).rstrip()
            for row in [list(headers), *cells]]


def display_width(text: str) -> int:
    """The columns a terminal gives ``text``: two for wide characters (CJK, most emoji), none
    for combining marks."""
    if text.isascii():
        return len(text)
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
               for c in text)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    for line in table_lines(headers, rows):
        print(line)



# --- commands -----------------------------------------------------------------------------------


def actor() -> str:
    """Who the audit log says made a change: the login, and the sudo caller behind root."""
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:  # an arbitrary uid without a passwd entry (containers)
        user = f"uid:{uid}"
    sudo_user = os.environ.get("SUDO_USER") if uid == 0 else None
    return f"cli:{sudo_user} via sudo" if sudo_user else f"cli:{user}"


def read_new_password(args: argparse.Namespace) -> None:
    """Get the new password into ``args`` before the store is opened: a prompt must not block
    the event loop (Ctrl-C would go unheard), and a password that will be refused must be
    refused before anything is written."""
    args.generated_password = False
    if args.generate_password:
        args.new_password, args.generated_password = generate_password(), True
    elif args.password_stdin:
        args.new_password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        try:
            args.new_password = getpass.getpass("New password: ")
            again = getpass.getpass("Again: ")
        except EOFError:  # Ctrl-D at the prompt: no password, as an answer, not a bug report
            raise CommandFailed("no password given (end of input at the prompt)") from None
        if args.new_password != again:
            raise CommandFailed("the passwords differ")
    else:
        raise CommandFailed("no password given: use --password-stdin or --generate-password")
    check_password_acceptable(args.new_password)


def read_password_for_add(config: Config, args: argparse.Namespace) -> None:
    args.new_password, args.generated_password = None, False
    if args.password_stdin or args.generate_password:
        read_new_password(args)


def read_password_for_passwd(config: Config, args: argparse.Namespace) -> None:
    async def exists(store: Store, args: argparse.Namespace) -> None:
        await store.get_subscriber(args.subscriber)

    asyncio.run(run_admin(config, exists, args))  # no prompting for a subscriber that is not there
    read_new_password(args)


async def derive_for(password: str, policy: CredentialPolicy) -> StoredCredentials:
    # scrypt takes tens of milliseconds: keep it off the event loop, as the daemon must.
    return await asyncio.get_running_loop().run_in_executor(None, derive_credentials, password, policy, time.time())


async def cmd_subscriber_add(store: Store, args: argparse.Namespace) -> None:
    credentials = None
    if args.new_password is not None:
        plan = await store.get_plan(args.plan) if args.plan is not None else None
        credentials = await derive_for(args.new_password, effective_policy(args.credential_policy, plan))
    subscriber = await store.add_subscriber(
        args.username, actor=actor(), plan=args.plan, full_name=args.name, account_ref=args.account_ref,
        credential_policy=args.credential_policy, credentials=credentials,
    )
    if args.json:
        data = _jsonable(subscriber)
        if args.generated_password:
            data["password"] = args.new_password
        print_json(data)
        return
    if args.generated_password:
        print(f"password: {args.new_password}")
    print(f"added subscriber {subscriber.username} (#{subscriber.id})")


async def cmd_subscriber_list(store: Store, args: argparse.Namespace) -> None:
    subscribers = await store.list_subscribers(args.status)
    if args.json:
        print_json(subscribers)
        return
    plans = {p.id: p.name for p in await store.list_plans()}
    print_table(
        ["ID", "USERNAME", "STATUS", "PLAN", "NAME", "ACCOUNT"],
        [[s.id, s.username, s.status.value, plans.get(s.plan_id or 0), s.full_name, s.account_ref]
         for s in subscribers],
    )


async def cmd_subscriber_show(store: Store, args: argparse.Namespace) -> None:
    overview = await store.subscriber_overview(args.subscriber)
    found = status_effects(overview, args.loaded_config, await _dns_view(args.loaded_config, overview.subscriber.id),
                           time.time())
    if args.json:
        data = _jsonable(overview)
        # Only which forms exist is shown, never a value (the store hands out placeholders here).
        data["credentials"] = {"forms": overview.credentials.forms,
                               "updated_at": overview.credentials.updated_at or None}
        data["effects"] = _jsonable(found)
        print_json(data)
        return
    print(render_overview(overview))
    status = overview.subscriber.status.value
    print(f"effects       of being {status}, in each service" if found else "effects       none to show")
    for e in found:
        print(f"  {e.service:<6} {e.state:<8} {showable(e.subject)}: {showable(e.detail)}")  # (a NAS's session id)


# The helpdesk view is read from the store; the resolver's part is one line of it, which a wedged
# or stopped daemon (its socket still accepts) must not hold up for the control client's 60 s.
DNS_VIEW_WAIT_SECONDS = 5.0


async def _dns_view(config: Config, subscriber_id: int) -> dict[str, Any] | None:
    """The running resolver's walled addresses of this subscriber; None when no daemon answers."""
    from ispd.control import ControlError, control_request

    if not config.dns.enabled or config.daemon.control_socket is None:
        return None
    try:
        answer: dict[str, Any] = await control_request(config.daemon.control_socket, "dns.walled.show",
                                                      {"subscriber_id": subscriber_id},
                                                      wait_seconds=DNS_VIEW_WAIT_SECONDS)
    except (ControlError, OSError):
        return None
    return answer


def _session_ipv6(session: RadiusSession) -> str:
    """A session's IPv6 as its NAS reported it (the helpdesk's answer to "which /56 is mine")."""
    return "".join(f" {name} {showable(value)}" for name, value in (
        ("prefix", session.framed_ipv6_prefix), ("delegated", session.delegated_ipv6_prefix),
        ("address6", session.framed_ipv6_address)) if value)


def render_overview(o: SubscriberOverview) -> str:
    s, plan = o.subscriber, o.plan
    lines = [f"subscriber    {s.username} (#{s.id})"]
    status = s.status.value + (f" ({s.status_reason})" if s.status_reason else "")
    lines.append(f"status        {status}" + (f", since {when(o.status_since)}" if o.status_since is not None else ""))
    if s.full_name:
        lines.append(f"name          {s.full_name}")
    if s.account_ref:
        lines.append(f"account       {s.account_ref}")
    lines.append(f"plan          {describe_plan(plan) if plan else 'none'}")
    policy = effective_policy(s.credential_policy, plan)
    forms = o.credentials.forms
    cred = ", ".join(forms) if forms else "no password set"
    lines.append(f"credentials   {cred} (policy {policy.value}{'' if s.credential_policy is None else ', own'})")
    wanted = {CredentialPolicy.VERIFIER: ["verifier"], CredentialPolicy.NT_HASH: ["verifier", "nt-hash"],
              CredentialPolicy.CLEARTEXT: ["verifier", "nt-hash", "cleartext"]}[policy]
    missing = [f for f in wanted if f not in forms]
    if forms and missing:
        lines.append(f"              missing {', '.join(missing)}: set the password again to enable them")
    lines.append(f"created       {when(s.created_at)}")
    if s.radius_reply:
        lines.append(f"radius reply  {len(s.radius_reply)} of its own (with its plan's)")
        lines += [f"  {line}" for line in s.radius_reply]
    lines.append(f"reservations  {len(o.reservations) or 'none'}")
    lines += [f"  #{r.id} {describe_reservation(r)}" for r in o.reservations]
    lines.append(f"leases        {len(o.leases) or 'none'}")
    lines += [f"  {le.address} {le.state.value} until {when(le.expires_at)} mac {le.hw_address or '-'}"
              f"{' host ' + le.hostname if le.hostname else ''}" for le in o.leases]
    if o.bindings6:
        lines.append(f"dhcpv6        {len(o.bindings6)}")
        lines += [f"  {b.kind.value} {b.prefix} {b.state.value} until {when(b.expires_at)} duid {b.duid}"
                  f"{' host ' + b.hostname if b.hostname else ''}" for b in o.bindings6]
    lines.append(f"sessions      {len(o.sessions) or 'none'}")
    lines += [f"  {showable(x.acct_session_id)} on {x.nas_address} ip {x.framed_ip or '-'}{_session_ipv6(x)}"
              f" from {when(x.started_at)} {'open' if x.stopped_at is None else 'ended ' + when(x.stopped_at)}"
              f" in {x.input_octets} out {x.output_octets} bytes" for x in o.sessions]
    u = o.usage_this_month
    lines.append(f"usage         this month (UTC): in {u.input_octets} out {u.output_octets} bytes, "
                 f"{u.session_seconds} s online")
    if plan is not None and plan.monthly_quota_bytes:
        used = u.input_octets + u.output_octets
        state = "over: " + ("walled garden" if plan.over_quota is OverQuota.WALLED_GARDEN else "throttled") if (
            used >= plan.monthly_quota_bytes) else "under"
        lines.append(f"quota         {used * 100 // plan.monthly_quota_bytes}% of {plan.monthly_quota_bytes} bytes "
                     f"this month ({state})")
    if o.coa:
        lines.append("coa/disconnect")
        lines += [f"  {when(c.at)} {c.kind} session #{c.session_id} on {c.nas_address}: {c.result}"
                  f"{' error-cause ' + str(c.error_cause) if c.error_cause else ''}"
                  f"{' (' + showable(c.reason) + ')' if c.reason else ''}" for c in o.coa]
    lines.append(f"mailboxes     {len(o.mailboxes) or 'none'}")
    lines += [f"  {m.address}" for m in o.mailboxes]
    if o.aliases:
        lines.append(f"aliases       {len(o.aliases)}")
        lines += [f"  {a.address} -> {', '.join(a.targets)}" for a in o.aliases]
    lines.append("recent changes")
    for entry in o.audit:
        details = " ".join(f"{k}={_detail_text(v)}" for k, v in sorted(entry.details.items())
                           if v not in (None, [], ""))
        lines.append(f"  {when(entry.at)} {entry.actor} {entry.action} {details}".rstrip())
    return "\n".join(lines)


def _detail_text(value: object) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):  # (a change's previous values: "address:198.18.0.5,hostname:none")
        return ",".join(f"{k}:{'none' if v is None else v}" for k, v in value.items())
    return str(value)


def describe_reservation(r: Reservation) -> str:
    fixed = [f"{what} {value}" for what, value in (("address", r.address), ("IPv6 address", r.address6),
                                                    ("prefix", r.prefix6)) if value]
    target = ", ".join(fixed) or "an address from the pools"
    return f"{r.kind.value} {r.key} -> {target}{', host name ' + r.hostname if r.hostname else ''}"


def describe_plan(p: Plan) -> str:
    parts = [p.name]
    if p.download_kbps or p.upload_kbps:
        parts.append(f"{p.download_kbps or '-'}/{p.upload_kbps or '-'} kbit/s down/up")
    if p.session_timeout_seconds:
        parts.append(f"session timeout {p.session_timeout_seconds} s")
    if p.idle_timeout_seconds:
        parts.append(f"idle timeout {p.idle_timeout_seconds} s")
    if p.max_sessions:
        parts.append(f"max sessions {p.max_sessions}")
    if p.mail_quota_bytes is not None:
        parts.append(f"mail quota {p.mail_quota_bytes} bytes")
    if p.suspended_mail is SuspendedMail.NONE:
        parts.append("no mail reading while suspended")
    if p.monthly_quota_bytes is not None:
        after = ("walled garden" if p.over_quota is OverQuota.WALLED_GARDEN else
                 f"{p.over_quota_download_kbps or '-'}/{p.over_quota_upload_kbps or '-'} kbit/s")
        parts.append(f"monthly quota {p.monthly_quota_bytes} bytes, then {after}")
    return ", ".join(parts)


async def cmd_subscriber_status(store: Store, args: argparse.Namespace, status: SubscriberStatus) -> None:
    subscriber = await store.set_subscriber_status(args.subscriber, status, actor=actor(),
                                                   reason=getattr(args, "reason", None))
    print(f"{subscriber.username} is now {subscriber.status.value}")


async def cmd_subscriber_delete(store: Store, args: argparse.Namespace) -> None:
    mailboxes = await store.list_mailboxes(subscriber=args.subscriber)
    subscriber = await store.delete_subscriber(args.subscriber, actor=actor())
    print(f"deleted subscriber {subscriber.username} (#{subscriber.id}); its history is kept")
    for mailbox in mailboxes:  # gone with it (the store cascades): their mail is set aside as `mailbox delete` does
        archive = Maildir.for_address(args.mail.maildir_root, mailbox.address).set_aside()
        kept = f"; its mail is kept in {archive} until you remove it" if archive else " (it had no mail on disk)"
        print(f"deleted its mailbox {mailbox.address}{kept}")
    await print_aliases_naming(store, {m.address for m in mailboxes})


async def cmd_subscriber_set_plan(store: Store, args: argparse.Namespace) -> None:
    subscriber = await store.set_subscriber_plan(args.subscriber, None if args.none else args.plan, actor=actor())
    plan = await store.get_plan(subscriber.plan_id) if subscriber.plan_id is not None else None
    print(f"{subscriber.username} is now on {'plan ' + plan.name if plan else 'no plan'}")


def check_radius_reply(config: Config, args: argparse.Namespace) -> None:
    """The attributes against the dictionaries the daemon loads (``radius.dictionaries``), as
    plan attributes are checked at start: a mistake is refused here, not met at a login."""
    from ispd.radius.attributes import AttributeValueError, subscriber_reply_attribute
    from ispd.radius.dictionary import DictionaryError, load_dictionary

    if not (args.attributes or args.clear):
        return
    try:
        dictionary = load_dictionary(config.radius.dictionaries)
    except DictionaryError as exc:
        raise CommandFailed(f"cannot read the RADIUS dictionaries: {exc}") from None
    args.radius_dictionary = dictionary  # (which attributes the audit keeps no value of)
    args.radius_reply_ipv6 = []
    for text in args.attributes:
        try:
            subscriber_reply_attribute(dictionary, text)
        except AttributeValueError as exc:
            raise CommandFailed(f"{text!r}: {exc}") from None
        network = _reply_ipv6(dictionary, text)
        if network is not None:
            _refuse_a_pool_s_ipv6(config, text, network)
            args.radius_reply_ipv6.append((text, network))


def _reply_ipv6(dictionary: Dictionary, text: str) -> IPv6Network | None:
    """The IPv6 address or prefix a reply attribute gives a subscriber, if it gives one."""
    from ispd.radius.attributes import AttributeValueError, subscriber_reply_attribute
    from ispd.radius.codec import Attr

    try:
        reply = subscriber_reply_attribute(dictionary, text)
    except AttributeValueError:
        return None
    if reply.vendor or reply.code not in (Attr.FRAMED_IPV6_PREFIX, Attr.DELEGATED_IPV6_PREFIX,
                                          Attr.FRAMED_IPV6_ADDRESS):
        return None
    return IPv6Network(text.split("=", 1)[1].strip().strip("\"'"), strict=False)


# A subscriber's own IPv6 address or prefixes are one IPAM with the reservations and the pools,
# as its Framed-IP-Address is (which a reply attribute may not give at all).
_RESERVE_INSTEAD = "reserve it instead (ispd reservation add NAME --username LOGIN --prefix6 P or --address6 A)"


def _refuse_a_pool_s_ipv6(config: Config, text: str, network: IPv6Network) -> None:
    """A reply attribute's IPv6 address or prefix that overlaps a pool: the pool would hand it to
    someone else (a RADIUS prefix pool skips reservations, not reply attributes)."""
    first, last = int(network.network_address), int(network.broadcast_address)
    spans = [(f"[[radius.prefix_pool]] {p.name!r} ({p.prefix})", int(p.prefix.network_address),
              int(p.prefix.broadcast_address)) for p in config.radius.prefix_pool]
    for subnet in config.dhcp6.subnet if config.dhcp6.enabled else ():
        spans += subnet.handed_out()
    for what, pool_first, pool_last in spans:
        if first <= pool_last and pool_first <= last:
            raise CommandFailed(f"{text!r}: overlaps {what}, which hands its prefixes to others; {_RESERVE_INSTEAD}")


async def _refuse_another_s_ipv6(store: Store, subscriber_id: int, given: Sequence[tuple[str, IPv6Network]],
                                 dictionary: Dictionary) -> None:
    """A reply attribute's IPv6 address or prefix that overlaps another subscriber's reserved one,
    or one another subscriber's own reply attributes give: RADIUS would hand it to both."""
    if not given:
        return
    await _refuse_another_s_reply_ipv6(store, subscriber_id, given, dictionary)
    for reservation in await store.list_reservations():
        if reservation.subscriber_id == subscriber_id:
            continue
        for held in (reservation.prefix6, reservation.address6):
            if held is None:
                continue
            for text, network in given:
                if network.overlaps(IPv6Network(held)):
                    raise CommandFailed(f"{text!r}: overlaps {held}, reserved for another subscriber (reservation "
                                        f"#{reservation.id})")


def load_reply_dictionary(config: Config, args: argparse.Namespace) -> None:
    """The dictionaries a reservation's IPv6 address or prefix is checked with against other
    subscribers' own reply attributes (``_refuse_another_s_reply_ipv6``)."""
    from ispd.radius.dictionary import DictionaryError, load_dictionary

    args.radius_dictionary = None
    if getattr(args, "address6", None) is None and getattr(args, "prefix6", None) is None:
        return
    try:
        args.radius_dictionary = load_dictionary(config.radius.dictionaries)
    except DictionaryError as exc:
        raise CommandFailed(f"cannot read the RADIUS dictionaries: {exc}") from None


async def _refuse_another_s_reply_ipv6(store: Store, subscriber_id: int, given: Sequence[tuple[str, IPv6Network]],
                                       dictionary: Dictionary | None) -> None:
    """An IPv6 address or prefix (a reply attribute's, or a reservation's) that overlaps one
    another subscriber's own reply attributes give: RADIUS would hand it to both."""
    if not given or dictionary is None:
        return
    for other in await store.list_subscribers():
        if other.id == subscriber_id:
            continue
        for line in other.radius_reply:
            held_network = _reply_ipv6(dictionary, line)
            if held_network is None:
                continue
            for text, network in given:
                if network.overlaps(held_network):
                    raise CommandFailed(f"{text!r}: overlaps {held_network}, {other.username}'s own reply "
                                        f"attribute ({line}); {_RESERVE_INSTEAD}")


def _reserved_ipv6(address6: str | None, prefix6: str | None) -> list[tuple[str, IPv6Network]]:
    return [(text, IPv6Network(text, strict=False)) for text in (address6, prefix6) if text]


def _hidden_names(dictionary: Dictionary, lines: Sequence[str]) -> set[str]:
    """The attributes among ``lines`` whose values are secrets (a Tunnel-Password, or one the
    dictionary flags ``secret``): the audit, which keeps what it is given for good, does not get
    their values."""
    names = set()
    for line in lines:
        name = line.split("=", 1)[0].split(":", 1)[0].strip()
        attribute = dictionary.get(name)
        if attribute is not None and attribute.secret:  # (set for every encrypted one too)
            names.add(name)
    return names


async def cmd_subscriber_radius_reply(store: Store, args: argparse.Namespace) -> None:
    if args.clear or args.attributes:
        lines = [] if args.clear else args.attributes
        before = await store.get_subscriber(args.subscriber)
        await _refuse_another_s_ipv6(store, before.id, getattr(args, "radius_reply_ipv6", []),
                                     args.radius_dictionary)
        subscriber = await store.set_radius_reply(args.subscriber, lines, actor=actor(), hidden=_hidden_names(
            args.radius_dictionary, [*before.radius_reply, *lines]))
    else:
        subscriber = await store.get_subscriber(args.subscriber)
    if args.json:
        print_json({"subscriber": subscriber.username, "radius_reply": list(subscriber.radius_reply)})
        return
    if not subscriber.radius_reply:
        print(f"{subscriber.username} has no reply attributes of its own (its plan's apply)")
    for line in subscriber.radius_reply:
        print(line)


async def cmd_subscriber_passwd(store: Store, args: argparse.Namespace) -> None:
    subscriber = await store.get_subscriber(args.subscriber)
    plan = await store.get_plan(subscriber.plan_id) if subscriber.plan_id is not None else None
    credentials = await derive_for(args.new_password, effective_policy(subscriber.credential_policy, plan))
    await store.set_credentials(subscriber.id, credentials, actor=actor())
    if args.generated_password:
        print(f"password: {args.new_password}")
    print(f"password set; stored forms: {', '.join(credentials.forms)}")


async def cmd_plan_add(store: Store, args: argparse.Namespace) -> None:
    plan = await store.add_plan(
        args.name, actor=actor(), download_kbps=args.download_kbps, upload_kbps=args.upload_kbps,
        session_timeout_seconds=args.session_timeout, idle_timeout_seconds=args.idle_timeout,
        max_sessions=args.max_sessions, mail_quota_bytes=args.mail_quota, credential_policy=args.credential_policy,
        suspended_mail=args.suspended_mail, monthly_quota_bytes=args.monthly_quota, over_quota=args.over_quota,
        over_quota_download_kbps=args.over_quota_download_kbps, over_quota_upload_kbps=args.over_quota_upload_kbps,
    )
    if args.json:
        print_json(plan)
    else:
        print(f"added plan {plan.name} (#{plan.id})")


async def cmd_plan_list(store: Store, args: argparse.Namespace) -> None:
    plans = await store.list_plans()
    if args.json:
        print_json(plans)
        return
    print_table(
        ["ID", "NAME", "DOWN_KBPS", "UP_KBPS", "SESSION_TIMEOUT", "MAX_SESSIONS", "MAIL_QUOTA", "CREDENTIALS"],
        [[p.id, p.name, p.download_kbps, p.upload_kbps, p.session_timeout_seconds, p.max_sessions,
          p.mail_quota_bytes, p.credential_policy.value] for p in plans],
    )


async def cmd_plan_show(store: Store, args: argparse.Namespace) -> None:
    plan = await store.get_plan(args.plan)
    if args.json:
        print_json(plan)
        return
    fields = dataclasses.fields(plan)
    width = max(len(f.name) for f in fields) + 2
    for f in fields:
        value = getattr(plan, f.name)
        shown = when(value) if f.name == "created_at" else value.value if isinstance(value, Enum) else value
        print(f"{f.name.replace('_', ' '):<{width}}{'-' if shown is None else shown}")


async def cmd_lease_list(store: Store, args: argparse.Namespace) -> None:
    leases = await store.list_leases(subscriber=args.subscriber, include_ended=args.all)
    bindings = await store.list_leases6(subscriber=args.subscriber, include_ended=args.all)
    if args.json:
        # One list, as before: the DHCPv4 leases, then the DHCPv6 bindings, told apart by their
        # "service" (dhcp or radius for a lease; dhcp6 for a binding, whose key is "prefix").
        print_json([*_jsonable(leases), *({**_jsonable(b), "service": "dhcp6"} for b in bindings)])
        return
    names = {s.id: s.username for s in await store.list_subscribers()}
    print_table(
        ["ADDRESS", "STATE", "EXPIRES", "MAC", "CLIENT_ID", "HOSTNAME", "SUBSCRIBER", "CIRCUIT_ID", "REMOTE_ID",
         "BY"],
        [[le.address, le.state.value, when(le.expires_at), le.hw_address, le.client_id, le.hostname,
          names.get(le.subscriber_id or 0), le.circuit_id, le.remote_id, le.service.value] for le in leases],
    )
    if bindings:
        print()
        print_table(
            ["DHCPV6", "PREFIX", "STATE", "EXPIRES", "DUID", "IAID", "HOSTNAME", "SUBSCRIBER", "LINK",
             "INTERFACE_ID", "REMOTE_ID"],
            [[b.kind.value, b.prefix, b.state.value, when(b.expires_at), b.duid, b.iaid, b.hostname,
              names.get(b.subscriber_id or 0), b.link, b.interface_id, b.remote_id] for b in bindings],
        )


async def username_of(store: Store, subscriber_id: int) -> str | None:
    try:
        return (await store.get_subscriber(subscriber_id)).username
    except NotFound:  # deleted meanwhile, by someone else
        return None


async def cmd_reservation_add(store: Store, args: argparse.Namespace) -> None:
    kind, key = next((k, getattr(args, k.name.lower())) for k in ReservationKind
                     if getattr(args, k.name.lower()) is not None)
    reserved = _reserved_ipv6(args.address6, args.prefix6)
    if reserved:
        holder = await store.get_subscriber(args.subscriber)
        await _refuse_another_s_reply_ipv6(store, holder.id, reserved, getattr(args, "radius_dictionary", None))
    reservation = await store.add_reservation(args.subscriber, kind, key, actor=actor(), address=args.address,
                                              hostname=args.hostname, address6=args.address6, prefix6=args.prefix6)
    await print_reservation(store, reservation, args, "added reservation #{id} for {holder}")
    warn_unleasable_address(args.loaded_config, reservation.address)


def warn_unleasable_address(config: Config, address: str | None) -> None:
    """A fixed address that is a DHCP subnet's network, broadcast, router or server address is
    kept (the reservation still names its subscriber), but DHCP never gives it: its client gets
    a pool address instead. Say so now rather than leave the operator to find it in a lease list."""
    if address is None:
        return
    fixed = IPv4Address(address) if "." in address else None
    for subnet in config.dhcp.subnet:
        if fixed is None or fixed not in subnet.network:
            continue
        held = config.dhcp.never_leased(subnet)
        if fixed in held:
            print(f"ispd: warning: {fixed} is {held[fixed]} of subnet {subnet.network}: DHCP never gives it to a "
                  "client, so this client gets a pool address instead", file=sys.stderr)


async def print_reservation(store: Store, reservation: Reservation, args: argparse.Namespace, title: str) -> None:
    username = await username_of(store, reservation.subscriber_id)
    if args.json:
        print_json({**_jsonable(reservation), "username": username})
        return
    holder = username or f"#{reservation.subscriber_id}"
    print(f"{title.format(id=reservation.id, holder=holder)}: {describe_reservation(reservation)}")


RESERVATION_FIELDS = ("address", "address6", "prefix6", "hostname")


def reservation_set_usage(args: argparse.Namespace) -> str | None:
    given = [name for name in RESERVATION_FIELDS if getattr(args, name) is not None]
    both = [name for name in given if name in args.clear]
    if both:
        return f"give --{both[0]} or --clear {both[0]}, not both"
    if not given and not args.clear:
        return "nothing to change: give --address, --address6, --prefix6, --hostname or --clear FIELD"
    return None


async def cmd_reservation_set(store: Store, args: argparse.Namespace) -> None:
    given = {name: getattr(args, name) for name in RESERVATION_FIELDS if getattr(args, name) is not None}
    changes: dict[str, str | Unchanged | None] = {**given, **dict.fromkeys(args.clear)}

    def change(name: str) -> str | Unchanged | None:
        return changes.get(name, UNCHANGED)

    before = await store.get_reservation(args.id)
    await _refuse_another_s_reply_ipv6(store, before.subscriber_id, _reserved_ipv6(args.address6, args.prefix6),
                                       getattr(args, "radius_dictionary", None))
    reservation = await store.update_reservation(args.id, actor=actor(), address=change("address"),
                                                 hostname=change("hostname"), address6=change("address6"),
                                                 prefix6=change("prefix6"))
    await print_reservation(store, reservation, args, "reservation #{id} of {holder}")
    if args.address is not None:
        warn_unleasable_address(args.loaded_config, reservation.address)
    if not args.json:
        await print_sessions_keeping(store, before, reservation)


async def cmd_reservation_list(store: Store, args: argparse.Namespace) -> None:
    reservations = await store.list_reservations(subscriber=args.subscriber)
    names = {s.id: s.username for s in await store.list_subscribers()}
    if args.json:
        print_json([{**_jsonable(r), "username": names.get(r.subscriber_id)} for r in reservations])
        return
    print_table(
        ["ID", "SUBSCRIBER", "KIND", "KEY", "ADDRESS", "ADDRESS6", "PREFIX6", "HOSTNAME"],
        [[r.id, names.get(r.subscriber_id), r.kind.value, r.key, r.address, r.address6, r.prefix6, r.hostname]
         for r in reservations],
    )


async def cmd_reservation_delete(store: Store, args: argparse.Namespace) -> None:
    reservation = await store.delete_reservation(args.id, actor=actor())
    holder = await username_of(store, reservation.subscriber_id) or f"#{reservation.subscriber_id}"
    print(f"deleted reservation #{reservation.id} of {holder}: {describe_reservation(reservation)}")
    await print_sessions_keeping(store, reservation, None)


async def print_sessions_keeping(store: Store, before: Reservation, after: Reservation | None) -> None:
    """The subscriber's open RADIUS sessions that still use what the reservation fixed before
    (an address, IPv6 address or prefix it no longer does): a NAS keeps a session's addresses
    until it logs in again, so say so now rather than leave the operator to wonder. (DHCP
    needs no word: a lease on a reserved address given up is NAKed at its next renewal.)"""
    dropped = {getattr(before, name) for name in ("address", "address6", "prefix6")
               if getattr(before, name) is not None
               and (after is None or getattr(after, name) != getattr(before, name))}
    if not dropped:
        return
    for session in await store.list_sessions(open_only=True, subscriber=before.subscriber_id):
        kept = [value for value in (session.framed_ip, session.framed_ipv6_address, session.delegated_ipv6_prefix)
                if value is not None and value in dropped]
        if kept:
            print(f"session #{session.id} ({session.username} on {session.nas_client or session.nas_address}) "
                  f"still has {', '.join(kept)} until it logs in again (`ispd session disconnect {session.id}` "
                  "ends it now)")


async def cmd_lease_show(store: Store, args: argparse.Namespace) -> None:
    if ":" in args.address:
        await _show_lease6(store, args)
        return
    lease: Lease | None
    try:
        lease = await store.get_lease(args.address)
    except NotFound:
        lease = None
    history = await store.lease_history(args.address, limit=args.limit)
    if lease is None and not history:
        raise CommandFailed(f"no lease for {args.address}")
    username = None
    if lease is not None and lease.subscriber_id is not None:
        username = await username_of(store, lease.subscriber_id)
    if args.json:
        current = None if lease is None else {**_jsonable(lease), "username": username}
        print_json({"address": args.address, "lease": current, "history": history})
        return
    print(render_lease(args.address, lease, username, history, args.limit))


async def _show_lease6(store: Store, args: argparse.Namespace) -> None:
    lease: Lease6 | None
    try:
        lease = await store.get_lease6(args.address)
    except NotFound:
        lease = None
    history = await store.lease6_history(args.address, limit=args.limit)
    if lease is None and not history:
        hint = f" (ispd who {args.address.removesuffix('/128')} names the delegated prefix that holds an address)" \
            if args.address.endswith("/128") else ""
        raise CommandFailed(f"no DHCPv6 binding for {args.address}{hint}")
    username = None
    if lease is not None and lease.subscriber_id is not None:
        username = await username_of(store, lease.subscriber_id)
    if args.json:
        current = None if lease is None else {**_jsonable(lease), "username": username}
        print_json({"prefix": args.address, "lease": current, "history": history})
        return
    print(render_lease6(args.address, lease, username, history, args.limit))


def lease_key_text(text: str) -> str:
    """What ``lease show`` is asked about: an IPv4 address (a DHCP lease), or an IPv6 address or
    prefix (a DHCPv6 binding: an address is its /128)."""
    if ":" in text:
        return dhcp6_prefix_text(text)
    try:
        return ipv4_text(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address, an IPv6 address or an IPv6 prefix (write it like "
                         "198.18.0.10, 2001:db8:1::10 or 2001:db8:100:ff00::/56)") from None


LAST_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()  # the last that prints as a date


def moment(text: str) -> float:
    """A time on the command line: ISO 8601 (``2026-11-03T14:00:00+01:00``, ``2026-11-03 14:00``,
    ``2026-11-03``; without a zone, UTC), a POSIX timestamp, or ``now``."""
    if text == "now":
        return time.time()
    try:
        value = float(text) if text.replace(".", "", 1).isdigit() else _utc(datetime.fromisoformat(text)).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: write it as 2026-11-03T14:00:00Z, 2026-11-03 14:00 (UTC), a POSIX "
            "timestamp, or now") from None
    if not 0 <= value <= LAST_TIME:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: give a time from 1970 to 9999")
    return value


def span_usage(args: argparse.Namespace) -> str | None:
    """A --from after its --to (or, without one, after now) is a command line mistake, exit 2, as
    the other ones of these options are; the store's refusal of it exited 1."""
    if args.since is None:
        return None
    until = args.until if args.until is not None else time.time()
    if args.since > until:
        return f"--from {when(args.since)} is after {'--to ' + when(until) if args.until is not None else 'now'}: " \
            "the end of the span comes before its start"
    return None


def _utc(moment_: datetime) -> datetime:
    return moment_.replace(tzinfo=UTC) if moment_.tzinfo is None else moment_


def month(text: str) -> tuple[float, float]:
    """A month on the command line (``2026-11``) as its first and last instant, UTC."""
    try:
        first = datetime.strptime(text, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a month: write it as 2026-11") from None
    if first.year < 1970:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: give a month from 1970-01 to 9999-12")
    if (first.year, first.month) == (9999, 12):
        return first.timestamp(), LAST_TIME
    following = first.replace(year=first.year + first.month // 12, month=first.month % 12 + 1)
    return first.timestamp(), following.timestamp() - 1


USAGE_COLUMNS = ("subscriber_id", "username", "day", "input_octets", "output_octets", "session_seconds")


async def cmd_usage(store: Store, args: argparse.Namespace) -> None:
    """Per day for one subscriber; for all of them (billing), one line each with the totals."""
    if args.month is None and args.since is None and args.until is None:
        args.month = month(time.strftime("%Y-%m", time.gmtime()))
    since, until = args.month if args.month is not None else (
        args.since if args.since is not None else 0.0, args.until if args.until is not None else time.time())
    days = await store.usage_by_day(args.subscriber, since=since, until=until)
    rows = days
    warn_before_retention(args.loaded_config, since, usage=True)
    if args.subscriber is None:  # one row per subscriber: the span's totals
        totals: dict[int, DailyUsage] = {}
        for d in days:
            t = totals.get(d.subscriber_id)
            totals[d.subscriber_id] = d if t is None else DailyUsage(
                d.subscriber_id, d.username, f"{t.day.split('..')[0]}..{d.day}", t.input_octets + d.input_octets,
                t.output_octets + d.output_octets, t.session_seconds + d.session_seconds)
        rows = list(totals.values())
    # (kept per UTC day: the span is read in whole days, the last one it has any of)
    first_day, last_day = usage_days(since, until)
    if args.json:  # the days too: since and until are the times asked (a month's last second, a midnight)
        print_json({"since": since, "until": until, "first_day": when(first_day * 86400)[:10],
                    "last_day": when(last_day * 86400)[:10], "usage": rows})
    elif args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(USAGE_COLUMNS)
        writer.writerows([[getattr(r, c) for c in USAGE_COLUMNS] for r in rows])
    else:
        print(f"usage from {when(first_day * 86400)[:10]} to {when(last_day * 86400)[:10]}, whole UTC days "
              "(input: from the subscriber, output: to them)")
        print_table(["SUBSCRIBER", "DAY" if args.subscriber is not None else "DAYS", "INPUT", "OUTPUT", "TIME"],
                    [[r.username or f"#{r.subscriber_id} (deleted)", r.day, size_text(r.input_octets),
                      size_text(r.output_octets), hours_text(r.session_seconds)] for r in rows])
        if rows:
            total_in, total_out = sum(r.input_octets for r in rows), sum(r.output_octets for r in rows)
            print(f"total: input {size_text(total_in)}, output {size_text(total_out)}, "
                  f"{hours_text(sum(r.session_seconds for r in rows))} online")


def hours_text(seconds: int) -> str:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def size_text(octets: int) -> str:
    value = float(octets)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return f"{octets} B"


WHO_COLUMNS = ("address", "source", "starts_at", "ends_at", "username", "subscriber_id", "hw_address", "client_id",
               "hostname", "circuit_id", "remote_id", "pool", "nas_address", "nas_identifier", "nas_port_id",
               "acct_session_id", "terminate_cause", "evidence")
IPV6_ONLY = ("prefix", "prefix_kind")  # an IPv6 question's answer: the session's prefix that held it
PREFIX_KINDS = {"framed": "framed prefix", "delegated": "delegated prefix", "framed-address": "framed address",
                "address": "address"}


async def cmd_who(store: Store, args: argparse.Namespace) -> None:
    if args.at is None and args.since is None and args.until is None:
        args.at = time.time()
    since = args.at if args.at is not None else (args.since if args.since is not None else 0.0)
    until = args.at if args.at is not None else (args.until if args.until is not None else time.time())
    holdings = await store.who(args.address, since=since, until=until)
    span = f"at {when(since)}" if since == until else f"from {when(since)} to {when(until)}"
    # An IPv4 answer keeps the columns and keys it always had; an IPv6 one adds the prefix.
    ipv6 = ":" in args.address
    columns = (*WHO_COLUMNS, *IPV6_ONLY) if ipv6 else WHO_COLUMNS
    if args.json:
        print_json({"address": args.address, "since": since, "until": until, "holdings": [
            {k: v for k, v in _jsonable(h).items() if ipv6 or k not in IPV6_ONLY} for h in holdings]})
    elif args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for h in holdings:
            evidence = " ".join(f"{e.table}#{e.id}:{e.event}" for e in h.evidence)
            writer.writerow([when(h.starts_at) if c == "starts_at" else when(h.ends_at) if c == "ends_at"
                             else evidence if c == "evidence" else getattr(h, c) for c in columns])
    elif not holdings:
        print(f"nobody held {args.address} {span} (no lease or session in the history kept)")
    else:
        print(f"{args.address} {span}:")
        for h in holdings:
            print(render_holding(h))
    warn_before_retention(args.loaded_config, since)
    if not holdings:
        raise SystemExit(1)


def warn_before_retention(config: Config, since: float, *, usage: bool = False) -> None:
    """A question about a time whose history retention has deleted: an empty answer there says
    nothing of who held what, and the operator reading it must know (on stderr, not to break a
    script reading the answer). Usage keeps this month's and last month's whatever the retention."""
    days = config.store.history_retention_days
    now = time.time()
    cut = now - days * 86400
    if usage:
        cut = min(cut, month_start(month_start(now) - 1))
    if since < cut:
        print(f"ispd: note: history before {when(cut)[:10]} is deleted (store.history_retention_days = {days}): "
              "nothing before then can be answered", file=sys.stderr)


def render_holding(h: Holding) -> str:
    username = showable(h.username) if h.username else None  # (a RADIUS session's is the NAS's)
    who_ = f"{username} (#{h.subscriber_id})" if username and h.subscriber_id else (
        username or (f"#{h.subscriber_id}" if h.subscriber_id else "no subscriber (an unknown client)"))
    how = {"dhcp": "DHCP lease", "radius-pool": "RADIUS, from ispd's pool", "radius-session": "RADIUS session",
           "dhcp6": "DHCPv6 binding"}
    ends = "still open" if h.ends_at is None else f"until {when(h.ends_at)}"
    held_by = "" if h.prefix is None else f", {PREFIX_KINDS.get(h.prefix_kind or '', h.prefix_kind)} {h.prefix}"
    lines = [f"  {who_}: {how.get(h.source, h.source)}{held_by} from {when(h.starts_at)} {ends}"]
    dhcp6 = h.source == "dhcp6"  # its client id is the DUID, its circuit the relay's Interface-ID
    details = [("MAC" if h.source != "radius-session" else "Calling-Station-Id", h.hw_address),
               ("DUID" if dhcp6 else "client-id", h.client_id), ("hostname", h.hostname),
               ("interface-id" if dhcp6 else "circuit-id", h.circuit_id),
               ("remote-id", h.remote_id), ("pool", h.pool), ("NAS", h.nas_address),
               ("NAS-Identifier", h.nas_identifier), ("NAS-Port-Id", h.nas_port_id),
               ("Acct-Session-Id", h.acct_session_id), ("ended by", h.terminate_cause)]
    shown = ", ".join(f"{label} {showable(value)}" for label, value in details if value)
    if shown:
        lines.append(f"    {shown}")
    lines += [f"    {e.table} #{e.id}  {when(e.at)}  {e.event}" for e in h.evidence]
    return "\n".join(lines)


def _holding_state(lease: Lease | Lease6, username: str | None) -> tuple[str, str | None]:
    """A lease's or binding's state as `lease show` prints it, and who holds it."""
    state = lease.state.value
    if lease.state is LeaseState.BOUND and lease.expires_at <= time.time():
        state += " (expired, not yet reclaimed)"
    subscriber = (f"{username} (#{lease.subscriber_id})" if username
                  else None if lease.subscriber_id is None else f"#{lease.subscriber_id}")
    return state, subscriber


def render_lease(address: str, lease: Lease | None, username: str | None, history: list[LeaseHistoryEntry],
                 limit: int) -> str:
    lines = [f"address       {address}"]
    if lease is None:
        lines.append("state         no current lease (only history is kept)")
    else:
        state, subscriber = _holding_state(lease, username)
        for label, value in (
            ("state", state), ("starts", when(lease.starts_at)), ("expires", when(lease.expires_at)),
            ("mac", lease.hw_address), ("client id", lease.client_id), ("hostname", lease.hostname),
            ("subscriber", subscriber), ("circuit id", lease.circuit_id), ("remote id", lease.remote_id),
            ("pool", lease.pool),
        ):
            lines.append(f"{label:<14}{'-' if value is None else value}")
    if not history:
        lines.append("history       none")
        return "\n".join(lines)
    more = f", the newest {limit}" if len(history) == limit else ""
    lines += ["", f"history (newest first{more})"]
    headers = ["AT", "EVENT", "MAC", "CLIENT_ID", "HOSTNAME", "SUBSCRIBER", "CIRCUIT_ID", "REMOTE_ID", "POOL",
               "STARTS", "EXPIRES"]
    rows = [[when(h.at), h.event, h.hw_address, h.client_id, h.hostname,
             h.username or (None if h.subscriber_id is None else f"#{h.subscriber_id}"), h.circuit_id,
             h.remote_id, h.pool, when(h.starts_at), when(h.expires_at)] for h in history]
    return "\n".join(lines + table_lines(headers, rows))


def render_lease6(prefix: str, lease: Lease6 | None, username: str | None, history: list[Lease6HistoryEntry],
                  limit: int) -> str:
    lines = [f"prefix        {prefix}"]
    if lease is None:
        lines.append("state         no current binding (only history is kept)")
    else:
        state, subscriber = _holding_state(lease, username)
        kind = "na (an address, IA_NA)" if lease.kind is Lease6Kind.ADDRESS else "pd (a delegated prefix, IA_PD)"
        for label, value in (
            ("kind", kind), ("state", state), ("starts", when(lease.starts_at)),
            ("preferred", when(lease.preferred_until)), ("expires", when(lease.expires_at)), ("duid", lease.duid),
            ("iaid", lease.iaid), ("hostname", lease.hostname), ("subscriber", subscriber), ("link", lease.link),
            ("pool", lease.pool), ("interface id", lease.interface_id), ("remote id", lease.remote_id),
        ):
            lines.append(f"{label:<14}{'-' if value is None else value}")
    if not history:
        lines.append("history       none")
        return "\n".join(lines)
    more = f", the newest {limit}" if len(history) == limit else ""
    lines += ["", f"history (newest first{more})"]
    headers = ["AT", "EVENT", "DUID", "IAID", "HOSTNAME", "SUBSCRIBER", "LINK", "INTERFACE_ID", "REMOTE_ID",
               "STARTS", "EXPIRES"]
    rows = [[when(h.at), h.event, h.duid, h.iaid, h.hostname,
             h.username or (None if h.subscriber_id is None else f"#{h.subscriber_id}"), h.link, h.interface_id,
             h.remote_id, when(h.starts_at), when(h.expires_at)] for h in history]
    return "\n".join(lines + table_lines(headers, rows))


# --- argument parsing ---------------------------------------------------------------------------

_SIZE = re.compile(r"^([0-9]+)\s*([KMGT]?)(i?B?)?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from '500000', '512K', '2G' (binary multiples, as mail quotas usually are)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1048576, 512M, 2G)")
    exponent = " KMGT".index(match[2].upper() or " ")
    size = int(match[1]) << (10 * exponent)
    if size > MAX_STORED_INT:
        raise argparse.ArgumentTypeError(f"{text!r} is too large")
    return size


MAX_STORED_INT = 2**63 - 1  # what a 64-bit database integer holds


def positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= MAX_STORED_INT:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number (at most {MAX_STORED_INT})")
    return int(text)


_Arg = TypeVar("_Arg")


def checked_arg(check: Callable[[str], _Arg]) -> Callable[[str], _Arg]:
    """An argparse type from a store check: its ValueError becomes a usage error with its message."""
    def convert(text: str) -> _Arg:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


name_text = checked_arg(usable_text)
SUBSCRIBER_HELP = "username or id (#ID: the id, always)"


def build_parser() -> argparse.ArgumentParser:
    config_opts = argparse.ArgumentParser(add_help=False)
    config_opts.add_argument(
        "-c", "--config", type=Path, default=None,
        help=f"config file (default: $ISPD_CONFIG or {DEFAULT_CONFIG})",
    )
    json_opt = argparse.ArgumentParser(add_help=False)
    json_opt.add_argument("--json", action="store_true", help="print JSON instead of text")
    export_opts = argparse.ArgumentParser(add_help=False)  # reports that billing and lawyers take away
    export = export_opts.add_mutually_exclusive_group()
    export.add_argument("--json", action="store_true", help="print JSON instead of text")
    export.add_argument("--csv", action="store_true", help="print CSV: one row per line of the report")
    password_opts = argparse.ArgumentParser(add_help=False)
    group = password_opts.add_mutually_exclusive_group()
    group.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    group.add_argument("--generate-password", action="store_true", help="generate one and print it once")
    policies = [p.value for p in CredentialPolicy]

    # (No abbreviations before the command: ispd.entry must find `run` after `-c FILE` or
    # `--config FILE` alone, to hold signals back from the first instant.)
    parser = argparse.ArgumentParser(prog="ispd", description="ispd: the core network services of an ISP",
                                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"ispd {__version__}")
    # Also before the command (`ispd -c FILE subscriber list`, as unbound-control -c and postconf -c
    # take it), which argparse otherwise reads as a command named FILE; the command's own -c wins.
    parser.add_argument("-c", "--config", type=Path, dest="global_config", metavar="CONFIG",
                        help=f"config file, before the command (default: $ISPD_CONFIG or {DEFAULT_CONFIG})")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    top.add_parser("run", parents=[config_opts], help="run the daemon")
    top.add_parser("check-config", parents=[config_opts], help="validate the config file and exit")
    p = top.add_parser("worker", parents=[config_opts], help="(started by ispd run) one service in its own process")
    p.add_argument("service")
    p.add_argument("--control", type=Path, required=True, help="the private control socket to serve")
    p.add_argument("--ready-fd", type=int, default=-1, help="where to say ready (or why not)")
    p.add_argument("--parent-pid", type=int, default=0, help="the supervisor: the worker dies with it")
    p.add_argument("--instance", type=int, default=1, help="which of the service's processes (2 and up: extras)")
    p.add_argument("--config-snapshot", type=Path,
                   help="run on this config (JSON, written by the main process) rather than the file's")
    p.add_argument("--handed-files", type=Path,
                   help="use the files the main process loaded (a manifest it wrote) rather than the disk's")
    p.add_argument("--audit-from", type=int,
                   help="announce the store's audit log from after this entry (where the last worker was)")

    sub = top.add_parser("subscriber", help="manage subscribers").add_subparsers(dest="action", required=True)
    p = sub.add_parser("add", parents=[config_opts, json_opt, password_opts], help="add a subscriber")
    p.add_argument("username", type=name_text)
    p.add_argument("--plan", type=name_text)
    p.add_argument("--name", type=name_text, help="the person's or company's name")
    p.add_argument("--account-ref", type=name_text, help="the billing system's account number")
    p.add_argument("--credential-policy", choices=policies,
                   help="password forms to keep for this subscriber (default: the plan's)")
    p.set_defaults(handler=cmd_subscriber_add, prepare=read_password_for_add)
    p = sub.add_parser("list", parents=[config_opts, json_opt], help="list subscribers")
    p.add_argument("--status", choices=[s.value for s in SubscriberStatus])
    p.set_defaults(handler=cmd_subscriber_list)
    p = sub.add_parser("show", parents=[config_opts, json_opt], help="everything known about one subscriber")
    p.add_argument("subscriber", help=SUBSCRIBER_HELP)
    p.set_defaults(handler=cmd_subscriber_show)
    p = sub.add_parser("suspend", parents=[config_opts], help="suspend a subscriber")
    p.add_argument("subscriber", help=SUBSCRIBER_HELP)
    p.add_argument("--reason", type=name_text, help="why (kept in the audit log)")
    p.set_defaults(handler=lambda s, a: cmd_subscriber_status(s, a, SubscriberStatus.SUSPENDED))
    p = sub.add_parser("close", parents=[config_opts],
                       help="close a subscriber's account: sessions disconnected, no logins, no mail; kept with its "
                            "history (resume reopens it)")
    p.add_argument("subscriber", help=SUBSCRIBER_HELP)
    p.add_argument("--reason", type=name_text, help="why (kept in the audit log)")
    p.set_defaults(handler=lambda s, a: cmd_subscriber_status(s, a, SubscriberStatus.CLOSED))
    p = sub.add_parser("resume", parents=[config_opts], help="resume a suspended or closed subscriber")
    p.add_argument("subscriber", help=SUBSCRIBER_HELP)
    p.set_defaults(handler=lambda s, a: cmd_subscriber_status(s, a, SubscriberStatus.ACTIVE))
    p = sub.add_parser("delete", parents=[config_opts], help="delete a subscriber (history is kept)")
    p.add_argument("subscriber", help=SUBSCRIBER_HELP)
    p.set_defaults(handler=cmd_subscriber_delete, prepare=remember_mail_config)
    p = sub.add_parser("set-plan", parents=[config_opts], help="move a subscriber to another plan",
                       description="Move a subscriber to another plan. A running daemon sends the subscriber's open "
                                   "RADIUS sessions a CoA-Request with the new plan's attributes (a Disconnect-Request "
                                   "when the new profile lacks one the old gave, such as its rate limit: a CoA "
                                   "cannot remove it).")
    p.add_argument("subscriber", help=SUBSCRIBER_HELP)
    p.add_argument("plan", nargs="?", help="the plan's name or id")
    p.add_argument("--none", action="store_true", help="no plan")
    p.set_defaults(handler=cmd_subscriber_set_plan, check=lambda a: None if a.none != (a.plan is not None) else
                   "give a PLAN or --none, not both" if a.none else "give a PLAN, or --none for no plan")
    p = sub.add_parser("radius-reply", parents=[config_opts, json_opt],
                       help="show or set a subscriber's own RADIUS reply attributes",
                       description="Show, or with ATTRIBUTEs replace, the reply attributes this subscriber's "
                                   "Access-Accepts carry besides its plan's (a business line's Framed-Route, a "
                                   "static Delegated-IPv6-Prefix), as FreeRADIUS's users file; an attribute also "
                                   "given by the plan is the subscriber's. Checked against the dictionaries; "
                                   "new logins get them.")
    p.add_argument("subscriber", help=SUBSCRIBER_HELP)
    p.add_argument("attributes", nargs="*", metavar="ATTRIBUTE",
                   help='e.g. \'Framed-Route = "203.0.113.0/29 0.0.0.0 1"\'')
    p.add_argument("--clear", action="store_true", help="remove them all")
    p.set_defaults(handler=cmd_subscriber_radius_reply, prepare=check_radius_reply,
                   check=lambda a: "give ATTRIBUTEs or --clear, not both" if a.clear and a.attributes else None)
    p = sub.add_parser("passwd", parents=[config_opts, password_opts], help="set a subscriber's password")
    p.add_argument("subscriber", help=SUBSCRIBER_HELP)
    p.set_defaults(handler=cmd_subscriber_passwd, prepare=read_password_for_passwd)

    plan = top.add_parser("plan", help="manage plans").add_subparsers(dest="action", required=True)
    p = plan.add_parser("add", parents=[config_opts, json_opt], help="add a plan")
    p.add_argument("name", type=name_text)
    p.add_argument("--download-kbps", type=positive_int)
    p.add_argument("--upload-kbps", type=positive_int)
    p.add_argument("--session-timeout", type=positive_int, metavar="SECONDS")
    p.add_argument("--idle-timeout", type=positive_int, metavar="SECONDS")
    p.add_argument("--max-sessions", type=positive_int, help="simultaneous sessions allowed")
    p.add_argument("--mail-quota", type=parse_size, metavar="SIZE", help="e.g. 2G")
    p.add_argument("--credential-policy", choices=policies, default=CredentialPolicy.VERIFIER.value,
                   help="password forms kept for its subscribers (default: verifier)")
    p.add_argument("--suspended-mail", choices=[m.value for m in SuspendedMail], default=SuspendedMail.READ.value,
                   help="while a subscriber is suspended: read = IMAP stays open for the billing notices "
                        "(default), none = IMAP logins refused too; mail is delivered either way")
    p.add_argument("--monthly-quota", type=parse_size, metavar="SIZE",
                   help="fair use: octets from and to the subscriber per calendar month (UTC), e.g. 500G")
    p.add_argument("--over-quota", choices=[o.value for o in OverQuota], default=OverQuota.THROTTLE.value,
                   help="past the quota, until the month ends: throttle (to the --over-quota-*-kbps rates, by "
                        "CoA) or walled-garden (default: throttle)")
    p.add_argument("--over-quota-download-kbps", type=positive_int)
    p.add_argument("--over-quota-upload-kbps", type=positive_int)
    p.set_defaults(handler=cmd_plan_add)
    p = plan.add_parser("list", parents=[config_opts, json_opt], help="list plans")
    p.set_defaults(handler=cmd_plan_list)
    p = plan.add_parser("show", parents=[config_opts, json_opt], help="show one plan")
    p.add_argument("plan", help="name or id")
    p.set_defaults(handler=cmd_plan_show)

    reservation = top.add_parser("reservation", help="DHCP and RADIUS reservations").add_subparsers(dest="action",
                                                                                         required=True)
    p = reservation.add_parser(
        "add", parents=[config_opts, json_opt],
        help="tie a client to a subscriber, with a fixed address or host name if given",
        description="Tie a client to a subscriber, by exactly one of --mac, --client-id (DHCP option 61), "
                    "--circuit-id or --remote-id (option 82, as the relay sends them; for DHCPv6 the relay's "
                    "Interface-ID and Remote-ID), --username (a RADIUS login) or --duid (a DHCPv6 client). Without "
                    "--address the client gets an address from the pools (RADIUS: from the NAS). --address6 and "
                    "--prefix6 (a fixed IPv6 address and delegated prefix) go with --duid, --circuit-id, "
                    "--remote-id or --username; a --duid reservation has no IPv4 --address.",
    )
    p.add_argument("subscriber", help=SUBSCRIBER_HELP)
    keys = p.add_mutually_exclusive_group(required=True)
    keys.add_argument("--mac", type=checked_arg(lambda v: reservation_key("mac", v)[1]), metavar="MAC",
                      help="e.g. 02:00:5e:10:00:01")
    keys.add_argument("--client-id", type=checked_arg(lambda v: reservation_key("client-id", v)[1]), metavar="HEX",
                      help="option 61 in hex, type byte first, e.g. 01:02:00:5e:10:00:01")
    keys.add_argument("--circuit-id", type=checked_arg(lambda v: reservation_key("circuit-id", v)[1]),
                      metavar="TEXT", help="relay agent circuit-id: printable text, or 0x and hex")
    keys.add_argument("--remote-id", type=checked_arg(lambda v: reservation_key("remote-id", v)[1]),
                      metavar="TEXT", help="relay agent remote-id: printable text, or 0x and hex")
    keys.add_argument("--username", type=checked_arg(lambda v: reservation_key("username", v)[1]),
                      metavar="LOGIN", help="a RADIUS login (User-Name, e.g. a PPPoE login) of the subscriber; "
                                            "its --address goes out as Framed-IP-Address, --address6 as "
                                            "Framed-IPv6-Address and --prefix6 as Delegated-IPv6-Prefix")
    keys.add_argument("--duid", type=checked_arg(lambda v: reservation_key("duid", v)[1]), metavar="HEX",
                      help="a DHCPv6 client's DUID in hex, type first, e.g. 00:03:00:01:02:00:5e:10:00:01")
    p.add_argument("--address", type=checked_arg(reservable_address), help="the fixed IPv4 address")
    p.add_argument("--address6", type=checked_arg(reservable_address6), metavar="ADDRESS",
                   help="a fixed IPv6 address (DHCPv6 IA_NA, RADIUS Framed-IPv6-Address), e.g. 2001:db8:1::10")
    p.add_argument("--prefix6", type=checked_arg(reservable_prefix6), metavar="PREFIX",
                   help="a fixed prefix to delegate (DHCPv6 IA_PD, RADIUS Delegated-IPv6-Prefix), e.g. "
                        "2001:db8:200::/48")
    p.add_argument("--hostname", type=checked_arg(hostname_text), help="the host name to give the client")
    p.set_defaults(handler=cmd_reservation_add, prepare=load_reply_dictionary)
    p = reservation.add_parser(
        "set", parents=[config_opts, json_opt], help="change what a reservation fixes",
        description="Change a reservation's fixed addresses or host name, in one audited step (kept: its "
                    "number, subscriber and client key; another client is a new reservation). Options not "
                    "given stay as they are; --clear empties one. The daemons apply it at once: DHCP at the "
                    "client's next renewal, RADIUS at the login's next Access-Request (an open session keeps "
                    "what it was given).",
    )
    p.add_argument("id", type=positive_int, help="the reservation's number (see reservation list)")
    p.add_argument("--address", type=checked_arg(reservable_address), help="the fixed IPv4 address")
    p.add_argument("--address6", type=checked_arg(reservable_address6), metavar="ADDRESS",
                   help="the fixed IPv6 address")
    p.add_argument("--prefix6", type=checked_arg(reservable_prefix6), metavar="PREFIX",
                   help="the fixed prefix to delegate")
    p.add_argument("--hostname", type=checked_arg(hostname_text), help="the host name to give the client")
    p.add_argument("--clear", action="append", default=[], choices=RESERVATION_FIELDS, metavar="FIELD",
                   help=f"empty a field ({', '.join(RESERVATION_FIELDS)}); may be given more than once")
    p.set_defaults(handler=cmd_reservation_set, check=reservation_set_usage, prepare=load_reply_dictionary)
    p = reservation.add_parser("list", parents=[config_opts, json_opt], help="list reservations")
    p.add_argument("--subscriber", help=f"only this subscriber's: {SUBSCRIBER_HELP}")
    p.set_defaults(handler=cmd_reservation_list)
    p = reservation.add_parser("delete", parents=[config_opts], help="delete a reservation")
    p.add_argument("id", type=positive_int, help="the reservation's number (see reservation list)")
    p.set_defaults(handler=cmd_reservation_delete)

    lease = top.add_parser("lease", help="DHCP leases and DHCPv6 bindings").add_subparsers(dest="action",
                                                                                          required=True)
    p = lease.add_parser("list", parents=[config_opts, json_opt],
                         help="list leases, then DHCPv6 bindings (current ones by default: bound, and declined "
                              "addresses in quarantine)",
                         description="The DHCP leases, then the DHCPv6 bindings (kind na: an address, pd: a "
                                     "delegated prefix). With --json, one list: a binding has \"service\": "
                                     "\"dhcp6\" and its \"prefix\" instead of an \"address\".")
    p.add_argument("--subscriber", help=f"only this subscriber's: {SUBSCRIBER_HELP}")
    p.add_argument("--all", action="store_true",
                   help="also ended ones: released, expired, and declined ones out of quarantine")
    p.set_defaults(handler=cmd_lease_list)
    p = lease.add_parser("show", parents=[config_opts, json_opt],
                         help="an address's current lease and its history: who had it, and when; for an IPv6 "
                              "address or prefix, its DHCPv6 binding")
    p.add_argument("address", type=checked_arg(lease_key_text),
                   help="an IPv4 address, or an IPv6 address (an IA_NA) or prefix (an IA_PD)")
    p.add_argument("--limit", type=positive_int, default=50, help="history entries to show (default: 50)")
    p.set_defaults(handler=cmd_lease_show)

    p = top.add_parser(
        "usage", parents=[config_opts, export_opts],
        help="what subscribers used, from RADIUS accounting: per day for one, totals for all (billing)",
        description="Octets from and to the subscriber and time online, from RADIUS accounting, per UTC day "
                    "for one SUBSCRIBER, or one line per subscriber with the totals when none is named "
                    "(the CSV a billing run takes). The default span is the current month.")
    p.add_argument("subscriber", nargs="?", help="username or id (default: every subscriber)")
    p.add_argument("--month", type=month, help="e.g. 2026-11")
    p.add_argument("--from", dest="since", type=moment, metavar="TIME", help="start of a span")
    p.add_argument("--to", dest="until", type=moment, metavar="TIME",
                   help="end of a span (default: now); a midnight ends it with the day before")
    p.set_defaults(handler=cmd_usage, check=lambda a: "give --month, or --from and --to, not both"
                   if a.month is not None and (a.since is not None or a.until is not None) else span_usage(a))

    p = top.add_parser(
        "who", parents=[config_opts, export_opts],
        help="which subscriber held an address at a time (or over a span), with the evidence",
        description="Which subscriber held ADDRESS at a moment (--at) or at any time in a span (--from, --to), "
                    "from the DHCP lease history and the RADIUS sessions, with the stored rows that show it. "
                    "An IPv6 address or prefix is held by the RADIUS sessions whose framed prefix "
                    "(Framed-IPv6-Prefix, the subscriber's link) or delegated prefix (Delegated-IPv6-Prefix, "
                    "its router's networks) overlaps it: contains the address, or contains or lies inside the "
                    "prefix; or whose framed address (Framed-IPv6-Address) is it or lies inside it; and by the "
                    "DHCPv6 bindings whose address (IA_NA) or delegated prefix (IA_PD) does the same. "
                    "Times are ISO 8601 (without a zone: UTC), POSIX timestamps or 'now' (the default). "
                    "Exits 1 when nobody held it.")
    p.add_argument("address", type=checked_arg(attributable_text),
                   help="an IPv4 address, an IPv6 address or an IPv6 prefix (e.g. a /64 from an abuse report)")
    p.add_argument("--at", type=moment, metavar="TIME", help="one moment")
    p.add_argument("--from", dest="since", type=moment, metavar="TIME", help="start of a span (default: the oldest)")
    p.add_argument("--to", dest="until", type=moment, metavar="TIME", help="end of a span (default: now)")
    p.set_defaults(handler=cmd_who, check=lambda a: "give --at, or --from and --to, not both"
                   if a.at is not None and (a.since is not None or a.until is not None) else span_usage(a))

    dns = top.add_parser("dns", help="the DNS resolver").add_subparsers(dest="action", required=True)
    p = dns.add_parser("lookup", parents=[config_opts],
                       help="resolve a name from the root as ispd does, with the trace of each step")
    p.add_argument("name", type=checked_arg(name_text))
    p.add_argument("type", nargs="?", default="A", type=checked_arg(dns_type_text), help="record type (default: A)")
    p.set_defaults(handler=cmd_dns_lookup, without_store=True)
    cache = dns.add_parser("cache", help="the running daemon's DNS caches").add_subparsers(dest="cache_action",
                                                                                          required=True)
    p = cache.add_parser(
        "dump", parents=[config_opts],
        help="print what the running daemon's caches hold (RRsets, negative entries, answers)",
        description="Print the live entries of the running daemon's DNS caches: RRsets as zone-file lines with "
                    "their remaining TTL, negative entries and cached answers as ';' comments.")
    p.add_argument("name", nargs="?", type=checked_arg(name_text), help="only this name and the names below it")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead")
    p.set_defaults(handler=cmd_dns_cache_dump, without_store=True)
    p = cache.add_parser(
        "flush", parents=[config_opts], help="drop a name (or a zone, or everything) from the running daemon's caches",
        description="Drop what the running daemon's DNS caches hold for NAME: its RRsets, negative entries and "
                    "answers; the next query for it goes upstream again.")
    p.add_argument("name", nargs="?", type=checked_arg(name_text), help="the name to drop (or give --all)")
    p.add_argument("--zone", action="store_true", help="also every name below NAME")
    p.add_argument("--type", type=checked_arg(dns_type_text), help="only this record type (e.g. A, AAAA, MX)")
    p.add_argument("--all", action="store_true", help="empty the caches")
    p.set_defaults(handler=cmd_dns_cache_flush, without_store=True, check=check_flush_arguments)
    p = dns.add_parser(
        "anchors", parents=[config_opts, json_opt], help="the DNSSEC trust anchor keys tracked (RFC 5011)",
        description="The keys the resolver tracks for each trust anchor (RFC 5011): valid and missing keys are "
                    "trusted, a new key waits in addpend until its 30-day hold-down passes, revoked keys are "
                    "forgotten 30 days after. Empty until the daemon's first refresh.")
    p.add_argument("--zone", default=".", type=checked_arg(lambda text: domain_name(usable_text(text))),
                   help="the anchored zone (default: the root)")
    p.set_defaults(handler=cmd_dns_anchors)
    nta = dns.add_parser("nta", help="negative trust anchors: domains the running daemon resolves without "
                                     "DNSSEC validation").add_subparsers(dest="nta_action", required=True)
    p = nta.add_parser(
        "add", parents=[config_opts], help="stop validating a domain whose DNSSEC is broken, for a while",
        description="Resolve DOMAIN and the names below it without DNSSEC validation (RFC 7646) until the "
                    "anchor lapses; for a domain whose operator broke its signatures. Kept until the daemon "
                    "stops; permanent ones go in dns.dnssec.negative_trust_anchors.")
    p.add_argument("name", metavar="DOMAIN", type=checked_arg(name_text))
    p.add_argument("--for", dest="lifetime", type=checked_arg(duration_seconds), default="1d",
                   help="how long, e.g. 6h, 2d (default: 1d; at most 7d)")
    p.set_defaults(handler=cmd_dns_nta_add, without_store=True)
    p = nta.add_parser("delete", parents=[config_opts], help="validate a domain again")
    p.add_argument("name", metavar="DOMAIN", type=checked_arg(name_text))
    p.set_defaults(handler=cmd_dns_nta_delete, without_store=True)
    p = nta.add_parser("list", parents=[config_opts, json_opt], help="the negative trust anchors in force")
    p.set_defaults(handler=cmd_dns_nta_list, without_store=True)

    session = top.add_parser("session", help="RADIUS sessions").add_subparsers(dest="action", required=True)
    p = session.add_parser("list", parents=[config_opts, json_opt], help="list RADIUS sessions, newest first")
    p.add_argument("--open", action="store_true", help="only sessions still open")
    p.add_argument("--subscriber", help=f"only this subscriber's: {SUBSCRIBER_HELP}")
    p.add_argument("--nas", type=checked_arg(ip_text), help="only this NAS's (its address)")
    p.add_argument("--limit", type=positive_int, default=100, help="at most this many (default: 100)")
    p.set_defaults(handler=cmd_session_list)
    p = session.add_parser("show", parents=[config_opts, json_opt], help="one session, with its CoA history")
    p.add_argument("id", type=positive_int, help="the session's number (see session list)")
    p.set_defaults(handler=cmd_session_show)
    p = session.add_parser("disconnect", parents=[config_opts],
                           help="end a session: the running daemon sends its NAS a Disconnect-Request")
    p.add_argument("id", type=positive_int, help="the session's number (see session list)")
    p.add_argument("--reason", type=name_text, help="why (kept with the outcome)")
    p.set_defaults(handler=cmd_session_disconnect, without_store=True)
    p = session.add_parser("close", parents=[config_opts],
                           help="mark sessions closed without asking their NAS (it is gone): frees the "
                                "subscriber's Simultaneous-Use slot and pool address now",
                           description="Close sessions in the store as they are, without a Disconnect-Request, "
                                       "through the running daemon: for a NAS that died without Accounting-On, "
                                       "or a session its NAS no longer has (as FreeRADIUS's radzap). If the NAS "
                                       "still has one, its next interim reopens it.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("id", type=positive_int, nargs="?", help="the session's number (see session list)")
    which.add_argument("--nas", type=checked_arg(ip_text), help="every open session of this NAS (its address)")
    p.set_defaults(handler=cmd_session_close, without_store=True)
    p = session.add_parser("coa", parents=[config_opts],
                           help="send a session the subscriber's current profile (CoA-Request)")
    p.add_argument("id", type=positive_int, help="the session's number (see session list)")
    p.set_defaults(handler=cmd_session_coa, without_store=True)
    mailbox = top.add_parser("mailbox", help="subscribers' mailboxes").add_subparsers(dest="action", required=True)
    p = mailbox.add_parser("add", parents=[config_opts, json_opt], help="give a subscriber a mailbox",
                           description="Give a subscriber a mailbox at one of [mail] domains. Its Maildir is "
                                       "made by the daemon at the first delivery.")
    p.add_argument("subscriber", help=SUBSCRIBER_HELP)
    p.add_argument("address", type=checked_arg(mail_address), help="e.g. alice@isp.example")
    p.add_argument("--quota", type=parse_size, metavar="SIZE", help="e.g. 2G (default: the plan's mail quota)")
    p.set_defaults(handler=cmd_mailbox_add, prepare=remember_mail_config)
    p = mailbox.add_parser("list", parents=[config_opts, json_opt], help="list mailboxes")
    p.add_argument("--subscriber", help=f"only this subscriber's: {SUBSCRIBER_HELP}")
    p.set_defaults(handler=cmd_mailbox_list)
    p = mailbox.add_parser("delete", parents=[config_opts],
                           help="delete a mailbox (mail to it is refused; its Maildir is renamed aside, kept "
                                "until you remove it)")
    p.add_argument("address", type=checked_arg(mail_address))
    p.set_defaults(handler=cmd_mailbox_delete, prepare=remember_mail_config)
    p = mailbox.add_parser("quota", parents=[config_opts, json_opt],
                           help="a mailbox's usage and limit; --set changes the limit")
    p.add_argument("address", type=checked_arg(mail_address))
    p.add_argument("--set", dest="set_quota", type=quota_arg, metavar="SIZE", default=_QUOTA_UNCHANGED,
                   help="the mailbox's own limit, e.g. 5G; 'plan' goes back to the plan's")
    p.set_defaults(handler=cmd_mailbox_quota, prepare=remember_mail_config)
    p = mailbox.add_parser("show", parents=[config_opts, json_opt],
                           help="a mailbox's folders as IMAP will see them (the running daemon reads its index)")
    p.add_argument("address", type=checked_arg(mail_address))
    p.set_defaults(handler=cmd_mailbox_show, without_store=True)
    alias = mailbox.add_parser("alias", help="addresses that lead to mailboxes, or elsewhere (forwarding)") \
        .add_subparsers(dest="alias_action", required=True)
    p = alias.add_parser("add", parents=[config_opts, json_opt], help="add an alias owned by a subscriber",
                         description="Mail to ADDRESS (at one of [mail] domains, no mailbox's) goes to each "
                                     "TARGET: a mailbox here, or an address elsewhere (forwarded with its "
                                     "sender kept, as Postfix's virtual aliases). The alias goes with its "
                                     "subscriber.")
    p.add_argument("subscriber", help=SUBSCRIBER_HELP)
    p.add_argument("address", type=checked_arg(mail_address), help="e.g. info@business.example")
    p.add_argument("targets", nargs="+", metavar="TARGET", help="a mailbox here, or an address elsewhere")
    p.set_defaults(handler=cmd_alias_add, prepare=remember_mail_config)
    p = alias.add_parser("list", parents=[config_opts, json_opt], help="list aliases")
    p.add_argument("--subscriber", help=f"only this subscriber's: {SUBSCRIBER_HELP}")
    p.set_defaults(handler=cmd_alias_list)
    p = alias.add_parser("delete", parents=[config_opts], help="delete an alias (mail to it is refused)")
    p.add_argument("address", type=checked_arg(mail_address))
    p.set_defaults(handler=cmd_alias_delete)

    store = top.add_parser("store", help="the store itself").add_subparsers(dest="action", required=True)
    p = store.add_parser("migrate", parents=[config_opts],
                         help="apply the pending schema migrations and exit (with the daemon stopped)",
                         description="Apply the pending schema migrations and exit. The daemon does this as it "
                                     "starts, too; on a large store they can take minutes, which this runs ahead "
                                     "of the restart, in the foreground. Refused while a daemon runs on the store.")
    p.set_defaults(handler=cmd_store_migrate, without_store=True)
    p = store.add_parser(
        "backup", parents=[config_opts], help="a consistent copy of the store, made while the daemon runs",
        description="Copy the store into a new file while the daemon goes on: one snapshot of every committed "
                    "change (a plain cp of the database misses what is still in its -wal file), checked, one "
                    "self-contained file of mode 0600 (it holds password verifiers). Never overwrites a file; "
                    "never migrates (a backup before an upgrade keeps the old schema).")
    p.add_argument("destination", type=Path, help="the new file, e.g. /var/backups/ispd-$(date +%%F).db")
    p.set_defaults(handler=cmd_store_backup, without_store=True)
    p = store.add_parser(
        "restore", parents=[config_opts], help="put a backup in place of the store (with the daemon stopped)",
        description="Replace the store with a copy of a backup made by `ispd store backup`. Refused while a "
                    "daemon runs on the store. The store it replaces is set aside, with its -wal and -shm, as "
                    "<store>.replaced-<time> (a stale -wal beside the restored file would corrupt it). A backup "
                    "of an older schema is migrated by the next start.")
    p.add_argument("backup", type=Path, help="the backup file")
    p.set_defaults(handler=cmd_store_restore, without_store=True)
    p = store.add_parser(
        "copy-to-postgresql", parents=[config_opts],
        help="copy the SQLite store into an empty PostgreSQL database (with the daemon stopped)",
        description="Copy every row of the SQLite store into an empty PostgreSQL database, in one transaction "
                    "(nothing is kept unless all of it is), then point [store] at it: backend = \"postgresql\" "
                    "and url. The SQLite store is only read. Refused while a daemon runs on the store.")
    p.add_argument("url", help="the database, e.g. postgresql://ispd@db.example.net/ispd")
    p.set_defaults(handler=cmd_store_copy_to_postgresql, without_store=True)

    mail = top.add_parser("mail", help="the mail service").add_subparsers(dest="action", required=True)
    queue = mail.add_parser("queue", help="the outbound queue").add_subparsers(dest="queue_action", required=True)
    p = queue.add_parser("list", parents=[config_opts, json_opt], help="messages waiting to go to other domains")
    p.set_defaults(handler=cmd_mail_queue_list)
    p = queue.add_parser("flush", parents=[config_opts],
                         help="try now: the running daemon attempts every queued message (or one) at once")
    p.add_argument("queue_id", nargs="?", type=checked_arg(queue_id_text), help="only this message")
    p.set_defaults(handler=cmd_mail_queue_flush, without_store=True)
    p = queue.add_parser("delete", parents=[config_opts],
                         help="drop a queued message without a bounce (e.g. spam from a hijacked account)")
    p.add_argument("queue_id", type=checked_arg(queue_id_text))
    p.set_defaults(handler=cmd_mail_queue_delete, prepare=remember_mail_config)
    return parser


def _sqlite_only(config: Config, command: str) -> None:
    if config.store.backend == "postgresql":
        raise CommandFailed(f"ispd store {command} copies a SQLite store; this one is on PostgreSQL: use its own tools "
                            f"(pg_dump and pg_restore, or the server's base backups and WAL archive)")


async def cmd_store_backup(config: Config, args: argparse.Namespace) -> None:
    from ispd.store.sqlite_backup import BackupStopped, backup

    _sqlite_only(config, "backup")
    # Ctrl-C or a TERM (`timeout`, a unit stopped): the copy stops and is removed. Without this its
    # thread copied on behind a KeyboardInterrupt and gave the file its name after the exit code
    # 130, or a TERM left a hidden copy as large as the store, password verifiers and all.
    try:
        with _stop_asked_by_signals() as stop:
            copied = await asyncio.to_thread(backup, config.store.path, args.destination,
                                             config.store.busy_timeout_seconds, stop)
    except BackupStopped:
        raise CommandFailed(f"stopped: no backup was made ({args.destination} was not written)") from None
    _say_removed(copied.removed, "backup")
    print(f"backed up {config.store.path} (schema {copied.schema_version}) to {copied.path}: "
          f"{_megabytes(copied.bytes)} in {copied.seconds:.1f} s")


def _say_removed(removed: tuple[Path, ...], what: str) -> None:
    for path in removed:
        print(f"removed {path}, left by an interrupted {what}")


async def cmd_store_restore(config: Config, args: argparse.Namespace) -> None:
    from ispd.store.sqlite import sqlite_migrations
    from ispd.store.sqlite_backup import RestoreStopped, restore

    _sqlite_only(config, "restore")
    lock = daemon_lock(config, "stop it first (systemctl stop ispd), then restore")
    # Ctrl-C or a TERM: the restore stops if it has not begun to replace the store, and finishes
    # if it has. Without this its thread restored on behind a KeyboardInterrupt, the daemon's
    # lock already released: a daemon started meanwhile would open the store being replaced.
    try:
        with _stop_asked_by_signals() as stop:
            print(f"restoring {args.backup} into {config.store.path}", flush=True)
            copied, aside = await asyncio.to_thread(restore, args.backup, config.store.path,
                                                    sqlite_migrations()[-1].version,
                                                    config.store.busy_timeout_seconds, stop)
    except RestoreStopped:
        raise CommandFailed(f"stopped: {config.store.path} was left as it was") from None
    finally:
        lock.release()
    _say_removed(copied.removed, "restore")
    print(f"restored {args.backup} (schema {copied.schema_version}, {_megabytes(copied.bytes)}) into {copied.path}"
          + (f"; the store it replaced is {aside}" if aside is not None else ""))


async def cmd_store_copy_to_postgresql(config: Config, args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from ispd.store.config import StoreConfig
    from ispd.store.postgresql import describe
    from ispd.store.postgresql_copy import CopyStopped, copy_to_postgresql

    _sqlite_only(config, "copy-to-postgresql")
    try:
        target = StoreConfig(backend="postgresql", url=args.url, path=config.store.path,
                             busy_timeout_seconds=config.store.busy_timeout_seconds)
    except ValidationError as exc:
        # (not the url itself: it may hold a password)
        raise CommandFailed(f"the {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    lock = daemon_lock(config, "stop it first (systemctl stop ispd), then copy")

    def copied_table(table: str, rows: int) -> None:
        print(f"  {table}: {rows:,} rows", flush=True)

    # Ctrl-C or a TERM: the copy stops and rolls back. Without this the thread copied on to its
    # commit behind a KeyboardInterrupt (exit 130, the database full) with the lock already released.
    try:
        with _stop_asked_by_signals() as stop:
            print(f"copying the store {config.store.path} into {describe(target)}", flush=True)
            copied = await asyncio.to_thread(copy_to_postgresql, config.store.path, target, copied_table, stop)
    except CopyStopped:
        raise CommandFailed(f"stopped: nothing was copied, {describe(target)} is left empty") from None
    finally:
        lock.release()
    print(f"copied {sum(copied.rows.values()):,} rows of {len(copied.rows)} tables (schema {copied.schema_version}) "
          f"in {copied.seconds:.1f} s; to use it, set in [store] backend = \"postgresql\" and url to this "
          f"database's (the SQLite store stays as it was)")


@contextlib.contextmanager
def _stop_asked_by_signals() -> Iterator[threading.Event]:
    """An event that Ctrl-C or a TERM sets, for work in another thread to stop at a safe point
    (rather than a KeyboardInterrupt that leaves the thread running on, unheld)."""
    stop = threading.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        yield stop
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _store_name(config: Config) -> str:
    if config.store.backend == "postgresql":
        from ispd.store.postgresql import describe

        return describe(config.store)
    return f"the store {config.store.path}"


def daemon_lock(config: Config, hint: str) -> DaemonLock | PostgresDaemonLock:
    """The daemon's own lock, taken: no daemon starts (or runs) on the store meanwhile."""
    from ispd.daemonlock import DaemonLockError, daemon_lock_for

    lock = daemon_lock_for(config.store)
    try:
        lock.acquire()
    except DaemonLockError as exc:
        if not exc.in_use:
            raise CommandFailed(str(exc)) from None
        who = f"pid {exc.held_by}" if exc.held_by else "pid unknown"
        raise CommandFailed(f"an ispd daemon ({who}) is running on {_store_name(config)}: {hint}") from None
    # An ispd from before the lock (b862454) runs without taking it: during an upgrade that is
    # the daemon still running the old release, the very one a migration must not happen under
    # (it would go on writing rows the new schema's triggers and indexes never see). It does
    # answer on its control socket. (Only for SQLite: on PostgreSQL the daemons of other nodes
    # are out of sight anyway, and a standby here holds no lock by design.)
    control = config.daemon.control_socket
    if config.store.backend == "sqlite" and control is not None and _answers(control):
        lock.release()
        raise CommandFailed(f"an ispd daemon is running: it answers on the control socket {control} (an ispd "
                            f"older than the store's lock file, which it does not take): {hint}")
    return lock


def _answers(path: Path) -> bool:
    """Whether something accepts connections on the unix socket ``path`` (a stale one, left by a
    daemon that died, refuses them)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(str(path))
        except (OSError, TimeoutError):
            return False
    return True


async def cmd_store_migrate(config: Config, args: argparse.Namespace) -> None:
    from ispd.store.sqlite import MigrationStopped, sqlite_migrations

    # Not beside a daemon (perhaps an older one that would not know the new schema).
    lock = daemon_lock(config, "stop it first (or let it be: a daemon applies the migrations itself as it starts)")
    where = config.store.path if config.store.backend == "sqlite" else _store_name(config)
    # As the other admin commands: run with the wrong config or store.path (the upgrade's step),
    # it would otherwise make an empty store and report every migration applied, as if upgraded.
    new = config.store.backend == "sqlite" and not config.store.path.exists()
    applied: list[int] = []
    began = time.monotonic()
    try:
        # Ctrl-C or a TERM: the step under way finishes (cut, it would only be rolled back), no
        # other begins, as in the daemon.
        with _stop_asked_by_signals() as stop:
            def starting(step: Migration, target: int) -> None:  # in the store's thread
                if stop.is_set():
                    raise MigrationStopped(step)
                applied.append(step.version)
                print(f"{where}: migrating to schema {target}: {step.version} {step.name} ...", flush=True)

            store = await open_store(config.store, migration_starting=starting)
            await store.close()
    except MigrationStopped as stopped:
        raise CommandFailed(f"{where}: stopped before migration {stopped.step.version} "
                            f"{stopped.step.name}; run it again to go on") from None
    finally:
        lock.release()
    if new:
        print(f"ispd: note: {config.store.path} did not exist: this is a new, empty store", file=sys.stderr)
    newest = sqlite_migrations()[-1].version
    if applied:
        print(f"{where}: at schema {newest} (applied {', '.join(map(str, applied))} "
              f"in {time.monotonic() - began:.1f} s)")
    else:
        print(f"{where}: at schema {newest}, nothing to do")


async def cmd_mailbox_show(config: Config, args: argparse.Namespace) -> None:
    result = await daemon_request(config, args, "mail.mailbox.show", {"address": args.address})
    if args.json:
        print_json(result)
        return
    print(f"{result['address']} ({result['path']})")
    print_table(["FOLDER", "MESSAGES", "UNSEEN", "BYTES", "UIDVALIDITY", "UIDNEXT"],
                [[f["name"], f["messages"], f["unseen"], f["bytes"], f["uidvalidity"], f["uidnext"]]
                 for f in result["folders"]])


def queue_id_text(text: str) -> str:
    value = text.strip().upper()
    if not (value.isascii() and value.isalnum() and 0 < len(value) <= 64):
        raise ValueError(f"{text!r} is not a queue id (see mail queue list)")
    return value


async def cmd_mail_queue_list(store: Store, args: argparse.Namespace) -> None:
    queued = await store.list_mail_queue()
    if args.json:
        print_json([{**_jsonable(m), "pending": m.pending} for m in queued])
        return
    print_table(["ID", "QUEUED", "SIZE", "SENDER", "PENDING", "ATTEMPTS", "NEXT", "LAST ERROR"],
                [[m.id, when(m.created_at), m.size, m.sender or "<>", ", ".join(m.pending), m.attempts,
                  when(m.next_attempt_at), (m.last_error or "")[:80]] for m in queued])


async def cmd_mail_queue_flush(config: Config, args: argparse.Namespace) -> None:
    result = await daemon_request(config, args, "mail.queue.flush", {"queue_id": args.queue_id})
    print(f"{result['rescheduled']} queued message(s) will be tried now")


async def cmd_mail_queue_delete(store: Store, args: argparse.Namespace) -> None:
    deleted = await store.delete_queued_mail(args.queue_id, actor=actor())
    Spool(args.mail.queue_directory).remove(deleted.id)
    print(f"deleted {deleted.id} from {deleted.sender or '<>'} to {', '.join(deleted.pending) or 'nobody'}"
          " (no bounce was sent)")


_QUOTA_UNCHANGED = object()


def quota_arg(text: str) -> int | None:
    return None if text.strip().lower() == "plan" else parse_size(text)


def remember_mail_config(config: Config, args: argparse.Namespace) -> None:
    args.mail = config.mail


def _at_a_mail_domain(args: argparse.Namespace) -> None:
    domain = args.address.rpartition("@")[2]
    if domain not in args.mail.domains:
        known = ", ".join(args.mail.domains) or "none yet"
        raise CommandFailed(f"{domain} is not one of the mail domains in {args.config} ([mail] domains: {known})")


async def cmd_mailbox_add(store: Store, args: argparse.Namespace) -> None:
    _at_a_mail_domain(args)
    left_over = Maildir.for_address(args.mail.maildir_root, args.address).left_over()
    if left_over is not None:
        raise CommandFailed(left_over)
    mailbox = await store.add_mailbox(args.subscriber, args.address, actor=actor(), quota_bytes=args.quota)
    username = await username_of(store, mailbox.subscriber_id)
    if args.json:
        print_json({**_jsonable(mailbox), "username": username})
        return
    quota = f", quota {mailbox.quota_bytes} bytes" if mailbox.quota_bytes is not None else ""
    print(f"added mailbox {mailbox.address} for {username or '#' + str(mailbox.subscriber_id)}{quota}")
    # An alias that named the address when an earlier mailbox of it was deleted reaches this one
    # now, whoever owns it: said here, as `mailbox delete` said it had lost it.
    for alias in await store.list_mail_aliases():
        if mailbox.address in alias.targets:
            owner = await username_of(store, alias.subscriber_id) or f"#{alias.subscriber_id}"
            print(f"alias {alias.address} (of {owner}) names {mailbox.address}: its mail reaches this mailbox "
                  f"from now (`ispd mailbox alias delete {alias.address}`, then add it again, if it should not)")


async def cmd_mailbox_list(store: Store, args: argparse.Namespace) -> None:
    mailboxes = await store.list_mailboxes(subscriber=args.subscriber)
    names = {s.id: s.username for s in await store.list_subscribers()}
    if args.json:
        print_json([{**_jsonable(m), "username": names.get(m.subscriber_id)} for m in mailboxes])
        return
    print_table(["ADDRESS", "SUBSCRIBER", "QUOTA", "CREATED"],
                [[m.address, names.get(m.subscriber_id), m.quota_bytes if m.quota_bytes is not None else "plan",
                  when(m.created_at)] for m in mailboxes])


async def cmd_alias_add(store: Store, args: argparse.Namespace) -> None:
    _at_a_mail_domain(args)
    alias = await store.add_mail_alias(args.subscriber, args.address, args.targets,
                                       local_domains=args.mail.domains, actor=actor())
    if args.json:
        print_json({**_jsonable(alias), "username": await username_of(store, alias.subscriber_id)})
        return
    elsewhere = [t for t in alias.targets if t.rpartition("@")[2] not in args.mail.domains]
    print(f"added alias {alias.address} -> {', '.join(alias.targets)}"
          + (f" (forwarded elsewhere: {', '.join(elsewhere)})" if elsewhere else ""))


async def cmd_alias_list(store: Store, args: argparse.Namespace) -> None:
    aliases = await store.list_mail_aliases(subscriber=args.subscriber)
    names = {s.id: s.username for s in await store.list_subscribers()}
    if args.json:
        print_json([{**_jsonable(a), "username": names.get(a.subscriber_id)} for a in aliases])
        return
    print_table(["ADDRESS", "SUBSCRIBER", "TARGETS", "CREATED"],
                [[a.address, names.get(a.subscriber_id), ", ".join(a.targets), when(a.created_at)] for a in aliases])


async def cmd_alias_delete(store: Store, args: argparse.Namespace) -> None:
    alias = await store.delete_mail_alias(args.address, actor=actor())
    print(f"deleted alias {alias.address}")


async def cmd_mailbox_delete(store: Store, args: argparse.Namespace) -> None:
    mailbox = await store.delete_mailbox(args.address, actor=actor())
    archive = Maildir.for_address(args.mail.maildir_root, mailbox.address).set_aside()
    if archive is None:
        print(f"deleted mailbox {mailbox.address} (it had no mail on disk)")
    else:
        print(f"deleted mailbox {mailbox.address}; its mail is kept in {archive} until you remove it")
    await print_aliases_naming(store, {mailbox.address})


async def print_aliases_naming(store: Store, deleted: set[str]) -> None:
    """The aliases whose targets include mailboxes just deleted, and what their mail does now
    (the admin API answers the same from ``Store.aliases_still_naming``)."""
    for alias in await store.aliases_still_naming(deleted):
        others = alias.remaining_targets
        print(f"alias {alias.address} still names {', '.join(alias.gone_targets)}: its mail now "
              + (f"reaches {', '.join(others)} only" if others else "is refused (no other target)")
              + f" (`ispd mailbox alias delete {alias.address}`, then add it again as it should be)")


async def cmd_mailbox_quota(store: Store, args: argparse.Namespace) -> None:
    if args.set_quota is not _QUOTA_UNCHANGED:
        await store.set_mailbox_quota(args.address, args.set_quota, actor=actor())
    recipient = await store.mail_recipient(args.address)
    if recipient is None:
        raise CommandFailed(f"no mailbox {args.address}")
    maildir = Maildir.for_address(args.mail.maildir_root, recipient.mailbox.address)
    usage = await asyncio.get_running_loop().run_in_executor(None, maildir.usage)
    source = "mailbox" if recipient.mailbox.quota_bytes is not None else (
        "plan" if recipient.quota_bytes is not None else None)
    if args.json:
        print_json({"address": recipient.mailbox.address, "used_bytes": usage.bytes, "messages": usage.messages,
                    "quota_bytes": recipient.quota_bytes, "quota_from": source})
        return
    if recipient.quota_bytes is None:
        limit = "no limit"
    else:
        share = 100 * usage.bytes / recipient.quota_bytes if recipient.quota_bytes else 100.0
        limit = f"of {recipient.quota_bytes} ({share:.1f}%, the {source}'s limit)"
    print(f"{recipient.mailbox.address}: {usage.bytes} bytes in {usage.messages} "
          f"message{'' if usage.messages == 1 else 's'}, {limit}")


def ip_text(text: str) -> str:
    from ipaddress import ip_address

    try:
        return str(ip_address(text.strip()))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


SESSION_HEADERS = ["ID", "USERNAME", "NAS", "SESSION_ID", "IP", "STARTED", "STOPPED", "CAUSE", "IN_BYTES",
                   "OUT_BYTES", "SECONDS"]


def session_row(x: RadiusSession) -> list[Any]:
    return [x.id, x.username, x.nas_address, x.acct_session_id, x.framed_ip, when(x.started_at),
            when(x.stopped_at) if x.stopped_at is not None else "open", x.terminate_cause, x.input_octets,
            x.output_octets, x.session_time_seconds]


async def cmd_session_list(store: Store, args: argparse.Namespace) -> None:
    sessions = await store.list_sessions(open_only=args.open, subscriber=args.subscriber, nas_address=args.nas,
                                         limit=args.limit)
    if args.json:
        print_json(sessions)
        return
    print_table(SESSION_HEADERS, [session_row(x) for x in sessions])


async def cmd_session_show(store: Store, args: argparse.Namespace) -> None:
    session = await store.get_session(args.id)
    coa = await store.list_coa(session_id=session.id)
    if args.json:
        print_json({**_jsonable(session), "coa": _jsonable(coa)})
        return
    for f in dataclasses.fields(session):
        value = getattr(session, f.name)
        if f.name == "nas_ip_address" and value is None:
            value = session.nas_address  # (kept only when the NAS says it is another; "-" read as none)
        shown = when(value) if f.name.endswith("_at") and value is not None else value
        print(f"{f.name.replace('_', ' '):<24}{'-' if shown is None else showable(str(shown))}")
    for record in coa:
        print(f"{record.kind:<24}{when(record.at)} {record.result}"
              f"{' error-cause ' + str(record.error_cause) if record.error_cause else ''}"
              f" after {record.attempts} attempt(s){' (' + showable(record.reason) + ')' if record.reason else ''}")


def _describe_coa(result: dict[str, Any]) -> str:
    text = f"{result['kind']} of session #{result['session_id']}: {result['result']}"
    if result.get("error_cause"):
        text += f" (Error-Cause {result['error_cause']})"
    if result.get("detail") and result["result"] in ("timeout", "error"):
        text += f" ({result['detail']})"
    return text


async def cmd_session_disconnect(config: Config, args: argparse.Namespace) -> None:
    result = await daemon_request(config, args, "radius.session.disconnect",
                                  {"session_id": args.id, "reason": args.reason})
    print(_describe_coa(result))
    if result["result"] != "ack":
        raise CommandFailed("the NAS did not confirm the disconnect")


CLOSED_SHOWN = 20  # sessions ``session close --nas`` names; the rest it counts


async def cmd_session_close(config: Config, args: argparse.Namespace) -> None:
    request = {"nas": args.nas, "actor": actor()} if args.nas is not None else {"session_id": args.id, "actor": actor()}
    result = await daemon_request(config, args, "radius.session.close", request)
    closed = result["closed"]
    if closed:
        # (A BNG's 10,000 sessions made one line of 70 kB: the first few name what was closed.)
        shown = ", ".join(f"#{n}" for n in closed[:CLOSED_SHOWN])
        more = f" and {len(closed) - CLOSED_SHOWN} more" if len(closed) > CLOSED_SHOWN else ""
        print(f"closed {len(closed)} session(s): {shown}{more}")
    elif args.nas is None:
        # The daemon found it open, then the store had it closed already: another `session
        # close`, its NAS's Accounting-Stop or the stale sweep came first. Not closed by this
        # command, as when it asks about a session that is not open.
        raise CommandFailed(f"session #{args.id} is not open (it was closed meanwhile)")
    else:
        print(f"no open session of NAS {args.nas}")


async def cmd_session_coa(config: Config, args: argparse.Namespace) -> None:
    result = await daemon_request(config, args, "radius.session.coa", {"session_id": args.id})
    print(_describe_coa(result))
    if result["result"] != "ack":
        raise CommandFailed("the NAS did not confirm the change")


def dns_type_text(text: str) -> str:
    from ispd.dns.lookup import parse_type

    parse_type(text)
    return text.upper()


async def cmd_dns_lookup(config: Config, args: argparse.Namespace) -> None:
    from ispd.dns.cache import Security
    from ispd.dns.hints import HintsError
    from ispd.dns.lookup import lookup, parse_type
    from ispd.dns.wire import RCode

    try:
        qtype = parse_type(args.type)
        resolution = await lookup(config.dns, args.name, qtype, print)
    except (ValueError, HintsError) as exc:
        raise CommandFailed(str(exc)) from None
    if resolution.rcode == RCode.SERVFAIL or resolution.security == Security.BOGUS:  # the exit status says so too
        raise CommandFailed(f"{args.name}: resolution failed ({resolution.failure})")


async def daemon_request(config: Config, args: argparse.Namespace, command: str, request: dict[str, Any],
                         on_line: Callable[[str], None] | None = None) -> Any:
    """One command to the running daemon over its control socket; failures as ``CommandFailed``."""
    from ispd.control import ControlError, control_request

    path = config.daemon.control_socket
    if path is None:
        raise CommandFailed(f"the control socket is disabled (daemon.control_socket = \"\" in {args.config})")
    try:
        return await control_request(path, command, request, on_line=on_line)
    except ControlError as exc:
        if exc.code == "unknown_command" and command.startswith("dns."):
            raise CommandFailed(f"the daemon at {path} does not run the DNS resolver (is [dns] enabled?)") from None
        if exc.code == "unknown_command" and command.startswith("radius."):
            raise CommandFailed(f"the daemon at {path} does not run RADIUS (is [radius] enabled?)") from None
        if exc.code == "unknown_command" and command.startswith("mail."):
            raise CommandFailed(f"the daemon at {path} does not run mail (is [mail] enabled?)") from None
        raise CommandFailed(str(exc)) from None


async def cmd_dns_cache_dump(config: Config, args: argparse.Namespace) -> None:
    request = {"name": args.name, "json": args.json}
    await daemon_request(config, args, "dns.cache.dump", request, on_line=print)


def check_flush_arguments(args: argparse.Namespace) -> str | None:
    if args.all and args.name is not None:
        return "give a NAME to flush or --all, not both"
    if not args.all and args.name is None:
        return "give a NAME to flush, or --all to empty the caches"
    if args.all and (args.zone or args.type):
        return "--all flushes everything; it takes no --zone or --type"
    return None


async def cmd_dns_cache_flush(config: Config, args: argparse.Namespace) -> None:
    request = {"all": True} if args.all else {"name": args.name, "zone": args.zone, "type": args.type}
    dropped = await daemon_request(config, args, "dns.cache.flush", request)
    what = "the caches" if args.all else f"{args.name}{' and below' if args.zone else ''}" + \
        (f" {args.type}" if args.type else "")
    print(f"flushed {what}: {dropped['rrsets']} RRsets and negative entries, {dropped['answers']} answers")


async def cmd_dns_anchors(store: Store, args: argparse.Namespace) -> None:
    from ispd.dns.dnssec import key_tag, parse_dnskey
    from ispd.dns.hints import HintsError, load_trust_anchors
    from ispd.dns.wire import name_to_text

    zone = args.zone
    keys = await store.trust_anchor_keys(zone)
    dnssec = args.loaded_config.dns.dnssec
    if not keys:
        try:
            anchored = sorted(name_to_text(a.zone).lower() for a in load_trust_anchors(dnssec.trust_anchor_file))
        except HintsError:
            anchored = None  # (check-config names the problem; the question stays answered)
        if anchored is not None and zone not in anchored:
            # A zone with no anchor was "waiting for the daemon's refresh" that never comes.
            raise CommandFailed(f"{zone} has no trust anchor (anchored: {', '.join(anchored)})")
    if args.json:
        print_json([{"zone": k.zone, "key_tag": key_tag(k.key), "algorithm": parse_dnskey(k.key).algorithm,
                     "state": k.state, "since": k.since, "hold_down_until": k.hold_down_until or None} for k in keys])
        return
    if not keys:
        why = ("the daemon tracks them once it has refreshed the anchor" if dnssec.validation
               and dnssec.auto_update_anchors else "dns.dnssec.auto_update_anchors is off" if dnssec.validation
               else "dns.dnssec.validation is off")
        print(f"no keys tracked for {zone} ({why})")
    for k in keys:
        hold = f"\tuntil {when(k.hold_down_until)}" if k.hold_down_until else ""
        print(f"{k.zone}\tkey {key_tag(k.key)}\talgorithm {parse_dnskey(k.key).algorithm}\t{k.state}"
              f"\tsince {when(k.since)}{hold}")


def duration_seconds(text: str) -> int:
    """``90``, ``90s``, ``30m``, ``6h``, ``2d`` as seconds, between 1 s and 7 days."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    if not (number.isascii() and number.isdigit()) or not 0 < int(number) * units[unit] <= 7 * 86400:
        raise ValueError(f"{text!r} is not a duration between 1s and 7d (e.g. 90s, 30m, 6h, 2d)")
    return int(number) * units[unit]


async def cmd_dns_nta_add(config: Config, args: argparse.Namespace) -> None:
    added = await daemon_request(config, args, "dns.nta.add", {"name": args.name, "seconds": args.lifetime})
    print(f"{added['name']} is resolved without DNSSEC validation for {_duration_text(added['seconds'])}")


async def cmd_dns_nta_delete(config: Config, args: argparse.Namespace) -> None:
    deleted = await daemon_request(config, args, "dns.nta.delete", {"name": args.name})
    print(f"{deleted['name']} is validated again")


async def cmd_dns_nta_list(config: Config, args: argparse.Namespace) -> None:
    anchors = await daemon_request(config, args, "dns.nta.list", {})
    if args.json:
        print_json(anchors)
        return
    if not anchors:
        print("no negative trust anchors")
    for anchor in anchors:
        left = "from the config file" if anchor["seconds_left"] is None else \
            f"{_duration_text(anchor['seconds_left'])} left"
        print(f"{anchor['name']}\t{left}")


def _duration_text(seconds: int) -> str:
    """``2h``, ``59m59s``, ``1d2h``: the two largest units."""
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts[:2])


async def run_admin(config: Config, handler: Callable[[Store, argparse.Namespace], Awaitable[None]],
                    args: argparse.Namespace) -> None:
    new = config.store.backend == "sqlite" and not config.store.path.exists()
    locks: list[DaemonLock | PostgresDaemonLock] = []

    def migrating(step: Migration, target: int) -> None:  # (in the store's thread, before each step)
        # As `ispd store migrate`, never beside a daemon: one on a store of an older schema is an
        # older ispd (a current one migrates as it starts; a standby never does), which would run
        # on a schema it does not know, and wait for SQLite's write lock while a step holds it.
        # (A store file made just now has no daemon.)
        if not locks and not new:
            locks.append(daemon_lock(config, f"this ispd would migrate the store to schema {target}: stop the "
                                             "daemon and run `ispd store migrate`, or restart it with this ispd "
                                             "(it migrates the store as it starts)"))

    try:
        store = await open_store(config.store, migration_starting=migrating)
    finally:
        for lock in locks:
            lock.release()
    if new:  # right for a first install; after a mistyped or moved store.path, the hint to look
        print(f"ispd: note: {config.store.path} did not exist: this is a new, empty store", file=sys.stderr)
    args.loaded_config = config  # for the commands that also read the config (subscriber show)
    try:
        await handler(store, args)
    finally:
        await store.close()


def check_config_files(path: Path, config: Config) -> int:
    """``ispd check-config`` past the file itself: every problem in the files the enabled
    services name (zones, hints, certificates, keys), all of them, then the exit status."""
    found: list[tuple[str, str]] = []  # (section, problem)
    for warning in config.warnings():
        print(f"ispd: {path}: {warning.section}: warning: {warning.detail}", file=sys.stderr)
    from ispd.certificates import certificate_problems

    for key, _, problem in certificate_problems(config.certificates(), time.time()):
        print(f"ispd: {path}: {key}: warning: {problem}", file=sys.stderr)
    if config.dns.enabled:
        from ispd.dns.service import check_files

        problems, file_warnings = check_files(config.dns)
        for detail in file_warnings:
            print(f"ispd: {path}: dns: warning: {detail}", file=sys.stderr)
        found += [("dns", problem) for problem in problems]
    if config.radius.enabled:
        from ispd.radius.service import check_files as check_radius_files

        found += [("radius", problem) for problem in check_radius_files(config.radius)]
    if config.mail.enabled:
        from ispd.mail.service import check_files as check_mail_files

        found += [("mail", problem) for problem in check_mail_files(config.mail)]
    for section, problem in found:
        print(f"ispd: {path}: {section}: {problem}", file=sys.stderr)
    if found:
        return EXIT_USAGE
    print(f"{path}: ok")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    defaulted = args.config is None and args.global_config is None and "ISPD_CONFIG" not in os.environ
    if args.config is None:
        args.config = args.global_config or Path(os.environ.get("ISPD_CONFIG", DEFAULT_CONFIG))
    # Arguments that argparse alone cannot check together: a usage error too, before anything is opened.
    wrong = args.check(args) if hasattr(args, "check") else None
    if wrong is not None:
        print(f"ispd: {wrong}", file=sys.stderr)
        return EXIT_USAGE
    if getattr(args, "credential_policy", None):
        args.credential_policy = CredentialPolicy(args.credential_policy)
    if getattr(args, "status", None):
        args.status = SubscriberStatus(args.status)
    try:
        snapshot = getattr(args, "config_snapshot", None)
        config = load_config_snapshot(snapshot) if snapshot is not None else load_config(args.config)
    except ConfigError as exc:
        # one line per problem, each as check_config_files writes its own: "ispd: FILE: where: what"
        for line in str(exc).splitlines():
            # -c left out: say why that file, and what to do
            hint = (" (the default without -c FILE or $ISPD_CONFIG; in a clone of ispd, -c configs/dev.toml)"
                    if defaulted and line == f"{args.config}: no such file" else "")
            print(f"ispd: {line}{hint}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "check-config":
            return check_config_files(args.config, config)
        if args.command == "run":
            from ispd.supervisor import run_daemon

            return run_daemon(args.config, config)
        if args.command == "worker":
            from ispd.supervisor import run_service_worker

            return run_service_worker(args.service, args.config, config, args.control, args.ready_fd, args.parent_pid,
                                      args.instance, args.config_snapshot, args.handed_files, args.audit_from)
        configure_logging(LogConfig(level="warning", format="console"), stream=sys.stderr)
        if hasattr(args, "prepare"):
            args.prepare(config, args)
        if getattr(args, "without_store", False):
            asyncio.run(args.handler(config, args))
        else:
            asyncio.run(run_admin(config, args.handler, args))
    except (CommandFailed, StoreError, PasswordRejected) as exc:
        print(f"ispd: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `ispd subscriber list | head`: the reader has seen enough
        return 0
    except Exception as exc:
        # A bug, or a case nobody foresaw: still one line for the operator; the traceback on request.
        if os.environ.get("ISPD_TRACEBACK"):
            raise
        print(f"ispd: unexpected error: {type(exc).__name__}: {exc} (set ISPD_TRACEBACK=1 for details)",
              file=sys.stderr)
        return EXIT_FAILED
    return 0
