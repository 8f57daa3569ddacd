"""One subscriber, every service: suspend and resume as one operation, seen from the outside.

In namespaces: ispd (DHCP, DNS, RADIUS, mail) in one, the subscriber's home in another. The
subscriber has a PPPoE-style session (radclient as the BNG, which gave it 198.18.0.60 from its
own pool; the test's fake NAS listens for Disconnect on 3799 inside ispd's namespace), a router
that gets its address by DHCP (udhcpc), DNS queries from both addresses (dig) and a mailbox
(smtplib and imaplib, run inside the home namespace). ``ispd subscriber suspend`` must then:
Disconnect the session at the NAS, put the router in the walled-garden pool at its renewal (with
option 114), answer its DNS from the walled garden by either address, refuse its submission
while IMAP still reads, and ``subscriber show`` must say each of these is done; ``resume``
undoes all of it, and ``ispd who`` names the subscriber for the addresses it held.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lab.certs import issue
from tests.lab.dhcpclients import DHCPIspd, Udhcpc, client_link
from tests.lab.dnsispd import dig_in_netns, dns_section, rdatas
from tests.lab.fakenas import FakeNas
from tests.lab.netns import Lab, lab
from tests.lab.process import base_config, eventually
from tests.lab.radclient import radclient, require_radclient

SERVER = "198.18.0.1"
SESSION_ADDRESS = "198.18.0.60"  # from the BNG's own pool
MAC = "02:00:5e:10:10:01"
PORTAL, WWW = "198.18.0.10", "198.18.0.80"
SECRET = "testing123"
PASSWORD = "sam-long-password-1"
PORTAL_URI = "https://portal.isp.example/capport"


@dataclass
class Site:
    lab: Lab
    workdir: Path
    server_ns: str
    home_ns: str
    home_if: str
    ispd: DHCPIspd
    nas: FakeNas
    ca: Path

    def cli(self, *args: str, input: str | None = None) -> str:
        return self.ispd.cli(*args, input=input).stdout

    def dig_from(self, source: str, name: str = "www.isp.example") -> set[str]:
        return rdatas(dig_in_netns(self.home_ns, SERVER, name, "A", "-b", source))

    def radius(self, kind: str, attributes: str) -> str | None:
        port = 1812 if kind == "auth" else 1813
        return radclient(f"127.0.0.1:{port}", kind, SECRET, attributes, netns=self.server_ns, timeout=2).code

    def mail(self, action: str) -> str:
        """smtplib or imaplib from the home namespace: 'send' submits a message to sam's own
        address, 'read' lists the subjects in the INBOX. What it printed (or the error)."""
        script = f"""
import imaplib, smtplib, ssl, sys
context = ssl.create_default_context(cafile={str(self.ca)!r})
try:
    if {action!r} == "send":
        with smtplib.SMTP({SERVER!r}, 587, timeout=10) as s:
            s._host = "mail.isp.example"  # the certificate's name, checked at STARTTLS
            s.starttls(context=context)
            s.login("sam@isp.example", {PASSWORD!r})
            s.sendmail("sam@isp.example", ["sam@isp.example"],
                       b"From: sam@isp.example\\r\\nTo: sam@isp.example\\r\\nSubject: note " + sys.argv[1].encode()
                       + b"\\r\\n\\r\\nhello\\r\\n")
        print("sent")
    else:
        c = imaplib.IMAP4({SERVER!r}, 143, timeout=10)
        c.host = "mail.isp.example"
        c.starttls(ssl_context=context)
        c.login("sam@isp.example", {PASSWORD!r})
        c.select("INBOX", readonly=True)
        _, data = c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        print(" | ".join(d[1].decode().strip() for d in data if isinstance(d, tuple)))
        c.logout()
except Exception as exc:
    print("error:", exc)
