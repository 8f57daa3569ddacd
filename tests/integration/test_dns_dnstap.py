"""dnstap from a real ispd to a real collector: fstrm_capture (Debian's fstrm-bin) writes what it
receives to a file, dnstap-ldns reads the file back; dig asks over UDP and TCP, the resolver
iterates through the lab's hierarchy."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ispd.dns.dnstap import ControlType, control_frame
from tests.lab.dnshier import DNSHierarchy, free_port
from tests.lab.dnsispd import DNSIspd
from tests.lab.process import eventually

pytestmark = pytest.mark.skipif(not (shutil.which("fstrm_capture") and shutil.which("dnstap-ldns")),
                                reason="fstrm-bin and dnstap-ldns are not installed (tools/setup --test)")


class Capture:
    """fstrm_capture on a Unix socket or a TCP port, writing to ``output``."""

    def __init__(self, output: Path, *, socket_path: Path | None = None, port: int | None = None) -> None:
        self.output = output
        where = ["-u", str(socket_path)] if socket_path is not None else ["-a", "127.0.0.1", "-p", str(port)]
        self.proc = subprocess.Popen(["fstrm_capture", "-t", "protobuf:dnstap.Dnstap", *where, "-w", str(output)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if socket_path is not None:
            try:
                eventually(socket_path.exists, timeout=5)
            except BaseException:  # (not handed to the fixture yet: it would be left running)
                self.kill()
                raise

    def stop(self) -> list[str]:
        """Ends the capture (its file complete) and gives dnstap-ldns's quiet lines of it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(10)
        result = subprocess.run(["dnstap-ldns", "-q", "-r", str(self.output)], capture_output=True, text=True,
                                timeout=30, check=True)
        return result.stdout.splitlines()

    def yaml(self) -> str:
        return subprocess.run(["dnstap-ldns", "-y", "-r", str(self.output)], capture_output=True, text=True,
                              timeout=30, check=True).stdout

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def captures() -> Iterator[list[Capture]]:
    started: list[Capture] = []
    yield started
    for capture in started:
        capture.kill()


def test_client_and_resolver_messages_reach_the_collector(dns_hierarchy: DNSHierarchy, tmp_path: Path,
                                                          captures: list[Capture]) -> None:
    socket_path = tmp_path / "dnstap.sock"
    captures.append(capture := Capture(tmp_path / "first.fstrm", socket_path=socket_path))
    with DNSIspd(tmp_path / "ispd", dns_hierarchy, dnstap={
            "socket_path": str(socket_path), "identity": "resolver-7", "resolver_queries": True,
            "resolver_responses": True}) as ispd:
        ispd.start()
        eventually(lambda: ispd.metric("ispd_dns_dnstap_connected") == 1, timeout=10)
        assert ispd.dig("www.example-a.test").status == "NOERROR"  # a miss: iterated from the root
        assert ispd.dig("www.example-a.test", "A", "+tcp").status == "NOERROR"  # a hit, over TCP
        eventually(lambda: ispd.metric("ispd_dns_dnstap_sent_total") >= 6, timeout=5)
        ispd.assert_healthy()
        assert ispd.terminate() == 0  # STOP, answered by FINISH: the capture is complete
        assert "Traceback" not in ispd.log_text()
    lines = capture.stop()
    kinds = [(line.split()[2], line.split()[4]) for line in lines]
    assert kinds[0] == ("CQ", "UDP") and ("CR", "UDP") in kinds
    assert ("CQ", "TCP") in kinds and kinds[-1] == ("CR", "TCP")
    client = [line for line in lines if " CQ " in line or " CR " in line]
    assert all('"www.example-a.test." IN A' in line and " 127.0.0.1 " in line for line in client), client
    upstream = [line for line in lines if " RQ " in line or " RR " in line]
    assert upstream and any('"www.example-a.test." IN A' in line for line in upstream), lines
    root = dns_hierarchy.root_hints_path.read_text()
    assert any(line.split()[3] in root for line in upstream)  # asked the lab's servers, by address
    text = capture.yaml()
    assert 'identity: "resolver-7"' in text and "version: \"ispd " in text and "query_zone: " in text


