"""The admin API's routes: thin over the store (and, for what lives in the daemon, over the
services' control commands), with the same checks and audit trail as the CLI.

Each change is written to the store, which audits it as ``api:<peer>``; the running services
hear of it from the audit log, as they do of the CLI's changes. Errors are JSON
``{"detail": "..."}`` with 400 (a bad value), 404 (no such thing), 409 (a conflict) or 503
(a service that is not running, or the store that cannot be written now). The OpenAPI
document is served at /openapi.json and committed as docs/openapi.json (a test keeps the two
equal).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, cast

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from ispd import __version__
from ispd.config import Config
from ispd.control import CommandError, ControlCommands
from ispd.credentials import check_password_acceptable, derive_credentials, effective_policy
from ispd.dns import dnssec
from ispd.dns.admin import parse_name_argument
from ispd.dns.config import domain_name
from ispd.dns.hints import HintsError, load_trust_anchors
from ispd.dns.service import NOT_AN_NTA
from ispd.dns.wire import name_to_text
from ispd.effects import Effect, effects
from ispd.listeners import AuthThrottle
from ispd.logs import get_logger
from ispd.mail.maildir import Maildir
from ispd.store.base import Store
from ispd.store.errors import Conflict, InvalidValue, NotFound, StoreUnavailable
from ispd.store.models import (
    MAX_ALIAS_TARGETS,
    UNCHANGED,
    AliasStillNaming,
    AuditEntry,
    CoARecord,
    CredentialPolicy,
    DailyUsage,
    Holding,
    Lease,
    Lease6,
    Lease6HistoryEntry,
    LeaseHistoryEntry,
    MailAlias,
    Mailbox,
    OverQuota,
    Plan,
    RadiusSession,
    Reservation,
    ReservationKind,
    Subscriber,
    SubscriberStatus,
    SuspendedMail,
    Unchanged,
    Usage,
)
from ispd.store.validation import attributable_text, dhcp6_prefix_text, mail_address, usable_text

# --- request bodies


class RequestBody(BaseModel):
    """A field the route does not know is refused (422), not dropped: a billing system's
    misspelt "acount_ref", or a field only the CLI has, would be a silent no-op."""

    model_config = ConfigDict(extra="forbid")


class NewSubscriber(RequestBody):
    username: str = Field(min_length=1, max_length=253)
    plan: str | None = None
    full_name: str | None = None
    account_ref: str | None = None
    password: str | None = Field(default=None, description="set if given; never stored as given")
    credential_policy: CredentialPolicy | None = Field(
        default=None, description="which password forms are stored, the subscriber's own over its plan's (as "
                                  "`ispd subscriber add --credential-policy`); null: the plan's")


class StatusChange(RequestBody):
    reason: str | None = Field(default=None, max_length=200)


# The body of a suspension, a closure or a Disconnect may be left out, as the CLI's --reason
# may: a bare `curl -X POST .../suspend` was a 422 for a body whose every field is optional.
OptionalStatusChange = Annotated[StatusChange, Body(default_factory=StatusChange)]


class PlanChoice(RequestBody):
    plan: str | None = Field(description="a plan's name or id; null: no plan")


class NewPlan(RequestBody):
    name: str = Field(min_length=1, max_length=64)
    download_kbps: StrictInt | None = Field(default=None, gt=0)
    upload_kbps: StrictInt | None = Field(default=None, gt=0)
    session_timeout_seconds: StrictInt | None = Field(default=None, gt=0)
    idle_timeout_seconds: StrictInt | None = Field(default=None, gt=0)
    max_sessions: StrictInt | None = Field(default=None, gt=0)
    mail_quota_bytes: StrictInt | None = Field(default=None, gt=0)
    credential_policy: CredentialPolicy = CredentialPolicy.VERIFIER
    suspended_mail: SuspendedMail = SuspendedMail.READ
    monthly_quota_bytes: StrictInt | None = Field(default=None, gt=0, description="fair use, both ways, per UTC month")
    over_quota: OverQuota = OverQuota.THROTTLE
    over_quota_download_kbps: StrictInt | None = Field(default=None, gt=0)
    over_quota_upload_kbps: StrictInt | None = Field(default=None, gt=0)


class NewReservation(RequestBody):
    subscriber: str
    kind: ReservationKind
    key: str
    address: str | None = Field(default=None, description="a fixed IPv4 address (not for kind duid)")
    hostname: str | None = None
    address6: str | None = Field(default=None, description="a fixed IPv6 address (DHCPv6 IA_NA; RADIUS "
                                                            "Framed-IPv6-Address), for kinds duid, circuit-id, "
                                                            "remote-id and username: 2001:db8:1::10")
    prefix6: str | None = Field(default=None, description="a fixed prefix to delegate (DHCPv6 IA_PD; RADIUS "
                                                           "Delegated-IPv6-Prefix), for kinds duid, circuit-id, "
                                                           "remote-id and username: 2001:db8:200::/48")


class ReservationChange(RequestBody):
    """The fields to change: a value sets one, null clears it, and one left out stays as it is."""

    address: str | None = None
    hostname: str | None = None
    address6: str | None = None
    prefix6: str | None = None

    def given(self, name: str) -> str | Unchanged | None:
        return getattr(self, name) if name in self.model_fields_set else UNCHANGED


class NewMailbox(RequestBody):
    subscriber: str
    address: str
    quota_bytes: StrictInt | None = Field(default=None, gt=0)


class QuotaChoice(RequestBody):
    quota_bytes: StrictInt | None = Field(gt=0, description="the mailbox's own limit; null: its plan's applies again")


class NewMailAlias(RequestBody):
    subscriber: str = Field(description="the alias's owner; it goes with its subscriber")
    address: str = Field(description="at one of [mail] domains, no mailbox's: info@isp.example")
    targets: list[str] = Field(description=f"1 to {MAX_ALIAS_TARGETS}: mailboxes here (which must exist), or "
                                           "addresses elsewhere (forwarded, the sender kept)")


# --- responses


class SubscriberView(BaseModel):
    subscriber: Subscriber
    status_since: float | None = Field(description="when it entered its status; null: no longer in the audit log")
    plan: Plan | None
    credential_forms: list[str]
    reservations: list[Reservation]
    leases: list[Lease]
    bindings6: list[Lease6] = Field(description="its DHCPv6 bindings: addresses and delegated prefixes, latest first")
    sessions: list[RadiusSession]
    mailboxes: list[Mailbox]
    aliases: list[MailAlias]
    coa: list[CoARecord]
    usage_this_month: Usage
    audit: list[AuditEntry]
    effects: list[Effect]


class LeaseView(BaseModel):
    address: str
    lease: Lease | None
    history: list[LeaseHistoryEntry]


class Lease6View(BaseModel):
    prefix: str = Field(description="the prefix asked about, canonical (an address as its /128)")
    lease: Lease6 | None
    history: list[Lease6HistoryEntry]


class Attribution(BaseModel):
    address: str
    since: float
    until: float
    holdings: list[Holding]


class NegativeTrustAnchor(BaseModel):
    name: str
    seconds_left: int | None = Field(description="null: from the config file, no end")
    source: str = Field(description="config, or runtime (added by the API or `ispd dns nta add`)")


class NewNegativeTrustAnchor(RequestBody):
    name: str = Field(description="a domain whose DNSSEC is broken, e.g. broken.example")
    seconds: StrictInt = Field(default=86400, ge=1, le=7 * 86400, description="how long (RFC 7646: it lapses)")


class TrustAnchorKeyView(BaseModel):
    zone: str
    key_tag: int
    algorithm: int
    state: str = Field(description="addpend, valid, missing or revoked (RFC 5011)")
    since: float
    hold_down_until: float | None


class DynamicResult(BaseModel):
    session_id: int
    kind: str
    result: str
    attempts: int
    error_cause: int | None = None
    detail: str = ""


class ClosedSessions(BaseModel):
    closed: list[int]  # the sessions closed (none: it was not open)


@dataclass(frozen=True, slots=True)
class SetAsideMailbox(Mailbox):
    """A deleted mailbox, and where its mail went: its Maildir is renamed, not removed, so that
    the address's next owner starts empty; it is kept until the operator removes it."""

    mail_kept_in: str | None = None  # the renamed Maildir; None: it had no mail on disk