"""
        result = subprocess.run(["ip", "netns", "exec", self.home_ns, sys.executable, "-c", script, str(time.time())],
                                capture_output=True, text=True, timeout=60)
        return (result.stdout + result.stderr).strip()

    def heard(self, event: str) -> float:
        """How often the daemon's bus announced ``event`` (a change made by the CLI reaches the
        services through the store's audit log, polled every half second)."""
        return self.ispd.metric_in_netns("ispd_events_published_total", {"event": event}) or 0.0

    def effects(self) -> str:
        shown = self.cli("subscriber", "show", "sam")
        return shown[shown.index("effects"):]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    require_radclient()
    missing = [tool for tool in ("dig", "udhcpc") if shutil.which(tool) is None]
    assert not missing, f"{missing} not installed (tools/setup --test)"
    workdir = tmp_path_factory.mktemp("lifecycle")
    certificates = issue(workdir / "tls", "mail.isp.example")
    hints = workdir / "root.hints"  # nothing listens there: no resolution leaves the lab
    hints.write_text(".  3600000  NS  A.ROOT-SERVERS.TEST.\nA.ROOT-SERVERS.TEST.  3600000  A  127.0.0.2\n")
    with lab() as built:
        server_ns, home_ns = built.namespace("lcsrv"), built.namespace("lchome")
        server_if, home_if = client_link(built, server_ns, f"{SERVER}/24", home_ns, MAC)
        with FakeNas("127.0.0.1", 3799, secret=SECRET.encode(), netns=server_ns) as nas:
            config = base_config(
                workdir,
                dhcp={"enabled": True, "interfaces": [server_if], "lease_seconds": 3600, "subnet": [{
                    "network": "198.18.0.0/24", "interface": server_if, "routers": [SERVER],
                    "dns_servers": [SERVER],
                    "pool": [{"name": "lan", "range": "198.18.0.100 - 198.18.0.150"},
                             {"name": "garden", "range": "198.18.0.200 - 198.18.0.210", "walled_garden": True,
                              "dns_servers": [SERVER], "captive_portal": PORTAL_URI}]}]},
                dns=dns_section(None, 53, listen=[f"{SERVER}:53", "127.0.0.1:53"],
                                allow=["198.18.0.0/24", "127.0.0.0/8"], root_hints=str(hints),
                                local_records=[f"www.isp.example. 300 A {WWW}",
                                               f"portal.isp.example. 300 A {PORTAL}"],
                                walled_garden={"portal_ipv4": PORTAL, "allow": ["portal.isp.example"], "ttl": 30}),
                radius={"enabled": True, "listen_auth": ["127.0.0.1:1812"], "listen_acct": ["127.0.0.1:1813"],
                        "reject_delay_seconds": 0, "coa_timeout_seconds": 0.5, "coa_attempts": 2,
                        "client": [{"name": "bng", "address": "127.0.0.1", "secret": SECRET, "kind": "mikrotik"}]},
                mail={"enabled": True, "domains": ["isp.example"], "hostname": "mail.isp.example",
                      "maildir_root": str(workdir / "mail"), "queue_directory": str(workdir / "queue"),
                      "listen_submission": [f"{SERVER}:587"], "listen_imap": [f"{SERVER}:143"],
                      "certificate": str(certificates.certificate), "private_key": str(certificates.private_key),
                      "authentication_checks": False, "resolver": "127.0.0.1:53",
                      "auth_failure_delay_seconds": 0.1})
            ispd = DHCPIspd(workdir, config, netns=server_ns)
            try:
                ispd.start()
                yield Site(built, workdir, server_ns, home_ns, home_if, ispd, nas, certificates.ca)
                assert "Traceback" not in ispd.log_text()
            finally:
                ispd.kill()


