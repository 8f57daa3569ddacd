"""The operator assets in ``systemd/``: the unit and the sysusers.d file.

systemd is installed here but is not PID 1 (a container), so nothing is started by systemd
itself. Instead:

- ``systemd-analyze verify --root=DIR`` and ``systemd-analyze security --offline=true --root=DIR``
  read the shipped unit, unmodified, from a throwaway root: the unit under
  ``etc/systemd/system``, the distribution's units (``sysinit.target`` and the rest of the default
  dependencies) copied beside it, and stub executables at the unit's command paths, because verify
  checks that ``/usr/bin/ispd`` and ``/bin/kill`` exist and are executable *inside the root*.
  Using a root also keeps drop-ins on the test machine from leaking into the analysis.
- ``systemd-sysusers --root=DIR`` creates the account in a throwaway ``etc/passwd``.
- ``MemoryDenyWriteExecute=yes`` is checked by running ispd under the seccomp rule systemd 252
  installs for it (``seccomp_memory_deny_write_execute()`` in src/shared/seccomp-util.c), so a
  new dependency that needs writable+executable memory fails here, not on a production host.

A missing tool is a failure with a message, never a skip: the test command installs systemd.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from ispd.config import DaemonConfig
from tests.lab.process import ISPD, IspdProcess, base_config, eventually

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "ispd.service"
SYSUSERS = REPO / "systemd" / "ispd.sysusers"

# `systemd-analyze security --offline=true` on systemd 252 measured 1.6 for the shipped unit.
# A change that loosens the sandbox by more than a little fails here; tighten the threshold
# when the unit gets stricter.
EXPOSURE_THRESHOLD = 1.9

EXPECTED_COMMANDS = {
    "ExecStartPre": ["/usr/bin/ispd check-config -c /etc/ispd/ispd.toml"],
    "ExecStart": ["/usr/bin/ispd run -c /etc/ispd/ispd.toml"],
    "ExecReload": ["/bin/kill -HUP $MAINPID"],
}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; these tests need systemd (apt-get install systemd)", pytrace=False)
    return path


def _run(argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


def _service_entries(text: str) -> list[tuple[str, str]]:
    """(key, value) for each assignment in [Service], in order (keys may repeat)."""
    entries, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            entries.append((key.strip(), value.strip()))
    return entries


def _values(key: str) -> list[str]:
    return [value for k, value in _service_entries(UNIT.read_text()) if k == key]


def _seconds(span: str) -> float:
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span):
        total += float(number) * units[unit or "s"]
    return total


def _distribution_unit_dir() -> Path:
    for candidate in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (candidate / "sysinit.target").exists():
            return candidate
    pytest.fail("no systemd unit directory with sysinit.target; is systemd installed?", pytrace=False)


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copyfile(UNIT, root / "etc/systemd/system/ispd.service")
    shutil.copytree(_distribution_unit_dir(), root / "usr/lib/systemd/system", symlinks=True)
    for key in EXPECTED_COMMANDS:
        for command in _values(key):
            binary = command.split()[0].lstrip("-@:+!")
            stub = root / binary.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
    return root


def _about_unit(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "ispd.service" in line]


# --- the unit --------------------------------------------------------------------------------


def test_unit_commands_are_the_expected_ones() -> None:
    for key, expected in EXPECTED_COMMANDS.items():
        assert _values(key) == expected, f"{UNIT.name}: {key}= changed"
    assert _values("Type") == ["notify"]
    assert _values("NotifyAccess") == ["main"]


def test_stop_timeout_leaves_room_for_the_shutdown_grace() -> None:
    grace = DaemonConfig().shutdown_grace_seconds
    (timeout,) = _values("TimeoutStopSec")
    assert _seconds(timeout) > grace, f"TimeoutStopSec={timeout} must exceed shutdown_grace_seconds={grace}"


def test_unit_verifies_without_warnings(unit_root: Path) -> None:
    result = _run([_tool("systemd-analyze"), "verify", f"--root={unit_root}", "ispd.service"])
    assert result.returncode == 0, result.stderr
    # Verify exits 0 on an unknown key or a bad value; only the messages tell.
    assert _about_unit(result.stderr) == [], result.stderr


def test_security_exposure_is_at_most_the_threshold(unit_root: Path) -> None:
    result = _run([_tool("systemd-analyze"), "security", "--offline=true", f"--root={unit_root}", "ispd.service"])
    assert result.returncode == 0, result.stderr
    assert _about_unit(result.stderr) == [], result.stderr
    match = re.search(r"Overall exposure level for ispd\.service: (\d+(?:\.\d+)?)", result.stdout)
    assert match is not None, result.stdout
    exposure = float(match.group(1))
    assert exposure <= EXPOSURE_THRESHOLD, f"exposure {exposure} > {EXPOSURE_THRESHOLD}:\n{result.stdout}"


def _documented_drop_in() -> str:
    """The drop-in the unit's header comment shows for hosts that do not need raw sockets."""
    lines = [line[len("#   ") :] for line in UNIT.read_text().splitlines() if line.startswith("#   ")]
    assert lines and lines[0] == "[Service]", "the drop-in example in the unit's header comment is gone"
    return "\n".join(lines) + "\n"