@dataclass(frozen=True, slots=True)
class DeletedMailbox(SetAsideMailbox):
    """A deleted mailbox, and the aliases that still name it (see ``AliasStillNaming``)."""

    aliases_still_naming: tuple[AliasStillNaming, ...] = ()


@dataclass(frozen=True, slots=True)
class DeletedSubscriber(Subscriber):
    """The deleted subscriber, its fields where they were (a client that read them goes on
    working), and what went with it: its mailboxes, and the aliases of others that name them."""

    mailboxes: tuple[SetAsideMailbox, ...] = ()
    aliases_still_naming: tuple[AliasStillNaming, ...] = ()


class MailboxQuota(BaseModel):
    address: str
    used_bytes: int
    messages: int
    quota_bytes: int | None = Field(description="the limit in force; null: no limit")
    quota_from: Literal["mailbox", "plan"] | None = Field(description="whose limit it is: the mailbox's own, or "
                                                                      "its subscriber's plan's")


class ErrorDetail(BaseModel):
    """An error: what went wrong, for a person to act on."""

    detail: str


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorDetail, "description": description}


# The errors any route may answer (besides FastAPI's own 422), in the OpenAPI document: it listed
# 200 and 422 only, and a client built from it took each of these for a status it could not
# know. (Not every route can answer each: one without a body has no 413 or 415.)
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("A bad value: a malformed address, name, time or field the CLI would refuse too"),
    401: _error("TCP listeners: no bearer token, or a wrong one (WWW-Authenticate: Bearer)"),
    404: _error("No such subscriber, plan, reservation, mailbox, alias, session or anchor"),
    409: _error("A conflict: it exists already, or it cannot be done in its state"),
    413: _error("A request body of more than 64 KiB"),
    415: _error("A body not sent as JSON (Content-Type: application/json)"),
    429: _error("TCP listeners: too many wrong tokens from this address; try again after Retry-After"),
    503: _error("A service that is not running here, or the store locked by another process or failing to "
                "write: try again (Retry-After)"),
}