def test_suspend_and_resume_take_effect_in_every_service_with_proof(site: Site) -> None:
    site.cli("plan", "add", "home", "--download-kbps", "50000", "--upload-kbps", "10000",
             "--credential-policy", "cleartext")
    site.cli("subscriber", "add", "sam", "--plan", "home", "--password-stdin", input=f"{PASSWORD}\n")
    site.cli("reservation", "add", "sam", "--mac", MAC)
    site.cli("mailbox", "add", "sam", "sam@isp.example")
    session = f"User-Name = sam, Acct-Session-Id = sam-1, Framed-IP-Address = {SESSION_ADDRESS}"
    eventually(lambda: site.radius("auth", f'User-Name = sam, User-Password = "{PASSWORD}", '
                                           "Message-Authenticator = 0x00") == "Access-Accept", timeout=10)
    assert site.radius("acct", f"{session}, Acct-Status-Type = Start") == "Accounting-Response"
    with Udhcpc(site.lab, site.home_ns, site.home_if, site.workdir) as router:
        bound = router.obtain()
        assert bound is not None and bound.address and bound.address.startswith("198.18.0.1"), router.describe()
        # The session's address on the same link (after DHCP, whose script sets the link up anew).
        site.lab.run(site.home_ns, "ip", "addr", "add", f"{SESSION_ADDRESS}/32", "dev",
                     site.home_if).check_returncode()
        assert site.dig_from(bound.address) == site.dig_from(SESSION_ADDRESS) == {WWW}
        assert site.mail("send") == "sent"
        before = time.time()

        site.cli("subscriber", "suspend", "sam", "--reason", "nonpayment")
        eventually(lambda: site.heard("SubscriberSuspended") >= 1, timeout=5)
        # RADIUS: the BNG is told to end the session.
        [kick] = site.nas.wait_for(1)
        assert kick.code == 40 and kick.authentic and kick.first(44) == b"sam-1"
        # DNS: both of sam's addresses get the walled garden; the portal itself resolves.
        eventually(lambda: site.dig_from(SESSION_ADDRESS) == {PORTAL}, timeout=5)
        assert site.dig_from(bound.address) == {PORTAL}
        assert site.dig_from(SESSION_ADDRESS, "portal.isp.example") == {PORTAL}
        # Mail: no sending, but the billing notices can still be read.
        assert "550" in site.mail("send")
        assert "Subject: note" in site.mail("read")
        effects = site.effects()
        assert "  radius done     session sam-1" not in effects  # acknowledged, not ended yet
        assert "Disconnect acknowledged" in effects and f"  dns    done     {SESSION_ADDRESS}" in effects
        assert f"  dhcp   pending  {bound.address}" in effects  # until the router renews
        # The BNG ends the session as told; the router renews into the walled garden.
        assert site.radius("acct", f"{session}, Acct-Status-Type = Stop") == "Accounting-Response"
        garden = router.renew(timeout=25)
        assert garden is not None and garden.address and garden.address.startswith("198.18.0.2"), router.describe()
        assert bytes.fromhex(garden.env.get("opt114", "")).decode() == PORTAL_URI
        eventually(lambda: site.dig_from(garden.address or "") == {PORTAL}, timeout=5)
        effects = site.effects()
        for line in ("  radius done     session sam-1 on 127.0.0.1: ended",
                     f"  dhcp   done     {garden.address} ({MAC}): pool garden (walled garden)",
                     f"  dns    done     {garden.address}: answered from the walled garden",
                     "  mail   done     sam@isp.example: submission refused (550 5.7.1); IMAP open"):
            assert line in effects, effects
        during = time.time()

        site.cli("subscriber", "resume", "sam")
        eventually(lambda: site.heard("SubscriberResumed") >= 1, timeout=5)
        back = router.renew(timeout=25)
        assert back is not None and back.address == bound.address, router.describe()
        eventually(lambda: site.dig_from(bound.address or "") == {WWW}, timeout=5)
        assert site.mail("send") == "sent"
        assert site.radius("auth", f'User-Name = sam, User-Password = "{PASSWORD}", '
                                   "Message-Authenticator = 0x00") == "Access-Accept"
    # Attribution: who had the garden address, and the session's, while suspended.
    for address in (garden.address, SESSION_ADDRESS):
        moment = str(during if address != SESSION_ADDRESS else before)
        shown = site.cli("who", address, "--at", moment)
        assert "  sam (#1): " in shown, shown