def test_documented_drop_in_removes_raw_sockets(unit_root: Path) -> None:
    drop_in_dir = unit_root / "etc/systemd/system/ispd.service.d"
    drop_in_dir.mkdir()
    (drop_in_dir / "no-raw-sockets.conf").write_text(_documented_drop_in())
    analyze = _tool("systemd-analyze")

    verify = _run([analyze, "verify", f"--root={unit_root}", "ispd.service"])
    assert verify.returncode == 0, verify.stderr
    assert _about_unit(verify.stderr) == [], verify.stderr

    security = _run([analyze, "security", "--offline=true", f"--root={unit_root}", "ispd.service"])
    assert security.returncode == 0, security.stderr
    packet = [line for line in security.stdout.splitlines() if "RestrictAddressFamilies=~AF_PACKET" in line]
    assert packet and packet[0].startswith("✓"), security.stdout


# --- the sysusers.d file ---------------------------------------------------------------------


def test_sysusers_creates_a_locked_system_account(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "usr/lib/sysusers.d").mkdir(parents=True)
    shutil.copyfile(SYSUSERS, root / "usr/lib/sysusers.d/ispd.conf")

    result = _run([_tool("systemd-sysusers"), f"--root={root}"])
    assert result.returncode == 0, result.stderr
    assert "ispd.conf" not in result.stderr, result.stderr  # a parse warning names the file

    users = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (root / "etc/group").read_text().splitlines()}
    shadow = {line.split(":")[0]: line.split(":") for line in (root / "etc/shadow").read_text().splitlines()}
    _, _, uid, gid, _, home, shell = users["ispd"]
    assert 0 < int(uid) < 1000, "not a system user"
    assert groups["ispd"][2] == gid
    assert home == "/var/lib/ispd"
    assert shell.endswith("/nologin")
    assert shadow["ispd"][1].startswith("!"), "the password must be locked"


# --- MemoryDenyWriteExecute=yes ----------------------------------------------------------------

# systemd 252 answers EPERM to mmap(PROT_WRITE|PROT_EXEC), to mprotect() and pkey_mprotect() with
# PROT_EXEC (any: making existing memory executable is refused too) and to shmat(SHM_EXEC).
# Per architecture: (AUDIT_ARCH_*, mmap, mprotect, pkey_mprotect, shmat).
_MDWE_SYSCALLS = {
    "x86_64": (0xC000003E, 9, 10, 329, 30),
    "aarch64": (0xC00000B7, 222, 226, 288, 196),
}
_PROT_WRITE, _PROT_EXEC, _SHM_EXEC = 0x2, 0x4, 0o100000


def _mdwe_filter() -> bytes:
    machine = platform.machine()
    if machine not in _MDWE_SYSCALLS:
        pytest.fail(f"no syscall numbers for {machine}; add them to _MDWE_SYSCALLS", pytrace=False)
    arch, mmap_nr, mprotect_nr, pkey_mprotect_nr, shmat_nr = _MDWE_SYSCALLS[machine]
    ld, jeq, jset, ret, and_k = 0x20, 0x15, 0x45, 0x06, 0x54  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, ...
    allow, eperm = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    nr_offset, arch_offset, arg2_offset = 0, 4, 16 + 2 * 8  # struct seccomp_data; args[2], low word
    labels = {"MMAP": 7, "PROT": 10, "SHM": 12, "ALLOW": 14, "EPERM": 15}
    program: list[tuple[int, int | str, int | str, int]] = [
        (ld, 0, 0, arch_offset),
        (jeq, 2, "ALLOW", arch),
        (ld, 0, 0, nr_offset),
        (jeq, "MMAP", 4, mmap_nr),
        (jeq, "PROT", 5, mprotect_nr),
        (jeq, "PROT", 6, pkey_mprotect_nr),
        (jeq, "SHM", "ALLOW", shmat_nr),
        (ld, 0, 0, arg2_offset),  # MMAP
        (and_k, 0, 0, _PROT_WRITE | _PROT_EXEC),
        (jeq, "EPERM", "ALLOW", _PROT_WRITE | _PROT_EXEC),
        (ld, 0, 0, arg2_offset),  # PROT
        (jset, "EPERM", "ALLOW", _PROT_EXEC),
        (ld, 0, 0, arg2_offset),  # SHM
        (jset, "EPERM", "ALLOW", _SHM_EXEC),
        (ret, 0, 0, allow),
        (ret, 0, 0, eperm),
    ]

    def offset(index: int, target: int | str) -> int:
        # Jump offsets are relative to the next instruction; plain ints in the table are absolute
        # targets for the conditional jumps and 0 for the rest.
        if isinstance(target, str):
            target = labels[target]
        elif target == 0:
            return 0
        return target - (index + 1)

    return b"".join(
        struct.pack("HBBI", code, offset(i, jt), offset(i, jf), k) for i, (code, jt, jf, k) in enumerate(program)
    )