DNSView = Callable[[int], Awaitable[dict[str, Any] | None]]
MAX_BODY_BYTES = 64 * 1024  # the largest request any route takes is a few hundred bytes
# A peer address that sends this many wrong tokens within the window is refused unchecked (429)
# until the window passes, as mail's auth_failures_per_address does for logins: guessing a token
# over TCP is slowed to a crawl, and each failure is logged (admin.auth.failed) for fail2ban.
AUTH_FAILURES_PER_ADDRESS = 20
AUTH_FAILURE_WINDOW_SECONDS = 900.0
MAX_TRACKED_ADDRESSES = 10_000  # past it (a flood from very many addresses) the count starts over

log = get_logger("ispd.admin")


class _Guard:
    """ASGI middleware: the bearer token (when the listener needs one) and a cap on the request
    body, before the application sees the request."""

    def __init__(self, app: Any, token: Callable[[], str | None] | None, max_body: int) -> None:
        self.app, self.token, self.max_body = app, token, max_body
        self.failures = AuthThrottle(AUTH_FAILURES_PER_ADDRESS, AUTH_FAILURE_WINDOW_SECONDS, base_delay=0.0,
                                     max_entries=MAX_TRACKED_ADDRESSES)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        token = self.token() if self.token is not None else None  # read per request: a reload may rotate it
        # The scheme is case-insensitive (RFC 9110 11.1): "bearer", as OAuth's token_type is
        # written, is sent by clients that build the header from it.
        scheme, _, credentials = headers.get(b"authorization", b"").partition(b" ")
        if self.token is not None:
            client = scope.get("client")
            peer = str(client[0]) if client else "unknown"
            wait = self.failures.retry_after(peer, time.monotonic())
            if wait is not None:
                await _answer(send, 429, "too many requests with a wrong token from this address; try again later",
                              [(b"retry-after", str(max(1, math.ceil(wait))).encode())])
                return
            if token is None or scheme.lower() != b"bearer" or not hmac.compare_digest(
                    credentials.strip(b" "), token.encode()):
                failures = self.failures.failed(peer, "", time.monotonic())
                log.warning("admin.auth.failed", client=peer, path=scope.get("path", ""),
                            reason="no bearer token" if scheme.lower() != b"bearer" else "wrong token",
                            failures=failures, shut_out=failures >= AUTH_FAILURES_PER_ADDRESS)
                await _answer(send, 401, "a valid bearer token is needed", [(b"www-authenticate", b"Bearer")])
                return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _answer(send, 413, f"a request body may have at most {self.max_body} bytes")
            return
        received, answered = 0, False

        async def counted() -> dict[str, Any]:
            # Chunked, without a Content-Length: counted as it comes; past the cap the client
            # gets 413 at once and the application a disconnect (whatever it answers is dropped).
            nonlocal received, answered
            message: dict[str, Any] = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body and not answered:
                answered = True
                await _answer(send, 413, f"a request body may have at most {self.max_body} bytes")
                return {"type": "http.disconnect"}
            return message

        async def unless_answered(message: dict[str, Any]) -> None:
            if not answered:
                await send(message)

        await self.app(scope, counted, unless_answered)