def test_a_collector_late_gone_and_back_and_a_reload_to_another(dns_hierarchy: DNSHierarchy, tmp_path: Path,
                                                              captures: list[Capture]) -> None:
    socket_path = tmp_path / "dnstap.sock"
    with DNSIspd(tmp_path / "ispd", dns_hierarchy, dnstap={"socket_path": str(socket_path),
                                                           "send_identity": False}) as ispd:
        ispd.start()
        assert ispd.dig("early.bench.test").status == "NOERROR"  # no collector yet: held
        eventually(lambda: ispd.log_events("dns.dnstap.unreachable"), timeout=5)
        captures.append(first := Capture(tmp_path / "first.fstrm", socket_path=socket_path))
        eventually(lambda: ispd.metric("ispd_dns_dnstap_connected") == 1, timeout=10)  # retried at 1 s, 2 s...
        assert ispd.dig("second.bench.test").status == "NOERROR"
        eventually(lambda: ispd.metric("ispd_dns_dnstap_sent_total") == 4, timeout=5)
        first_lines = first.stop()  # the collector goes away
        eventually(lambda: ispd.log_events("dns.dnstap.disconnected"), timeout=5)
        socket_path.unlink(missing_ok=True)
        assert ispd.dig("meanwhile.bench.test").status == "NOERROR"
        captures.append(second := Capture(tmp_path / "second.fstrm", socket_path=socket_path))
        eventually(lambda: ispd.metric("ispd_dns_dnstap_sent_total") == 6, timeout=15)
        # SIGHUP onto a TCP collector: the Unix one gets STOP, the TCP one what follows.
        port = free_port("127.0.0.1")
        captures.append(third := Capture(tmp_path / "third.fstrm", port=port))
        ispd.config["dns"]["dnstap"] = {"address": f"127.0.0.1:{port}", "client_queries": False}
        ispd.write_config()
        ispd.reload()
        eventually(lambda: ispd.metric("ispd_dns_dnstap_connected") == 1, timeout=10)
        assert ispd.dig("after.bench.test").status == "NOERROR"
        eventually(lambda: ispd.metric("ispd_dns_dnstap_sent_total") == 7, timeout=5)
        assert ispd.metric("ispd_dns_dnstap_dropped_total") == 0
        ispd.assert_healthy()
    names = [[line.split()[6] for line in lines] for lines in (first_lines, second.stop(), third.stop())]
    assert names == [['"early.bench.test."'] * 2 + ['"second.bench.test."'] * 2,
                     ['"meanwhile.bench.test."'] * 2, ['"after.bench.test."']]
    assert "identity" not in first.yaml()


class SlowFinisher(threading.Thread):
    """A collector that takes its time to answer STOP with FINISH (a busy one, flushing its
    file): meanwhile ispd must go on tapping what it answers, to the next collector or to this
    one until its listeners are closed."""

    def __init__(self, path: Path, finish_after: float = 1.5) -> None:
        super().__init__(daemon=True)
        self.finish_after = finish_after
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen()
        self.frames: list[bytes] = []

    def run(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.server.accept()
                threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        stream = connection.makefile("rb")

        def frame() -> tuple[bool, bytes]:  # (control, body)
            (length,) = struct.unpack("!I", stream.read(4))
            if length:
                return False, stream.read(length)
            (length,) = struct.unpack("!I", stream.read(4))
            return True, stream.read(length)

        with connection, contextlib.suppress(OSError, struct.error):
            frame()  # READY
            connection.sendall(control_frame(ControlType.ACCEPT))
            frame()  # START
            while True:
                control, body = frame()
                if control:  # STOP
                    time.sleep(self.finish_after)
                    connection.sendall(control_frame(ControlType.FINISH, None))
                    return
                self.frames.append(body)

    def answered_names(self) -> set[bytes]:
        """The questions of the CLIENT_RESPONSE messages, in wire form."""
        import dnstap_pb

        names = set()
        for body in list(self.frames):
            message = dnstap_pb.Dnstap()
            message.ParseFromString(body)
            if message.message.type == dnstap_pb.Message.CLIENT_RESPONSE:
                reply = message.message.response_message
                names.add(reply[12:reply.index(b"\0", 12) + 1])
        return names


class Asker(threading.Thread):
    """Asks ispd one question after another over UDP, noting those answered."""

    def __init__(self, port: int, prefix: str) -> None:
        super().__init__(daemon=True)
        self.port, self.prefix = port, prefix
        self.answered: list[bytes] = []
        self.done = threading.Event()

    def run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.3)
            n = 0
            while not self.done.is_set():
                n += 1
                label = f"{self.prefix}{n}".encode()
                name = bytes((len(label),)) + label + b"\x05bench\x04test\x00"
                sock.sendto(struct.pack("!HHHHHH", n, 0x0100, 1, 0, 0, 0) + name + b"\0\x01\0\x01", ("127.0.0.1",
                                                                                                    self.port))
                with contextlib.suppress(OSError):
                    if sock.recv(4096)[:2] == struct.pack("!H", n):
                        self.answered.append(name)

    def stop(self) -> list[bytes]:
        self.done.set()
        self.join(5)
        return self.answered


def test_nothing_answered_goes_untapped_while_a_collector_takes_its_time_to_finish(
        dns_hierarchy: DNSHierarchy, tmp_path: Path) -> None:
    """A reload to another collector, and the stop: the old connection's STOP and FINISH take
    1.5 s, and every query answered meanwhile is in one collector or the other."""
    first, second = SlowFinisher(tmp_path / "first.sock"), SlowFinisher(tmp_path / "second.sock")
    first.start()
    second.start()
    try:
        with DNSIspd(tmp_path / "ispd", dns_hierarchy, dnstap={"socket_path": str(tmp_path / "first.sock")}) as ispd:
            ispd.start()
            eventually(lambda: ispd.metric("ispd_dns_dnstap_connected") == 1, timeout=10)
            ispd.config["dns"]["dnstap"] = {"socket_path": str(tmp_path / "second.sock")}
            ispd.write_config()
            asker = Asker(ispd.port, "reload")
            asker.start()
            ispd.reload()
            during_reload = asker.stop()
            asker = Asker(ispd.port, "stop")
            asker.start()
            assert ispd.terminate() == 0
            during_stop = asker.stop()
        assert during_reload, "nothing answered during the reload"
        tapped = first.answered_names() | second.answered_names()
        assert [name for name in during_reload + during_stop if name not in tapped] == []
    finally:
        first.server.close()
        second.server.close()