# Installs the filter given (hex) as argv[1], then execs argv[2:]. A separate interpreter rather
# than preexec_fn, which is unsafe once the test process has threads.
_MDWE_LAUNCHER = """
import ctypes, os, sys

class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

program = bytes.fromhex(sys.argv[1])
buffer = ctypes.create_string_buffer(program)
fprog = SockFprog(len(program) // 8, ctypes.addressof(buffer))
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
zero = ctypes.c_ulong(0)
if libc.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), zero, zero, zero) != 0:
    raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
if libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog), zero, zero) != 0:
    raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
os.execv(sys.argv[2], sys.argv[2:])
"""


def _mdwe_wrapper() -> list[str]:
    """A command prefix that runs the rest of its arguments under the MemoryDenyWriteExecute rule."""
    return [sys.executable, "-c", _MDWE_LAUNCHER, _mdwe_filter().hex()]


def _run_mdwe(argv: Sequence[str], timeout: float = 60) -> tuple[int, str, str]:
    result = _run([*_mdwe_wrapper(), *argv], timeout)
    return result.returncode, result.stdout, result.stderr


def test_memory_deny_write_execute_is_emulated() -> None:
    # Guards the emulation itself: if the filter did nothing, the tests below would prove nothing.
    probe = (
        "import mmap\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "except PermissionError:\n"
        "    print('denied')\n"
        "else:\n"
        "    print('allowed')\n"
    )
    returncode, stdout, stderr = _run_mdwe([sys.executable, "-c", probe])
    assert (returncode, stdout.strip()) == (0, "denied"), stderr


def test_every_module_imports_under_memory_deny_write_execute() -> None:
    # C extensions are loaded here; one that needs an executable stack or W+X pages fails.
    sweep = (
        "import importlib, pkgutil, ispd, uvloop\n"
        "for module in pkgutil.walk_packages(ispd.__path__, 'ispd.'):\n"
        "    if not module.name.endswith('__main__'):\n"
        "        importlib.import_module(module.name)\n"
        "from Crypto.Hash import MD4\n"
        "assert MD4.new(b'abc').hexdigest() == 'a448017aaf21d8525fc10ae87aa6729d'\n"
        "print('ok')\n"
    )
    returncode, stdout, stderr = _run_mdwe([sys.executable, "-c", sweep])
    assert (returncode, stdout.strip()) == (0, "ok"), stderr


def test_daemon_runs_under_memory_deny_write_execute(tmp_path: Path) -> None:
    """The daemon, and a RADIUS worker it starts (the filter is inherited across fork and exec),
    serving: an MS-CHAPv1 login runs pycryptodome's DES and MD4 there, a PEAP login pyOpenSSL's
    TLS server (cffi)."""
    from tests.lab.certs import issue
    from tests.lab.eapol import eapol_test, require_eapol_test
    from tests.lab.ports import free_udp_port
    from tests.lab.radclient import radtest, require_radclient

    require_radclient()
    require_eapol_test()
    auth = f"127.0.0.1:{free_udp_port()}"
    certificates = issue(tmp_path / "tls", "radius.test")
    radius = {"enabled": True, "process": "own", "listen_auth": [auth], "listen_acct": [f"127.0.0.1:{free_udp_port()}"],
              "client": [{"name": "lab", "address": "127.0.0.1", "secret": "testing123"}],
              "eap": {"certificate": str(certificates.certificate), "private_key": str(certificates.private_key)}}
    with IspdProcess(tmp_path, base_config(tmp_path, radius=radius), wrapper=_mdwe_wrapper()) as ispd:
        ispd.start()
        assert ispd.http_get("/healthz")[0] == 200
        ispd.cli("subscriber", "add", "alice", "--credential-policy", "nt-hash", "--password-stdin", input="pw\n")
        eventually(lambda: radtest("alice", "pw", auth, "testing123", "mschap").code == "Access-Accept", timeout=10)
        peap = eapol_test(auth, "testing123", method="PEAP", identity="alice", password="pw", ca_cert=certificates.ca,
                          phase2="auth=MSCHAPV2")
        assert peap.success and peap.mppe_keys_ok, peap.output[-3000:]
        assert ispd.terminate() == 0, ispd.log_text()


