"""RADIUS proxying: PAP through ispd's [[radius.realm]] to a home server, against the home server asked directly.

The home server is FreeRADIUS 3.2 (Debian's package, a private config: its users file holds
user0000@home.example .. user0999@home.example, one password), pinned to the last core with
the load generator (bench/radload.py); ispd, on the other cores, proxies the realm home.example
to it. The same load goes to FreeRADIUS directly and through ispd: saturation (--window
requests in flight) and a fixed 2,000 requests/s, whose latency percentiles are what a NAS
sees. What proxying costs is the difference; FreeRADIUS is not measured as a proxy here.
Needs freeradius (tools/setup --bench). Every process started is stopped
at exit.

    .venv/bin/python bench/radius_proxy.py [--duration 5] [--window 256]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import split_cpus
from bench.radload import DEFAULT_PASSWORD, Generator, Report
from tests.lab.freeradius import FreeRADIUS
from tests.lab.ports import free_tcp_port, free_udp_port

ISPD = str(Path(sys.executable).parent / "ispd")
HOME_SECRET, NAS_SECRET = "home-secret", "nas-secret"
USERS = [(f"user{i:04d}@home.example", DEFAULT_PASSWORD) for i in range(1000)]

ISPD_CONFIG = """\
[store]
path = "{root}/ispd.db"
[daemon]
control_socket = "{root}/ispd.sock"
[metrics]
listen = "127.0.0.1:{metrics}"
[radius]
enabled = true
process = "main"
listen_auth = ["127.0.0.1:{auth}"]
listen_acct = ["127.0.0.1:{acct}"]
reject_delay_seconds = 0
[[radius.client]]
name = "nas"
address = "127.0.0.0/8"
secret = "{nas_secret}"
[[radius.realm]]
name = "home.example"
auth_servers = ["127.0.0.1:{home}"]
secret = "{home_secret}"
require_message_authenticator = false  # (FreeRADIUS 3.2 signs Access-Accepts without EAP only when asked)
"""


def run(server: tuple[str, int], secret: str, mode: str, *, duration: float = 5.0, window: int = 256,
        rate: float = 2000.0, burst: int = 1) -> Report:
    with Generator(server, secret, "pap", USERS, sockets=8, timeout=3.0) as generator:
        return generator.run(mode, duration=duration, window=window, rate=rate, burst=burst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (default: %(default)s)")
    parser.add_argument("--window", type=int, default=256, help="requests in flight at saturation")
    args = parser.parse_args()
    cpus, pinning = split_cpus(False, "ispd", "FreeRADIUS and the load generator")
    root = Path(tempfile.mkdtemp(prefix="ispd-bench-proxy-"))
    (root / "freeradius").mkdir()
    home = FreeRADIUS(root / "freeradius", users=USERS, secret=HOME_SECRET, cpus=cpus[1])
    ispd: subprocess.Popen[bytes] | None = None
    try:
        home.start()
        auth = free_udp_port()
        (root / "ispd.toml").write_text(ISPD_CONFIG.format(
            root=root, metrics=free_tcp_port(), auth=auth, acct=free_udp_port(), nas_secret=NAS_SECRET,
            home=home.auth_port, home_secret=HOME_SECRET))
        command = [ISPD, "run", "-c", str(root / "ispd.toml")]
        if cpus[0] is not None:
            command = ["taskset", "-c", cpus[0], *command]
        with (root / "ispd.log").open("wb") as log:
            ispd = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if cpus[1] is not None:
            os.sched_setaffinity(0, {int(c) for c in cpus[1].split(",")})
        deadline = time.monotonic() + 20
        while run(("127.0.0.1", auth), NAS_SECRET, "burst", burst=1).answered != 1:
            if time.monotonic() > deadline or ispd.poll() is not None:
                sys.exit(f"ispd did not answer:\n{(root / 'ispd.log').read_text()[-3000:]}")
            time.sleep(0.2)
        print(f"RADIUS proxying, PAP: {pinning}")
        print(f"{'':28}{'requests/s':>12}{'lost':>7}   at 2,000/s: p50 / p99 / max ms")
        for label, server, secret in (("FreeRADIUS, asked directly", ("127.0.0.1", home.auth_port), HOME_SECRET),
                                      ("through ispd's realm proxy", ("127.0.0.1", auth), NAS_SECRET)):
            saturated = run(server, secret, "saturate", duration=args.duration, window=args.window)
            paced = run(server, secret, "pace", duration=args.duration, rate=2000, window=args.window)
            print(f"{label:28}{saturated.rps:>12,.0f}{saturated.lost + paced.lost:>7}   "
                  f"{paced.p50_ms:.2f} / {paced.p99_ms:.2f} / {paced.max_ms:.2f}")
    finally:
        if ispd is not None and ispd.poll() is None:
            os.killpg(ispd.pid, signal.SIGTERM)
            ispd.wait(15)
        home.stop()


if __name__ == "__main__":
    main()