async def _answer(send: Any, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


def _actor(request: Request) -> str:
    """Who the audit log says made a change: the API, and the peer's address on TCP."""
    client = request.client
    return f"api:{client.host}" if client is not None and client.host else "api:local"


Actor = Annotated[str, Depends(_actor)]


def build_app(store: Store, current_config: Callable[[], Config], control: ControlCommands, *,
              token: Callable[[], str | None] | None = None, dns_view: DNSView | None = None) -> FastAPI:
    """The API over ``store``; with ``token``, every request must carry what it returns, read
    per request (TCP listeners; a reload may rotate it). ``current_config``: the daemon's
    config as it is now (a reload changes it)."""
    app = FastAPI(title="ispd admin API", version=__version__,
                  description="Subscribers, plans, reservations, mailboxes and mail aliases, sessions, leases, "
                              "attribution and usage of one ispd store. Changes are audited and reach the running "
                              "services at once.",
                  responses=ERROR_RESPONSES)
    # The token and the body's size are checked before anything reads the body: a client
    # without the token, or with a huge body, costs no memory.
    app.add_middleware(_Guard, token=token, max_body=MAX_BODY_BYTES)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(InvalidValue)
    async def _invalid(request: Request, exc: InvalidValue) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        # Locked by another process past busy_timeout_seconds, or a disk error: the CLI says so in
        # one line; here it was a 500 in plain text and a traceback. A client may try again.
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            # Starlette's Allow names the methods of the first route whose path matched (GET for
            # /v1/plans, which takes POST too); RFC 9110 wants every method the resource has.
            allowed = {method for route in app.router.routes if isinstance(route, Route) and route.methods
                       and route.matches(request.scope)[0] != Match.NONE for method in route.methods}
            exc = StarletteHTTPException(405, exc.detail, {**(exc.headers or {}), "Allow": ", ".join(sorted(allowed))})
        elif exc.status_code == 404 and exc.detail == "Not Found" and \
                b"%2f" in request.scope.get("raw_path", b"").lower():
            # A name with a '/' (a username with a prefix realm: realm/user) sent as %2F: decoded,
            # it splits the path and no route matches. "Not Found" told a DELETE or a suspend that
            # a subscriber who stays active was not there.
            exc = StarletteHTTPException(400, "a name with a '/' in it cannot be given in a path, even as %2F: name "
                                              "a subscriber by its id, %23ID (ispd subscriber show prints it)")
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _unprocessable(request: Request, exc: RequestValidationError) -> Response:
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if not _is_json(media_type) and any(error["loc"] == ("body",) and isinstance(error.get("input"), str | bytes)
                                            for error in exc.errors()):
            # `curl -d '{...}'` without its header sends a form: FastAPI reads no JSON then, and
            # its "Input should be a valid dictionary" over the very JSON sent tells no one why.
            return JSONResponse({"detail": f"send the body as JSON, with Content-Type: application/json (not "
                                           f"{media_type}); with curl: -H 'content-type: application/json'"},
                                status_code=415)
        # FastAPI's own handler echoes the input back as UTF-8, which a lone surrogate in it
        # (valid JSON, "\ud800") cannot be: a 500. The same answer, ASCII-escaped, and with an
        # input of 1e999 (inf), or Python's NaN that json.loads takes, as a string: echoed as the
        # number it is, it was "Infinity", which is not JSON (RFC 8259 6), and a client's parser
        # failed on the very answer that says what was wrong.
        return Response(json.dumps({"detail": _finite(jsonable_encoder(exc.errors()))}, allow_nan=False),
                        status_code=422, media_type="application/json")

    # --- subscribers

    @app.get("/v1/subscribers", tags=["subscribers"])
    async def list_subscribers(request: Request, response: Response, status: SubscriberStatus | None = None,
                               after: Annotated[str | None, Query(description=_AFTER)] = None,
                               limit: Page = None) -> list[Subscriber]:
        """Subscribers by username; every one, or (``limit``) a page of them."""
        page = await store.list_subscribers(status, after=after, limit=limit)
        _link_next(request, response, page, limit, lambda last: last.username)
        return page

    @app.post("/v1/subscribers", status_code=201, tags=["subscribers"])
    async def add_subscriber(body: NewSubscriber, actor: Actor) -> Subscriber:
        credentials = None
        if body.password is not None:
            try:
                check_password_acceptable(body.password)
            except ValueError as exc:
                raise HTTPException(400, str(exc)) from None
            plan = await store.get_plan(body.plan) if body.plan is not None else None
            policy = effective_policy(body.credential_policy, plan)
            credentials = await asyncio.get_running_loop().run_in_executor(
                None, derive_credentials, body.password, policy, time.time())
        return await store.add_subscriber(body.username, actor=actor, plan=body.plan,
                                          full_name=body.full_name, account_ref=body.account_ref,
                                          credential_policy=body.credential_policy, credentials=credentials)

    @app.get("/v1/subscribers/{subscriber}", tags=["subscribers"])
    async def show_subscriber(subscriber: str) -> SubscriberView:
        o = await store.subscriber_overview(subscriber)
        view = await dns_view(o.subscriber.id) if dns_view is not None else None
        return SubscriberView(
            subscriber=o.subscriber, status_since=o.status_since, plan=o.plan, credential_forms=o.credentials.forms,
            reservations=o.reservations, leases=o.leases, bindings6=o.bindings6, sessions=o.sessions,
            mailboxes=o.mailboxes, aliases=o.aliases, coa=o.coa, usage_this_month=o.usage_this_month, audit=o.audit,
            effects=effects(o, current_config(), view, time.time()))

    async def set_status(subscriber: str, status: SubscriberStatus, reason: str | None, actor: str) -> Subscriber:
        return await store.set_subscriber_status(subscriber, status, actor=actor, reason=reason)

    @app.post("/v1/subscribers/{subscriber}/suspend", tags=["subscribers"])
    async def suspend(subscriber: str, body: OptionalStatusChange, actor: Actor) -> Subscriber:
        return await set_status(subscriber, SubscriberStatus.SUSPENDED, body.reason, actor)

    @app.post("/v1/subscribers/{subscriber}/close", tags=["subscribers"])
    async def close(subscriber: str, body: OptionalStatusChange, actor: Actor) -> Subscriber:
        return await set_status(subscriber, SubscriberStatus.CLOSED, body.reason, actor)

    @app.post("/v1/subscribers/{subscriber}/resume", tags=["subscribers"])
    async def resume(subscriber: str, actor: Actor) -> Subscriber:
        return await set_status(subscriber, SubscriberStatus.ACTIVE, None, actor)

    @app.put("/v1/subscribers/{subscriber}/plan", tags=["subscribers"])
    async def set_plan(subscriber: str, body: PlanChoice, actor: Actor) -> Subscriber:
        """Put the subscriber on a plan (or none); on it already, the same answer again (a PUT is
        idempotent), with no change audited."""
        try:
            return await store.set_subscriber_plan(subscriber, body.plan, actor=actor)
        except Conflict:
            # The store's "already on that plan", which the CLI says; sent again (a retry after
            # a timeout), a PUT was answered 409 for the very state it asked for.
            current = await store.get_subscriber(subscriber)
            wanted = (await store.get_plan(body.plan)).id if body.plan is not None else None
            if current.plan_id != wanted:
                raise
            return current

    @app.delete("/v1/subscribers/{subscriber}", tags=["subscribers"])
    async def delete_subscriber(subscriber: str, actor: Actor) -> DeletedSubscriber:
        """Delete a subscriber (its history is kept), as `ispd subscriber delete`: its mailboxes and
        aliases go with it, each mailbox's mail is set aside (`mail_kept_in`), and the aliases of
        other subscribers that name its mailboxes are listed with what their mail does now."""
        mailboxes = await store.list_mailboxes(subscriber=subscriber)
        deleted = await store.delete_subscriber(subscriber, actor=actor)
        # Its mailboxes went with it (the store cascades): their mail is set aside as the CLI
        # does, or the next owner of an address would read it.
        set_aside = [await set_aside_mail(mailbox) for mailbox in mailboxes]
        return DeletedSubscriber(**_fields_of(deleted), mailboxes=tuple(set_aside),
                                 aliases_still_naming=tuple(await store.aliases_still_naming(
                                     {m.address for m in mailboxes})))

    # --- plans

    @app.get("/v1/plans", tags=["plans"])
    async def list_plans() -> list[Plan]:
        return await store.list_plans()

    @app.post("/v1/plans", status_code=201, tags=["plans"])
    async def add_plan(body: NewPlan, actor: Actor) -> Plan:
        fields = body.model_dump()
        return await store.add_plan(fields.pop("name"), actor=actor, **fields)

    # --- reservations

    @app.get("/v1/reservations", tags=["reservations"])
    async def list_reservations(subscriber: str | None = None) -> list[Reservation]:
        return await store.list_reservations(subscriber=subscriber)

    @app.post("/v1/reservations", status_code=201, tags=["reservations"])
    async def add_reservation(body: NewReservation, actor: Actor) -> Reservation:
        return await store.add_reservation(body.subscriber, body.kind, body.key, actor=actor,
                                           address=body.address, hostname=body.hostname, address6=body.address6,
                                           prefix6=body.prefix6)

    @app.patch("/v1/reservations/{reservation_id}", tags=["reservations"])
    async def change_reservation(reservation_id: int, body: ReservationChange, actor: Actor) -> Reservation:
        """Change what a reservation fixes, in place and in one audited step, as `ispd
        reservation set`: checked as a new reservation is; its kind, key and subscriber stay."""
        return await store.update_reservation(
            reservation_id, actor=actor, address=body.given("address"), hostname=body.given("hostname"),
            address6=body.given("address6"), prefix6=body.given("prefix6"))

    @app.delete("/v1/reservations/{reservation_id}", tags=["reservations"])
    async def delete_reservation(reservation_id: int, actor: Actor) -> Reservation:
        return await store.delete_reservation(reservation_id, actor=actor)

    # --- mailboxes

    @app.get("/v1/mailboxes", tags=["mailboxes"])
    async def list_mailboxes(subscriber: str | None = None) -> list[Mailbox]:
        return await store.list_mailboxes(subscriber=subscriber)

    def at_a_mail_domain(text: str) -> str:
        """The canonical address, when it is at one of [mail] domains (as the CLI checks)."""
        address = _mail_address_or_400(text)
        domain, domains = address.rpartition("@")[2], current_config().mail.domains
        if domain not in domains:
            raise HTTPException(400, f"{address}: {domain} is not one of the mail domains ([mail] domains: "
                                     f"{', '.join(domains) or 'none yet'})")
        return address

    async def set_aside_mail(mailbox: Mailbox) -> SetAsideMailbox:
        maildir = Maildir.for_address(current_config().mail.maildir_root, mailbox.address)
        archive = await asyncio.to_thread(maildir.set_aside)
        return SetAsideMailbox(**_fields_of(mailbox), mail_kept_in=str(archive) if archive is not None else None)

    @app.post("/v1/mailboxes", status_code=201, tags=["mailboxes"])
    async def add_mailbox(body: NewMailbox, actor: Actor) -> Mailbox:
        address = at_a_mail_domain(body.address)
        left_over = Maildir.for_address(current_config().mail.maildir_root, address).left_over()
        if left_over is not None:
            raise HTTPException(409, left_over)
        return await store.add_mailbox(body.subscriber, address, actor=actor, quota_bytes=body.quota_bytes)

    @app.delete("/v1/mailboxes/{address}", tags=["mailboxes"])
    async def delete_mailbox(address: str, actor: Actor) -> DeletedMailbox:
        """Delete a mailbox, as `ispd mailbox delete`: mail to it is refused from now on; its
        Maildir is renamed aside (`mail_kept_in`, null when it had none) and kept until the
        operator removes it, so that whoever gets the address next starts empty. The aliases that
        still name it are listed with the targets their mail reaches now (none: refused); they
        stay until deleted (DELETE /v1/mail-aliases/{address}) and added again as they should be."""
        deleted = await store.delete_mailbox(address, actor=actor)
        set_aside = await set_aside_mail(deleted)
        return DeletedMailbox(**_fields_of(set_aside), aliases_still_naming=tuple(
            await store.aliases_still_naming({deleted.address})))

    async def quota_of(address: str) -> MailboxQuota:
        canonical = _mail_address_or_400(address)
        recipient = await store.mail_recipient(canonical)
        if recipient is None:
            raise HTTPException(404, f"no mailbox {canonical}")
        maildir = Maildir.for_address(current_config().mail.maildir_root, recipient.mailbox.address)
        usage = await asyncio.to_thread(maildir.usage)
        source: Literal["mailbox", "plan"] | None = "mailbox" if recipient.mailbox.quota_bytes is not None else (
            "plan" if recipient.quota_bytes is not None else None)
        return MailboxQuota(address=recipient.mailbox.address, used_bytes=usage.bytes, messages=usage.messages,
                            quota_bytes=recipient.quota_bytes, quota_from=source)

    @app.get("/v1/mailboxes/{address}/quota", tags=["mailboxes"])
    async def mailbox_quota(address: str) -> MailboxQuota:
        """A mailbox's usage and the limit in force, as `ispd mailbox quota`."""
        return await quota_of(address)

    @app.put("/v1/mailboxes/{address}/quota", tags=["mailboxes"])
    async def set_mailbox_quota(address: str, body: QuotaChoice, actor: Actor) -> MailboxQuota:
        """Set a mailbox's own limit, or (null) give it its plan's again, as `ispd mailbox quota --set`."""
        await store.set_mailbox_quota(address, body.quota_bytes, actor=actor)
        return await quota_of(address)

    # --- mail aliases

    @app.get("/v1/mail-aliases", tags=["mail aliases"])
    async def list_mail_aliases(subscriber: str | None = None) -> list[MailAlias]:
        return await store.list_mail_aliases(subscriber=subscriber)

    @app.post("/v1/mail-aliases", status_code=201, tags=["mail aliases"])
    async def add_mail_alias(body: NewMailAlias, actor: Actor) -> MailAlias:
        """Mail to the alias's address goes to each target, as `ispd mailbox alias add`."""
        address = at_a_mail_domain(body.address)
        return await store.add_mail_alias(body.subscriber, address, body.targets,
                                          local_domains=current_config().mail.domains, actor=actor)

    @app.delete("/v1/mail-aliases/{address}", tags=["mail aliases"])
    async def delete_mail_alias(address: str, actor: Actor) -> MailAlias:
        """Delete an alias: mail to it is refused from now on."""
        return await store.delete_mail_alias(address, actor=actor)

    # --- sessions

    @app.get("/v1/sessions", tags=["sessions"])
    async def list_sessions(subscriber: str | None = None, open_only: bool = False,
                            limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> list[RadiusSession]:
        return await store.list_sessions(open_only=open_only, subscriber=subscriber,
                                         limit=limit)

    async def session_or_404(session_id: int) -> None:
        """A session that does not exist is a 404, as a subscriber that does not exist is; the
        command's own refusal (409) is for one it cannot act on (no longer open)."""
        try:
            await store.get_session(session_id)
        except InvalidValue:  # (a number past any row id is no session either)
            raise NotFound(f"no session #{session_id}") from None

    async def dynamic(command: str, session_id: int, reason: str | None) -> DynamicResult:
        handler = control.get(command)
        if handler is None or handler.plain is None:
            raise HTTPException(503, "RADIUS is not running in this daemon")
        await session_or_404(session_id)
        try:
            result = await handler.plain({"session_id": session_id, "reason": reason or "api"})
        except CommandError as exc:
            raise HTTPException(409, str(exc)) from None
        return DynamicResult(**result)

    @app.post("/v1/sessions/{session_id}/disconnect", tags=["sessions"])
    async def disconnect(session_id: int, body: OptionalStatusChange) -> DynamicResult:
        # Checked as the CLI's --reason and a suspension's reason are: `session show` and `subscriber
        # show` print it to a terminal, where a control character would hide or rewrite the screen.
        reason = None
        if body.reason:
            try:
                reason = usable_text(body.reason)
            except ValueError as exc:
                raise InvalidValue(str(exc)) from None
        return await dynamic("radius.session.disconnect", session_id, reason)

    @app.post("/v1/sessions/{session_id}/coa", tags=["sessions"])
    async def coa(session_id: int) -> DynamicResult:
        return await dynamic("radius.session.coa", session_id, None)

    @app.post("/v1/sessions/{session_id}/close", tags=["sessions"])
    async def close_session(session_id: int, actor: Actor) -> ClosedSessions:
        """Mark the session closed without asking its NAS (a NAS that is gone), as `ispd session close`."""
        handler = control.get("radius.session.close")
        if handler is None or handler.plain is None:
            raise HTTPException(503, "RADIUS is not running in this daemon")
        await session_or_404(session_id)
        try:
            return ClosedSessions(**await handler.plain({"session_id": session_id, "actor": actor}))
        except CommandError as exc:
            raise HTTPException(409, str(exc)) from None

    # --- DNSSEC: negative trust anchors (the running resolver's) and the tracked anchor keys

    async def dns_command(command: str, args: dict[str, Any]) -> Any:
        handler = control.get(command)
        if handler is None or handler.plain is None:
            raise HTTPException(503, "the DNS resolver is not running in this daemon")
        try:
            return await handler.plain(args)
        except CommandError as exc:
            raise HTTPException(409, str(exc)) from None

    @app.get("/v1/dns/negative-trust-anchors", tags=["dns"])
    async def list_ntas() -> list[NegativeTrustAnchor]:
        return [NegativeTrustAnchor(**anchor) for anchor in await dns_command("dns.nta.list", {})]

    @app.post("/v1/dns/negative-trust-anchors", status_code=201, tags=["dns"])
    async def add_nta(body: NewNegativeTrustAnchor) -> NegativeTrustAnchor:
        try:
            parse_name_argument(body.name)  # a bad value is a 400, as elsewhere, not the command's 409
        except CommandError as exc:
            raise HTTPException(400, str(exc)) from None
        added = await dns_command("dns.nta.add", {"name": body.name, "seconds": body.seconds})
        return NegativeTrustAnchor(name=added["name"], seconds_left=added["seconds"], source="runtime")

    @app.delete("/v1/dns/negative-trust-anchors/{name}", tags=["dns"])
    async def delete_nta(name: str) -> NegativeTrustAnchor:
        """Delete a negative trust anchor added at run time (404: there is none; 409: the config
        file's, to be removed there)."""
        try:
            parse_name_argument(name)  # a 400, as POST's, not the command's 409
        except CommandError as exc:
            raise HTTPException(400, str(exc)) from None
        try:
            deleted = await dns_command("dns.nta.delete", {"name": name})
        except HTTPException as exc:
            # None to delete (a second DELETE, one lapsed) is a 404, as every other DELETE's.
            if exc.status_code == 409 and NOT_AN_NTA in str(exc.detail):
                raise HTTPException(404, exc.detail) from None
            raise
        return NegativeTrustAnchor(name=deleted["name"], seconds_left=0, source="runtime")

    @app.get("/v1/dns/trust-anchors", tags=["dns"])
    async def trust_anchor_keys(zone: str = ".") -> list[TrustAnchorKeyView]:
        try:  # as `ispd dns anchors --zone`: a malformed name is a 400, a zone with no anchor a 404
            zone = domain_name(usable_text(zone))
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        keys = await store.trust_anchor_keys(zone)
        if not keys:
            try:
                anchors = load_trust_anchors(current_config().dns.dnssec.trust_anchor_file)
            except HintsError:
                anchors = None
            if anchors is not None and zone not in {name_to_text(a.zone).lower() for a in anchors}:
                raise HTTPException(404, f"{zone} has no trust anchor")
        return [TrustAnchorKeyView(zone=k.zone, key_tag=dnssec.key_tag(k.key),
                                   algorithm=dnssec.parse_dnskey(k.key).algorithm, state=k.state, since=k.since,
                                   hold_down_until=k.hold_down_until or None) for k in keys]

    # --- leases, attribution, usage

    @app.get("/v1/leases", tags=["leases"])
    async def list_leases(request: Request, response: Response, subscriber: str | None = None,
                          include_ended: bool = False, after: Annotated[str | None, Query(description=_AFTER)] = None,
                          limit: Page = None) -> list[Lease]:
        """DHCPv4 leases in the order of their address text (current ones: bound, or declined and
        in quarantine; ``include_ended``: every one); all of them, or (``limit``) a page."""
        page = await store.list_leases(subscriber=subscriber, include_ended=include_ended, after=after, limit=limit)
        _link_next(request, response, page, limit, lambda last: last.address)
        return page

    @app.get("/v1/leases/{address}", tags=["leases"])
    async def show_lease(address: str, limit: Annotated[int, Query(ge=1, le=10_000)] = 50) -> LeaseView:
        try:
            lease: Lease | None = await store.get_lease(address)
        except NotFound:
            lease = None
        return LeaseView(address=address, lease=lease, history=await store.lease_history(address, limit=limit))

    @app.get("/v1/leases6", tags=["leases"])
    async def list_leases6(subscriber: str | None = None, include_ended: bool = False) -> list[Lease6]:
        """DHCPv6 bindings: addresses (kind na, IA_NA) first, then delegated prefixes (pd, IA_PD)."""
        return await store.list_leases6(subscriber=subscriber, include_ended=include_ended)

    # ":path": a delegated prefix (2001:db8:100:ff00::/56) has a slash in it.
    @app.get("/v1/leases6/{prefix:path}", tags=["leases"])
    async def show_lease6(prefix: str, limit: Annotated[int, Query(ge=1, le=10_000)] = 50) -> Lease6View:
        """A prefix's (or an address's) DHCPv6 binding and its history, newest first."""
        try:
            canonical = dhcp6_prefix_text(prefix.removesuffix("/"))
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        try:
            lease: Lease6 | None = await store.get_lease6(canonical)
        except NotFound:
            lease = None
        return Lease6View(prefix=canonical, lease=lease, history=await store.lease6_history(canonical, limit=limit))

    # ":path": an IPv6 prefix asked about (2001:db8:1:2::/64) has a slash in it.
    @app.get("/v1/who/{address:path}", tags=["attribution"])
    async def who(address: str, at: datetime | None = None, since: datetime | None = None,
                  until: datetime | None = None) -> Attribution:
        if at is not None and (since is not None or until is not None):
            raise HTTPException(400, "give at, or since and until, not both")
        now = time.time()
        start = _seconds(at, "at") if at is not None else (_seconds(since, "since") if since is not None else (
            0.0 if until is not None else now))
        end = _seconds(at, "at") if at is not None else (_seconds(until, "until") if until is not None else now)
        # A trailing slash, which the path converter now keeps, was redirected away before.
        try:
            canonical = attributable_text(address.removesuffix("/"))
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return Attribution(address=canonical, since=start, until=end,
                           holdings=await store.who(canonical, since=start, until=end))

    @app.get("/v1/usage", tags=["usage"])
    async def usage(request: Request, response: Response, since: datetime, until: datetime,
                    subscriber: str | None = None,
                    after: Annotated[str | None, Query(description=_AFTER + " (SUBSCRIBER_ID/YYYY-MM-DD)",
                                                       pattern=r"^[0-9]{1,18}/[0-9]{4}-[0-9]{2}-[0-9]{2}$")] = None,
                    limit: Page = None) -> list[DailyUsage]:
        """Usage per subscriber and UTC day, by subscriber id then day; every row, or (``limit``)
        a page."""
        cursor = None
        if after is not None:
            subscriber_id, day = after.split("/")
            try:
                datetime.strptime(day, "%Y-%m-%d")
            except ValueError:
                raise HTTPException(400, f"after: {day} is no date") from None
            cursor = (int(subscriber_id), day)
        page = await store.usage_by_day(subscriber, since=_seconds(since, "since"), until=_seconds(until, "until"),
                                        after=cursor,
                                        limit=limit)
        _link_next(request, response, page, limit, lambda last: f"{last.subscriber_id}/{last.day}")
        return page

    return app


# Lists that may be long (every subscriber, lease, day of usage of an ISP) come whole by default,
# or in pages: ``limit`` rows after the ``after`` cursor, with a Link header (RFC 8288) to the
# next page while a page is full. Whole, 50,000 subscribers' leases were 23 MB built on the
# daemon's one event loop: DHCP and RADIUS answers waited up to a third of a second.
Page = Annotated[int | None, Query(ge=1, le=100_000, description="at most this many rows: a page (the Link header "
                                                               "names the next while a page is full)")]
_AFTER = "the rows after this one (a page's cursor: the last row's key, as the Link header names it)"


def _link_next(request: Request, response: Response, page: list[Any], limit: int | None,
               key: Callable[[Any], str]) -> None:
    if limit is not None and len(page) == limit:
        url = request.url.include_query_params(after=key(page[-1]))
        response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'


def _is_json(media_type: str) -> bool:
    """Whether FastAPI reads a body of this media type as JSON (as it does one without a type)."""
    return media_type in ("", "application/json") or (
        media_type.startswith("application/") and media_type.endswith("+json"))


def _finite(value: Any) -> Any:
    """``value`` (as ``jsonable_encoder`` makes it) with each infinite or NaN float as its text,
    which JSON can carry."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _mail_address_or_400(text: str) -> str:
    try:
        return mail_address(text)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


def _fields_of(instance: Any) -> dict[str, Any]:
    """A dataclass's fields as they are (not deep-copied as ``asdict`` does), to build the
    response that adds to it."""
    return {f.name: getattr(instance, f.name) for f in fields(instance)}


def _seconds(moment: datetime, name: str) -> float:
    """A time asked about, in seconds; one before 1970 is refused as the CLI refuses it (the
    store's times start there: it was taken, and answered as if for all time)."""
    seconds = (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()
    if seconds < 0:
        raise HTTPException(400, f"{name}: {moment.isoformat()} is out of range: give a time from 1970 on")
    return seconds


def openapi_document(config: Config | None = None) -> dict[str, Any]:
    """The API's OpenAPI document, as docs/openapi.json holds it."""
    app = build_app(cast(Store, _NoStore()), lambda: config or Config(), ControlCommands())
    return app.openapi()


class _NoStore:  # only the routes' signatures are read to describe them
    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)



def main() -> None:
    """``python -m ispd.admin.app > docs/openapi.json``: the committed document, regenerated."""
    print(json.dumps(openapi_document(), indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
