"""wpa_supplicant's eapol_test as the Wi-Fi station and access point: one EAP authentication
against a RADIUS server, and what it printed, read back.

eapol_test plays both sides of 802.1X: the supplicant (the method, its TLS checks of the
server's certificate against ``ca_cert``) and the authenticator that relays EAP in RADIUS. It
ends with ``SUCCESS`` or ``FAILURE``, and ``MPPE keys OK: 1  mismatch: 0`` when the
MS-MPPE-Recv-Key of the Access-Accept is the first half of the MSK the supplicant derived
itself; ``keys_match`` also checks MS-MPPE-Send-Key against the second half (both printed
decrypted in its debug output).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_MESSAGE = re.compile(r"^RADIUS message: code=\d+ \((\S+)\)")
_ATTRIBUTE = re.compile(r"^   Attribute (\d+) \((\S+)\) length=\d+$")
_VALUE = re.compile(r"^      Value: (.*)$")


@dataclass
class EapolResult:
    success: bool
    mppe_keys_ok: bool
    methods: list[str]  # the EAP methods the server proposed, in order
    accept: dict[str, list[str]] = field(default_factory=dict)  # the Access-Accept's attributes, by name
    output: str = ""
    msk: bytes = b""  # as the supplicant derived it
    send_key: bytes = b""  # as the Access-Accept carried them
    recv_key: bytes = b""

    @property
    def keys_match(self) -> bool:
        """MS-MPPE-Recv-Key and MS-MPPE-Send-Key are the MSK's halves (RFC 5216 §2.3)."""
        return len(self.msk) == 64 and (self.recv_key, self.send_key) == (self.msk[:32], self.msk[32:])


def require_eapol_test() -> None:
    if shutil.which("eapol_test") is None:
        pytest.skip("eapol_test not installed (tools/setup --test installs eapoltest)")


def eapol_test(server: str, secret: str, *, method: str, identity: str, ca_cert: Path, password: str | None = None,
               anonymous_identity: str | None = None, phase2: str | None = None,
               client_cert: Path | None = None, private_key: Path | None = None, timeout: float = 10) -> EapolResult:
    """One authentication; EAP-TLS takes ``client_cert`` and ``private_key`` instead of a password."""
    host, port = server.rsplit(":", 1)
    lines = ["network={", "    key_mgmt=WPA-EAP", f"    eap={method}", f'    identity="{identity}"',
             f'    ca_cert="{ca_cert}"']
    for key, value in (("password", password), ("anonymous_identity", anonymous_identity), ("phase2", phase2),
                       ("client_cert", client_cert), ("private_key", private_key)):
        if value is not None:
            lines.append(f'    {key}="{value}"')
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as conf:
        conf.write("\n".join([*lines, "}", ""]))
        conf.flush()
        result = subprocess.run(["eapol_test", "-c", conf.name, "-a", host, "-p", port, "-s", secret, "-r", "0",
                                 "-t", str(int(timeout))], capture_output=True, text=True, timeout=timeout + 20)
    return parse(result.stdout + result.stderr)


def parse(output: str) -> EapolResult:
    lines = output.splitlines()
    methods = re.findall(r"CTRL-EVENT-EAP-PROPOSED-METHOD vendor=0 method=(\d+)", output)
    accept: dict[str, list[str]] = {}
    in_accept, name = False, None
    for line in lines:
        message = _MESSAGE.match(line)
        if message:
            in_accept, name = message.group(1) == "Access-Accept", None
            if in_accept:
                accept = {}
            continue
        if not in_accept:
            continue
        attribute = _ATTRIBUTE.match(line)
        if attribute:
            name = attribute.group(2)
            continue
        value = _VALUE.match(line)
        if value and name is not None:
            accept.setdefault(name, []).append(value.group(1).strip("'"))
            name = None
        elif not line.startswith(" "):
            in_accept = False
    def hexdump(pattern: str) -> bytes:
        found = re.findall(pattern + r" - hexdump\(len=\d+\): ([0-9a-f ]+)", output)
        return bytes.fromhex(found[-1]) if found else b""

    return EapolResult(msk=hexdump(r"EAP-\w+: Derived key"), send_key=hexdump(r"MS-MPPE-Send-Key \(sign\)"),
                       recv_key=hexdump(r"MS-MPPE-Recv-Key \(crypt\)"),
                       success=bool(lines) and lines[-1].strip() == "SUCCESS",
                       mppe_keys_ok="MPPE keys OK: 1  mismatch: 0" in output,
                       methods=[{"4": "MD5", "13": "TLS", "21": "TTLS", "25": "PEAP"}.get(m, m) for m in methods],
                       accept=accept, output=output)