# --- the backup timer ------------------------------------------------------------------------

BACKUP_UNIT = REPO / "systemd" / "ispd-backup.service"
BACKUP_TIMER = REPO / "systemd" / "ispd-backup.timer"


def _backup_values(key: str) -> list[str]:
    return [value for k, value in _service_entries(BACKUP_UNIT.read_text()) if k == key]


def test_backup_units_verify_without_warnings(unit_root: Path) -> None:
    for unit in (BACKUP_UNIT, BACKUP_TIMER):
        shutil.copyfile(unit, unit_root / "etc/systemd/system" / unit.name)
    for binary in ("bin/sh", "usr/bin/find"):
        stub = unit_root / binary
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    result = _run([_tool("systemd-analyze"), "verify", f"--root={unit_root}", "ispd-backup.service",
                   "ispd-backup.timer"])
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "ispd-backup" in line] == [], result.stderr


def test_the_backup_units_commands_make_a_backup_and_keep_two_weeks(tmp_path: Path) -> None:
    """The unit's own command lines, with the paths moved into a temp dir and systemd's %%
    unescaped as systemd does: a backup named by the time appears, and only those older than
    13 days go."""
    daemon = IspdProcess(tmp_path, base_config(tmp_path))
    daemon.write_config()
    daemon.cli("subscriber", "add", "alice")
    backups = tmp_path / "backups"
    backups.mkdir()
    old = backups / "ispd-20000101T000000Z.db"
    old.write_bytes(b"")
    os.utime(old, (946684800, 946684800))

    def local(command: str) -> str:
        return (command.replace("%%", "%").replace("/usr/bin/ispd", ISPD)
                .replace("/var/lib/ispd-backups", str(backups)).replace("/etc/ispd/ispd.toml", str(daemon.config_path)))

    (start,) = _backup_values("ExecStart")
    (post,) = _backup_values("ExecStartPost")
    made = _run(["/bin/sh", "-c", local(start).removeprefix("/bin/sh -c ").strip("'")])
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("backed up "), made.stdout
    kept = [p.name for p in backups.iterdir() if p != old]
    assert len(kept) == 1 and re.fullmatch(r"ispd-\d{8}T\d{6}Z\.db", kept[0]), kept
    pruned = _run(local(post).split())
    assert pruned.returncode == 0, pruned.stderr
    assert [p.name for p in backups.iterdir()] == kept


def test_the_backup_unit_sweeps_what_a_killed_backup_left(tmp_path: Path) -> None:
    """A backup cut short (the host shut down, `systemctl stop`, the OOM killer: SIGTERM and
    SIGKILL run no cleanup) leaves its store-sized .partial file, under a name no later run
    reuses (the time and the PID are in it), on the store's own disk: day after day, until that
    disk is full and the daemon can record no lease. Only one run of the unit is ever under way,
    so what one finds at its start is stale."""
    daemon = IspdProcess(tmp_path, base_config(tmp_path))
    daemon.write_config()
    daemon.cli("subscriber", "add", "alice")
    backups = tmp_path / "backups"
    backups.mkdir()
    stale = [backups / ".ispd-20000101T000000Z.db.4242.partial", backups / ".ispd-20000101T000000Z.db.4242.partial-journal"]
    for path in stale:
        path.write_bytes(b"\0" * 4096)
    unrelated = backups / ".keep"
    unrelated.write_bytes(b"")

    def local(command: str) -> str:
        return (command.replace("%%", "%").replace("/usr/bin/ispd", ISPD)
                .replace("/var/lib/ispd-backups", str(backups)).replace("/etc/ispd/ispd.toml", str(daemon.config_path)))

    for pre in _backup_values("ExecStartPre"):
        assert _run(local(pre).split()).returncode == 0
    (start,) = _backup_values("ExecStart")
    assert _run(["/bin/sh", "-c", local(start).removeprefix("/bin/sh -c ").strip("'")]).returncode == 0
    left = sorted(p.name for p in backups.iterdir())
    assert len(left) == 2 and left[0] == ".keep" and re.fullmatch(r"ispd-\d{8}T\d{6}Z\.db", left[1]), left
