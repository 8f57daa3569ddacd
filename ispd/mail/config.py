"""The ``[mail]`` section: the domains ispd receives mail for, where mailboxes live, and the
SMTP listeners with their limits.

Defaults are a careful MX's: a loopback listener until the operator names real addresses, mail
accepted only for the configured domains (never an open relay), the limits of Postfix's
defaults or tighter, STARTTLS offered once a certificate is given.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from ispd.configtypes import IPNetwork, ListenAddress, Section, SocketAddress
from ispd.store.validation import hostname_text, mail_address


def _domain(text: str) -> str:
    name = hostname_text(text)
    if "." not in name:
        raise ValueError(f"{text!r} is not a mail domain (it has no dot)")
    return name


MailDomain = Annotated[str, AfterValidator(_domain)]
MailAddressText = Annotated[str, AfterValidator(mail_address)]


class DKIMKeyConfig(Section):
    # Outbound mail whose From is at this domain is signed with this key, published in DNS as
    # <selector>._domainkey.<domain> TXT "v=DKIM1; k=rsa; p=..." (the public key).
    domain: MailDomain
    selector: str = Field(pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
    private_key: Path  # PEM, RSA (2048 bits is the usual size)


class BlocklistConfig(Section):
    """A DNS blocklist the MX asks about each client (Postfix's reject_rbl_client)."""

    # The list's zone: a client 192.0.2.1 is listed when 1.2.0.192.<zone> has an A record.
    zone: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+\.?$")
    # Only answers inside these list a client, e.g. ["127.0.0.2/32", "127.0.0.4/30"] for some of
    # a list's kinds. Unset: 127.0.0.0/8 but 127.255.255.0/24, which Spamhaus and others answer
    # when they refuse the query (from a public resolver, over a quota) rather than to list
    # anyone: taken as listings, every client would be refused.
    answers: list[IPNetwork] | None = Field(default=None, min_length=1)


class MailConfig(Section):
    enabled: bool = False
    # The domains whose addresses are subscribers' mailboxes (`ispd mailbox add`). Mail for any
    # other domain is refused on the MX (no relaying).
    domains: list[MailDomain] = []
    # The name ispd gives in its greeting, EHLO reply and Received headers; the machine's fully
    # qualified name when unset.
    hostname: Annotated[str, AfterValidator(hostname_text)] | None = None
    # Mailboxes are Maildir++ directories under this root: <root>/<domain>/<local part>/.
    maildir_root: Path = Path("/var/lib/ispd/mail")
    # The MX: where the world delivers mail for the domains (port 25).
    listen_mx: list[ListenAddress] = Field(default_factory=lambda: [SocketAddress("127.0.0.1", 25)])
    # PEM files; when given, the MX offers STARTTLS (RFC 3207). Re-read on SIGHUP.
    certificate: Path | None = None
    private_key: Path | None = None
    # A message larger than this is refused (552 5.3.4); advertised in EHLO as SIZE.
    max_message_bytes: int = Field(default=25 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    # Recipients of one message; beyond it RCPT gets 452 4.5.3 (RFC 5321 §4.5.3.1.8 asks for
    # at least 100).
    max_recipients: int = Field(default=100, ge=1, le=10_000)
    # SMTP connections at once, in total and from one client address; over it: 421 and closed.
    max_connections: int = Field(default=500, ge=1, le=100_000)
    max_connections_per_client: int = Field(default=20, ge=1, le=10_000)
    # New connections one client address may open per minute (0: no limit); over it: 421 4.7.0.
    max_connection_rate_per_client: int = Field(default=120, ge=0, le=1_000_000)
    # A client that sends nothing for this long is disconnected (RFC 5321 §4.5.3.2: 5 minutes).
    command_timeout_seconds: float = Field(default=300.0, ge=10, le=3600)
    # alice+lists@ is delivered to alice@ when no mailbox has the whole address; "" turns it off.
    recipient_delimiter: str = Field(default="+", pattern=r"^[+\-=_]?$")
    # Mail to postmaster@ any of the domains (RFC 5321 §4.5.1 requires that it is accepted)
    # goes to this mailbox, unless a mailbox of that very address exists.
    postmaster: MailAddressText | None = None

    # Submission for subscribers' mail clients: 587 with STARTTLS (RFC 6409) and 465 with TLS
    # from the first byte (RFC 8314, which mail clients now prefer). Both need the certificate,
    # and AUTH (PLAIN, LOGIN) against the store's credentials before any MAIL.
    listen_submission: list[ListenAddress] = []
    listen_submissions: list[ListenAddress] = []
    # IMAP for subscribers' mail clients: 143 with STARTTLS and 993 with TLS from the first byte
    # (RFC 8314). Both need the certificate; LOGIN only after TLS. Clients log in with the
    # mailbox's address (or the username, for a subscriber with one mailbox).
    listen_imap: list[ListenAddress] = []
    listen_imaps: list[ListenAddress] = []
    # IMAP sessions of one mailbox at once (Dovecot's mail_max_userip_connections is 10 per
    # address); a login beyond it is refused.
    max_imap_sessions_per_mailbox: int = Field(default=20, ge=1, le=10_000)
    # A session that sends nothing for this long is logged out (RFC 3501 §5.4: at least 30
    # minutes; clients in IDLE renew it every 29).
    imap_autologout_seconds: float = Field(default=1800.0, ge=1800, le=86400)
    # Commands one IMAP session may send per second, with bursts of five seconds' worth; a
    # client above it is slowed down (its commands wait), never refused. 0: no limit. A mail
    # client resynchronising a large folder sends tens per second at most.
    imap_commands_per_second: int = Field(default=200, ge=0, le=100_000)
    # A failed AUTH is answered after this delay, and a session that fails this often is closed.
    auth_failure_delay_seconds: float = Field(default=1.0, ge=0, le=30)
    max_auth_failures: int = Field(default=3, ge=1, le=100)
    # Failed logins from one client address (SMTP AUTH and IMAP together) within
    # auth_failure_window_seconds, after which its logins are refused unchecked until the window
    # passes; a login name that keeps failing gets longer and longer delays instead.
    auth_failures_per_address: int = Field(default=20, ge=1, le=100_000)
    auth_failure_window_seconds: float = Field(default=900.0, ge=10, le=86400)
    # Messages one subscriber may submit per hour (a hijacked account sending spam is stopped
    # here); beyond it MAIL gets 450 4.7.1.
    max_messages_per_hour: int = Field(default=300, ge=1, le=1_000_000)
    # The outbound queue: message files live here, their state in the store.
    queue_directory: Path = Path("/var/lib/ispd/queue")
    # A message not delivered after this long bounces (Postfix: maximal_queue_lifetime, 5 days).
    queue_lifetime_seconds: float = Field(default=5 * 86400, ge=60, le=30 * 86400)
    # Retries wait retry_initial_seconds, then twice as long each time, at most retry_max_seconds.
    retry_initial_seconds: float = Field(default=300, ge=1, le=86400)
    retry_max_seconds: float = Field(default=4 * 3600, ge=1, le=7 * 86400)
    # Deliveries to other domains at once.
    max_outbound_deliveries: int = Field(default=20, ge=1, le=1000)
    # Of those, at most this many to one domain (Postfix's destination concurrency limit): a
    # slow or tarpitting MX must not take every slot from the mail to everyone else.
    max_outbound_per_domain: int = Field(default=10, ge=1, le=1000)
    # How long to wait for each step of an outbound SMTP conversation (RFC 5321 §4.5.3.2 asks
    # for minutes; 60 s is enough for any server worth waiting for, and a retry follows). Not
    # for the message itself: see outbound.DATA_REPLY_SECONDS.
    outbound_timeout_seconds: float = Field(default=60.0, ge=1, le=600)
    # The port other domains' MX hosts listen on: 25, except in a test lab.
    outbound_port: int = Field(default=25, ge=1, le=65535)
    # The DNS server for MX lookups, e.g. ispd's own DNS listener "127.0.0.1:53"; unset: the
    # servers in /etc/resolv.conf.
    resolver: ListenAddress | None = None

    # Inbound (MX) mail is checked with SPF, DKIM and DMARC, and the results written into an
    # Authentication-Results header (RFC 8601) for filters and mail clients.
    authentication_checks: bool = True
    # "enforce": a DMARC failure where the From domain publishes p=reject is refused (550 5.7.1)
    # and p=quarantine goes to the Junk folder, as the domain's owner asks; "tag": only the header.
    dmarc_enforcement: Literal["enforce", "tag"] = "enforce"
    # DKIM keys for signing what subscribers submit, one table per domain.
    dkim: list[DKIMKeyConfig] = []
    # DNS blocklists ([[mail.dnsbl]]) for MX clients: a listed client's recipients get 554 5.7.1,
    # but for postmaster, so that a sender listed by mistake can still reach you. Asked through
    # `resolver` when the client connects; a list that does not answer lists no one.
    dnsbl: list[BlocklistConfig] = []
    # Clients never looked up (the ISP's own relays, its monitoring).
    dnsbl_exempt: list[IPNetwork] = []

    # Mail an alias forwards elsewhere goes out with its envelope sender rewritten (SRS, as
    # postsrsd does for Postfix: SRS0=HHHH=TT=example.com=bob@<srs_domain>), so that the
    # target's SPF check passes; a bounce to that address comes back to the MX, is checked, and
    # goes on to the original sender. Senders at our own domains, and the null sender, stay.
    srs: bool = True
    # The domain of the rewritten senders: one of `domains`, whose MX is this server and whose SPF
    # record allows its outbound addresses. Default: the first of `domains`.
    srs_domain: MailDomain | None = None
    # One secret per line: the first signs, every line verifies (to rotate, add a new first line;
    # drop the old one after srs_max_age_days). Made with a random secret when missing. Nodes that
    # share the MX need the same file. Default: srs.secret beside queue_directory.
    srs_secret_file: Path | None = None
    # Bounces to a rewritten sender older than this are refused (libsrs2's default: 21 days).
    srs_max_age_days: int = Field(default=21, ge=1, le=365)

    @property
    def server_name(self) -> str:
        return self.hostname or socket.getfqdn()

    @property
    def srs_secrets_path(self) -> Path:
        return self.srs_secret_file or self.queue_directory.parent / "srs.secret"

    @model_validator(mode="after")
    def _consistent(self) -> MailConfig:
        if len(set(self.domains)) != len(self.domains):
            raise ValueError("domains: a domain is listed twice")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("give both `certificate` and `private_key` (PEM file paths), or neither")
        if self.enabled and not self.domains:
            raise ValueError('give the domains to receive mail for, e.g. domains = ["isp.example"]')
        if self.enabled and not self.listen_mx:
            raise ValueError('give listen_mx addresses, e.g. listen_mx = ["198.18.0.25:25"]')
        if (self.listen_submission or self.listen_submissions) and self.certificate is None:
            raise ValueError("submission (listen_submission, listen_submissions) needs `certificate` and "
                             "`private_key`: passwords never cross the network in the clear")
        if (self.listen_imap or self.listen_imaps) and self.certificate is None:
            raise ValueError("IMAP (listen_imap, listen_imaps) needs `certificate` and `private_key`: passwords "
                             "never cross the network in the clear")
        signing_domains = [k.domain for k in self.dkim]
        if len(set(signing_domains)) != len(signing_domains):
            raise ValueError("dkim: a domain has two keys")
        for key in self.dkim:
            if key.domain not in self.domains:
                raise ValueError(f"dkim: {key.domain} is not one of the domains")
        if self.retry_max_seconds < self.retry_initial_seconds:
            raise ValueError("retry_max_seconds is less than retry_initial_seconds")
        if self.postmaster is not None and self.postmaster.rpartition("@")[2] not in self.domains:
            raise ValueError(f"postmaster: {self.postmaster} is not at one of the domains")
        if self.srs_domain is not None and self.srs_domain not in self.domains:
            raise ValueError(f"srs_domain: {self.srs_domain} is not one of the domains (bounces to the rewritten "
                             "senders must reach this MX)")
        return self
