from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel

from ispd.config import Config, ConfigError, load_config
from ispd.configtypes import SocketAddress, parse_socket_address
from ispd.radius.config import RadiusConfig
from tests.lab.process import ISPD

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ispd.toml"
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


@pytest.mark.parametrize("name", ["ispd.toml", "dev.toml", "dns-lab.toml"])
def test_shipped_configs_are_valid(name: str) -> None:
    config = load_config(ROOT / "configs" / name)
    assert isinstance(config, Config)


def test_the_dns_lab_config_runs_beside_the_dev_config() -> None:
    """README's "Trying DNS" starts ispd on configs/dns-lab.toml (its own ports, control socket
    and store) beside tools/dev-run's configs/dev.toml: both put their admin socket at
    var/admin.sock ("auto": beside the control socket), and the second refused to start."""
    dev, lab = (load_config(ROOT / "configs" / name) for name in ("dev.toml", "dns-lab.toml"))

    def local(config: Config) -> set[object]:
        return {config.daemon.control_socket, config.admin.socket_path(config.daemon.control_socket),
                config.store.path, str(config.metrics.listen),
                *(str(a) for a in [*config.dns.listen, *config.dns.dot.listen, *config.dns.doh.listen,
                                   *config.dns.doq.listen])}

    assert local(dev) & local(lab) == set()


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _table_model(path: str) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for key in path.split(".") if path else []:
        fields = {field.alias or name: field for name, field in model.model_fields.items()}
        if key not in fields or not _models_in(fields[key].annotation):
            return None
        model = _models_in(fields[key].annotation)[0]
    return model


def test_every_key_of_the_annotated_config_belongs_to_the_table_it_sits_in() -> None:
    """configs/ispd.toml is read and edited by uncommenting: a commented example (`# key = ...`,
    `# [[table]]`) must be valid where it stands once uncommented, and must not capture the keys
    after it. Each key line, commented or not, is checked against the table it would fall in were
    every commented table header above it uncommented."""
    table, misplaced = "", []
    for number, line in enumerate((ROOT / "configs" / "ispd.toml").read_text().splitlines(), 1):
        header = re.fullmatch(r"(?:#\s*)?\[\[?([a-z0-9_.]+)\]\]?\s*(?:#.*)?", line)
        if header:
            table = header.group(1)
            assert _table_model(table) is not None, f"line {number}: [{table}] is no table of the config"
            continue
        key = re.match(r"(?:#\s?)?([a-z][a-z0-9_]*) = ", line)
        if key:
            model = _table_model(table)
            known = {field.alias or name for name, field in model.model_fields.items()} if model else set()
            if key.group(1) not in known:
                misplaced.append(f"line {number}: {key.group(1)} would fall in [{table}]")
    assert misplaced == []


def test_the_annotated_config_names_every_key_of_its_tables() -> None:
    """configs/ispd.toml is the list of what can be set: each key of a section (or of a table
    in one, [dns.resolver]) is there, set to its default or commented out, in its own table.
    (Arrays of tables are shown by examples; [dns.doh] and [dns.doq] share [dns.dot]'s limits.)"""
    keys: dict[str, set[str]] = {}
    table = ""
    for line in (ROOT / "configs" / "ispd.toml").read_text().splitlines():
        header = re.fullmatch(r"(?:#\s*)?\[\[?([a-z0-9_.]+)\]\]?\s*(?:#.*)?", line)
        if header:
            table = header.group(1)
        elif key := re.match(r"(?:#\s?)?([a-z][a-z0-9_]*) = ", line):
            keys.setdefault(table, set()).add(key.group(1))
    shared = {"dns.doh": "dns.dot", "dns.doq": "dns.dot"}
    missing = []

    def walk(model: type[BaseModel], path: str) -> None:
        for name, field in model.model_fields.items():
            key = field.alias or name
            inner = _models_in(field.annotation)
            if inner and get_origin(field.annotation) is not list:
                walk(inner[0], f"{path}.{key}" if path else key)
            elif not inner and key not in keys.get(path, set()) | keys.get(shared.get(path, ""), set()):
                missing.append(f"[{path}] {key}")

    walk(Config, "")
    assert missing == []


def test_empty_file_gives_safe_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.metrics.listen == SocketAddress("127.0.0.1", 9520)
    assert config.store.path == Path("/var/lib/ispd/ispd.db")
    assert config.log.level == "info"


def test_relative_store_path_is_taken_from_the_config_directory(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[store]\npath = "state/x.db"\n'))
    assert config.store.path == tmp_path.resolve() / "state" / "x.db"


def test_dns_resolver_with_both_address_families_off_is_refused(tmp_path: Path) -> None:
    """From an IPv6 lab: do_ipv4 and do_ipv6 both false passed check-config, and every name then
    failed, forward zones' too: no server address was of a family in use."""
    error = error_of(write(tmp_path, "[dns.resolver]\ndo_ipv4 = false\ndo_ipv6 = false\n"))
    assert "do_ipv4 and do_ipv6 are both false" in error
    assert load_config(write(tmp_path, "[dns.resolver]\ndo_ipv4 = false\n")).dns.resolver.do_ipv6


def test_dns_files_are_taken_from_the_config_directory(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[dns]\nroot_hints = "lab.hints"\n[dns.dnssec]\n'
                                         'trust_anchor_file = "keys/root.ds"\n'))
    assert config.dns.root_hints == tmp_path.resolve() / "lab.hints"
    assert config.dns.dnssec.trust_anchor_file == tmp_path.resolve() / "keys" / "root.ds"


def test_every_relative_file_name_is_taken_from_the_config_directory(tmp_path: Path) -> None:
    """Also those a manual list had missed: the dnstap socket and the SRS secret file."""
    config = load_config(write(tmp_path, '[dns.dnstap]\nsocket_path = "run/dnstap.sock"\n'
                                         '[radius]\ndictionaries = ["dict/a", "/usr/share/d"]\n'
                                         '[mail]\ndomains = ["isp.example"]\nsrs_secret_file = "keys/srs"\n'
                                         '[[mail.dkim]]\ndomain = "isp.example"\nselector = "s"\nprivate_key = "k.pem"\n'
                                         '[[dns.local_zone]]\nname = "lan.example"\nfile = "zones/lan"\n'))
    root = tmp_path.resolve()
    assert config.dns.dnstap.socket_path == root / "run" / "dnstap.sock"
    assert config.radius.dictionaries == [root / "dict" / "a", Path("/usr/share/d")]
    assert config.mail.srs_secret_file == root / "keys" / "srs" and config.mail.dkim[0].private_key == root / "k.pem"
    assert config.dns.local_zone[0].file == root / "zones" / "lan"
    assert config.mail.maildir_root == Path("/var/lib/ispd/mail")  # (absolute defaults stay)


def test_control_socket_default_relative_and_disabled(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).daemon.control_socket == Path("/run/ispd/control.sock")
    config = load_config(write(tmp_path, '[daemon]\ncontrol_socket = "run/ctl.sock"\n'))
    assert config.daemon.control_socket == tmp_path.resolve() / "run" / "ctl.sock"
    assert load_config(write(tmp_path, '[daemon]\ncontrol_socket = ""\n')).daemon.control_socket is None
    assert load_config(ROOT / "configs" / "dev.toml").daemon.control_socket == ROOT / "var" / "control.sock"


def test_control_socket_that_is_not_text(tmp_path: Path) -> None:
    path = write(tmp_path, "[daemon]\ncontrol_socket = 5\n")
    assert error_of(path) == (f'{path}: daemon.control_socket: 5 is not a path: write it as text, e.g. '
                              '"/run/ispd/control.sock" ("" disables it)')


def test_admin_socket_path_too_long_for_a_unix_socket(tmp_path: Path) -> None:
    # control.sock fits with 107 bytes, admin.sock beside it does not: check-config said ok, and
    # `ispd run` failed to start.
    control = f"/run/{'x' * 95}/c.sock"
    path = write(tmp_path, f'[daemon]\ncontrol_socket = "{control}"\n')
    assert error_of(path) == (f"{path}: admin.socket (auto: beside daemon.control_socket): /run/{'x' * 95}/admin.sock "
                              "is 111 bytes long; a Unix socket's path can have at most 107")
    path = write(tmp_path, f'[admin]\nsocket = "/run/{"x" * 120}.sock"\n')
    assert error_of(path) == (f"{path}: admin.socket: /run/{'x' * 120}.sock is 130 bytes long; a Unix socket's "
                              "path can have at most 107")


def test_control_socket_path_too_long_for_a_unix_socket(tmp_path: Path) -> None:
    path = write(tmp_path, f'[daemon]\ncontrol_socket = "/run/{"x" * 120}.sock"\n')
    assert error_of(path) == (f"{path}: daemon.control_socket: /run/{'x' * 120}.sock is 130 bytes long; a Unix "
                              "socket's path can have at most 107")


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, '[store]\npth = "/tmp/x.db"\n')
    assert error_of(path) == f"{path}: store.pth: unknown key (did you mean 'path'?)"


def test_unknown_section_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "[frobnicate]\nx = 1\n")
    assert error_of(path) == f"{path}: frobnicate: unknown key (known keys here: accounting_feed, admin, daemon, dhcp, dhcp6, dns, log, mail, metrics, radius, store)"


def test_wrong_type_names_the_value(tmp_path: Path) -> None:
    path = write(tmp_path, '[store]\nbusy_timeout_seconds = "fast"\n')
    assert error_of(path) == (
        f"{path}: store.busy_timeout_seconds: Input should be a valid number, unable to parse string as a number"
        " (got 'fast')"
    )


def test_out_of_range_value(tmp_path: Path) -> None:
    path = write(tmp_path, "[daemon]\nshutdown_grace_seconds = 0\n")
    assert error_of(path) == f"{path}: daemon.shutdown_grace_seconds: Input should be greater than 0 (got 0)"


def test_bad_address(tmp_path: Path) -> None:
    path = write(tmp_path, '[metrics]\nlisten = "localhost:9520"\n')
    assert error_of(path) == f"{path}: metrics.listen: 'localhost:9520' is not an address: 'localhost' is not an IP address"


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, 'store = "sqlite"\n')
    assert error_of(path) == f"{path}: store: must be a table ([store]), got 'sqlite'"


def test_several_errors_are_all_reported(tmp_path: Path) -> None:
    path = write(tmp_path, '[log]\nlevel = "loud"\n[metrics]\nlisten = "1.2.3.4"\n')
    lines = error_of(path).splitlines()
    assert lines == [
        f"{path}: log.level: Input should be 'debug', 'info', 'warning' or 'error' (got 'loud')",
        f"{path}: metrics.listen: '1.2.3.4' is not an address: expected HOST:PORT with an IP address, "
        "e.g. 127.0.0.1:9520 or [::1]:9520",
    ]


def test_one_table_for_a_list_of_tables_says_how_to_write_it_and_hides_the_secret(tmp_path: Path) -> None:
    # `[radius.client]` for `[[radius.client]]`: the error, in a terminal and in the log of a
    # rejected reload, showed the NAS's table whole, shared secret included.
    path = write(tmp_path, '[radius]\nenabled = true\n[radius.client]\nname = "nas"\naddress = "198.18.0.1"\n'
                           'secret = "never-shown-secret"\n')
    assert error_of(path) == (f"{path}: radius.client: must be a list of tables: write [[radius.client]] above "
                              "each one, got one table {'name': 'nas', 'address': '198.18.0.1', 'secret': '(hidden)'}")


def test_a_postgresql_url_that_does_not_parse_is_refused_without_its_password(tmp_path: Path) -> None:
    # libpq's reason quotes the whole URI: check-config printed the password, a reload logged it.
    path = write(tmp_path, '[store]\nbackend = "postgresql"\nurl = "postgresql://ispd:pw-never-shown@[db/ispd"\n')
    assert error_of(path) == (f"{path}: store: url is not a libpq connection URL or string: end of string reached "
                              'when looking for matching "…" in IPv6 host address in URI')


def test_a_bad_escape_in_a_postgresql_password_or_a_misshapen_store_table_shows_no_password(tmp_path: Path) -> None:
    """From a review: libpq quotes the token it could not decode, here the password alone; and
    `[[store]]` for `[store]` showed the table whole, its url with the password."""
    path = write(tmp_path, '[store]\nbackend = "postgresql"\nurl = "postgresql://ispd:s3cr%zzet@db/ispd"\n')
    assert "s3cr" not in error_of(path) and "percent-encoded" in error_of(path)
    path = write(tmp_path, '[[store]]\nbackend = "postgresql"\nurl = "postgresql://ispd:hunter2@db/ispd"\n')
    assert "hunter2" not in error_of(path) and "postgresql://ispd:(hidden)@db/ispd" in error_of(path)


def test_an_empty_domain_is_an_error_not_the_root(tmp_path: Path) -> None:
    # A negative trust anchor of "" was one of the root: DNSSEC validation off for every name.
    path = write(tmp_path, '[dns]\n[dns.dnssec]\nnegative_trust_anchors = [""]\n')
    assert error_of(path) == f"{path}: dns.dnssec.negative_trust_anchors.0: '' is not a domain name: it is empty " \
                             '(the root is ".")'


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "[store\npath = 1\n")
    assert error_of(path).startswith(f"{path}: not valid TOML: ")
    assert "line 1" in error_of(path)


@pytest.mark.parametrize(("text", "key"), [
    ('[dns]\nroot_hints = "hints\\u0000"\n', "dns.root_hints"),  # relative: it was resolved, and raised
    ('[mail]\nmaildir_root = "/var/mail\\u0000x"\n', "mail.maildir_root"),  # it passed, and stopped `run`
    ('[[dns.local_zone]]\nname = "a.test"\nfile = "/z\\u0000"\n', "dns.local_zone[0].file"),
    ('[radius]\n"x\\u0000" = 1\n', "radius"),
])
def test_a_nul_character_anywhere_is_a_clear_error(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    assert error_of(path) == f"{path}: {key}: a NUL character (\\u0000) cannot be in a config value"


def test_arrays_nested_too_deeply_are_an_error_not_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "[dns]\nlocal_records = " + "[" * 2000 + "]" * 2000 + "\n")
    assert error_of(path) == f"{path}: not valid TOML here: arrays or inline tables nested too deeply"


def test_a_huge_bad_value_is_shown_cut_short(tmp_path: Path) -> None:
    path = write(tmp_path, '[log]\nlevel = "' + "x" * 100_000 + '"\n')
    assert error_of(path).endswith("… (100,002 characters))")
    assert len(error_of(path)) < 500


@pytest.mark.parametrize(("options", "message"), [
    ("renew_seconds = 5000\nrebind_seconds = 100", "renew_seconds (5000) must be less than rebind_seconds (100)"),
    ("lease_seconds = 600\nrebind_seconds = 900", "rebind_seconds (900) must be less than lease_seconds (600)"),
])
def test_dhcp_timers_out_of_order_are_an_error_not_replaced(tmp_path: Path, options: str, message: str) -> None:
    path = write(tmp_path, f'[dhcp]\nenabled = true\ninterfaces = ["eth1"]\n[[dhcp.subnet]]\n'
                           f'network = "198.18.0.0/24"\n{options}\n[[dhcp.subnet.pool]]\nname = "p"\n'
                           f'range = "198.18.0.10 - 198.18.0.20"\n')
    assert message in error_of(path)


@pytest.mark.parametrize(("settings", "message"), [
    ('routers = ["198.18.0.1"]', "pool 'p' (198.18.0.1 - 198.18.0.20) includes 198.18.0.1, a router of the subnet"),
    ('server_id = "198.18.0.5"', "pool 'p' (198.18.0.1 - 198.18.0.20) includes 198.18.0.5, the server_id of the subnet"),
])
def test_a_dhcp_pool_holding_the_router_or_server_address_is_an_error(tmp_path: Path, settings: str,
                                                                       message: str) -> None:
    """Else the router's own address is leased to a client: "198.18.0.1 - 198.18.0.254" is an
    easy range to write."""
    path = write(tmp_path, f'[dhcp]\nenabled = true\ninterfaces = ["eth1"]\n[[dhcp.subnet]]\n'
                           f'network = "198.18.0.0/24"\n{settings}\n[[dhcp.subnet.pool]]\nname = "p"\n'
                           f'range = "198.18.0.1 - 198.18.0.20"\n')
    assert message in error_of(path)


def test_a_dhcp_pool_holding_a_router_another_pool_sends_is_an_error(tmp_path: Path) -> None:
    """A pool's own routers are routers too (a review: only the subnet's were checked)."""
    path = write(tmp_path, '[dhcp]\nenabled = true\ninterfaces = ["eth1"]\n[[dhcp.subnet]]\nnetwork = "198.18.0.0/24"\n'
                           '[[dhcp.subnet.pool]]\nname = "a"\nrange = "198.18.0.10 - 198.18.0.20"\n'
                           'routers = ["198.18.0.30"]\n[[dhcp.subnet.pool]]\nname = "b"\n'
                           'range = "198.18.0.30 - 198.18.0.40"\n')
    assert "pool 'b' (198.18.0.30 - 198.18.0.40) includes 198.18.0.30, a router of the subnet" in error_of(path)


def test_a_pools_router_outside_its_subnet_is_warned_of(tmp_path: Path) -> None:
    """The subnet's routers outside the subnet are refused; a pool's (its `routers`, or option 3)
    were accepted without a word, and its clients got a gateway they cannot reach. A warning: a
    config that ran must still start."""
    path = write(tmp_path, '[dhcp]\nenabled = true\ninterfaces = ["eth1"]\n[[dhcp.subnet]]\nnetwork = "198.18.0.0/24"\n'
                           'routers = ["198.18.0.1"]\n[[dhcp.subnet.pool]]\nname = "a"\n'
                           'range = "198.18.0.10 - 198.18.0.20"\nrouters = ["198.19.9.9"]\n[[dhcp.subnet.pool]]\n'
                           'name = "b"\nrange = "198.18.0.30 - 198.18.0.40"\n[[dhcp.subnet.pool.option]]\ncode = 3\n'
                           'addresses = ["198.18.0.1", "203.0.113.1"]\n[[dhcp.subnet.pool]]\nname = "c"\n'
                           'range = "198.18.0.50 - 198.18.0.60"\nrouters = ["198.18.0.2"]\n')
    warnings = load_config(path).dhcp.pool_router_warnings()
    assert warnings == [
        "subnet 198.18.0.0/24: pool 'a': router 198.19.9.9 is not inside 198.18.0.0/24: its clients cannot reach "
        "it; give a router of the subnet",
        "subnet 198.18.0.0/24: pool 'b': router 203.0.113.1 is not inside 198.18.0.0/24: its clients cannot reach "
        "it; give a router of the subnet"]
    checked = subprocess.run([ISPD, "check-config", "-c", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0 and all(f"dhcp: warning: {warning}" in checked.stderr for warning in warnings)


def test_static_routes_without_a_default_route_beside_routers_are_warned_of(tmp_path: Path) -> None:
    """A client that takes option 121 ignores option 3 (RFC 3442 §1): routers with static_routes
    that lack 0.0.0.0/0 left dhcpcd with the routes and no default route (run against ispd: no
    "default" in its table), and check-config said ok. A warning, for the subnet and for a pool
    whose own routers or routes make it so; none where a default route is among them."""
    route = '[[{where}.static_routes]]\ndestination = "{network}"\nrouter = "198.18.0.1"\n'
    path = write(tmp_path, '[dhcp]\nenabled = true\ninterfaces = ["eth1"]\n[[dhcp.subnet]]\nnetwork = "198.18.0.0/24"\n'
                           'routers = ["198.18.0.1"]\n'
                           + route.format(where="dhcp.subnet", network="10.0.0.0/8")
                           + '[[dhcp.subnet.pool]]\nname = "a"\nrange = "198.18.0.10 - 198.18.0.20"\n'
                           '[[dhcp.subnet.pool]]\nname = "b"\nrange = "198.18.0.30 - 198.18.0.40"\n'
                           + route.format(where="dhcp.subnet.pool", network="0.0.0.0/0")
                           + '[[dhcp.subnet.pool]]\nname = "c"\nrange = "198.18.0.50 - 198.18.0.60"\n'
                           'routers = ["198.18.0.2"]\n'
                           '[[dhcp.subnet.pool]]\nname = "d"\nrange = "198.18.0.70 - 198.18.0.80"\nrouters = []\n')
    warnings = [w.detail for w in load_config(path).dhcp.warnings() if w.event == "dhcp.subnet.routes_without_default"]
    assert warnings == [
        "subnet 198.18.0.0/24: static_routes: routers 198.18.0.1 are sent with static routes that have no 0.0.0.0/0: "
        "clients that take the routes (option 121, RFC 3442) ignore the routers and get no default route; add "
        '{ destination = "0.0.0.0/0", router = "198.18.0.1" }',
        "subnet 198.18.0.0/24: pool 'c': routers 198.18.0.2 are sent with static routes that have no 0.0.0.0/0: "
        "clients that take the routes (option 121, RFC 3442) ignore the routers and get no default route; add "
        '{ destination = "0.0.0.0/0", router = "198.18.0.2" }']
    checked = subprocess.run([ISPD, "check-config", "-c", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0 and all(f"dhcp: warning: {warning}" in checked.stderr for warning in warnings)
    fixed = write(tmp_path, path.read_text().replace('"10.0.0.0/8"', '"0.0.0.0/0"'))
    assert not [w for w in load_config(fixed).dhcp.warnings() if w.event == "dhcp.subnet.routes_without_default"]


def test_unknown_clients_sent_to_a_garden_a_subnet_lacks_is_warned_of(tmp_path: Path) -> None:
    """unknown_clients = "walled-garden" where a subnet has no garden pool: its unknown clients
    got no address at all, and check-config said ok. A warning (a config that ran must start)."""
    subnets = "".join(f'[[dhcp.subnet]]\nnetwork = "198.18.{n}.0/24"\n[[dhcp.subnet.pool]]\nname = "p{n}"\n'
                      f'range = "198.18.{n}.10 - 198.18.{n}.20"\nwalled_garden = {garden}\n'
                      for n, garden in ((0, "true"), (1, "false")))
    path = write(tmp_path, f'[dhcp]\nenabled = true\ninterfaces = ["eth1"]\nunknown_clients = "walled-garden"\n{subnets}')
    [warning] = load_config(path).dhcp.garden_warnings()
    assert warning == ('subnet 198.18.1.0/24: unknown_clients = "walled-garden", but it has no pool with '
                       "walled_garden = true: its clients with no reservation get no address at all; add one")
    checked = subprocess.run([ISPD, "check-config", "-c", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0 and f"dhcp: warning: {warning}" in checked.stderr
    served = write(tmp_path, path.read_text().replace('"walled-garden"', '"serve"'))
    assert load_config(served).dhcp.garden_warnings() == []


@pytest.mark.parametrize(("relays", "message"), [
    (("198.18.0.2", "198.18.9.9"), "subnet 198.19.0.0/24: relay address 198.18.0.2 is inside subnet 198.18.0.0/24"),
    (("198.18.9.9", "198.18.9.9"), "relay address 198.18.9.9 is listed by subnets 198.18.0.0/24 and 198.19.0.0/24"),
])
def test_a_relay_address_that_could_never_apply_is_an_error(tmp_path: Path, relays: tuple[str, str],
                                                             message: str) -> None:
    """A giaddr inside a subnet picks that subnet (and the first listing wins): such an entry
    was accepted and silently did nothing, its relay's clients served from another subnet."""
    subnets = "".join(
        f'[[dhcp.subnet]]\nnetwork = "198.18.{n}.0/24"\nrelay_addresses = ["{relay}"]\n'
        f'[[dhcp.subnet.pool]]\nname = "p{n}"\nrange = "198.18.{n}.10 - 198.18.{n}.20"\n'
        for n, relay in ((0, relays[1]), (1, relays[0]))).replace("198.18.1.", "198.19.0.")
    path = write(tmp_path, f'[dhcp]\nenabled = true\ninterfaces = ["eth1"]\n{subnets}')
    assert message in error_of(path)


def test_two_subnets_naming_one_interface_are_warned_of(tmp_path: Path) -> None:
    """Direct clients are served from the first subnet that names their interface: the second
    was accepted and never served one there (its pool empty while the first ran out). A warning:
    the second still serves its relays' clients, and a config that ran must still start."""
    subnets = "".join(f'[[dhcp.subnet]]\nnetwork = "198.18.{n}.0/24"\ninterface = "eth1"\n'
                      f'[[dhcp.subnet.pool]]\nname = "p{n}"\nrange = "198.18.{n}.10 - 198.18.{n}.20"\n'
                      for n in (0, 2))
    path = write(tmp_path, f'[dhcp]\nenabled = true\ninterfaces = ["eth1"]\n{subnets}')
    [warning] = load_config(path).dhcp.shared_interface_warnings()
    assert warning.startswith("interface 'eth1' is named by subnets 198.18.0.0/24 and 198.18.2.0/24; its direct")
    checked = subprocess.run([ISPD, "check-config", "-c", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0 and f"dhcp: warning: {warning}" in checked.stderr


def test_timers_that_do_not_fit_a_lease_set_elsewhere_are_warned_of(tmp_path: Path) -> None:
    """A subnet's T1 and T2 over the section's lease time were accepted without a word, and its
    clients got 1/2 and 7/8 of the lease instead. A warning, naming what clients get: a config
    that ran must still start. Times that fit, and a garden pool (its own times), say nothing."""
    path = write(tmp_path, '[dhcp]\nenabled = true\ninterfaces = ["eth1"]\n[[dhcp.subnet]]\n'
                           'network = "198.18.0.0/24"\ninterface = "eth1"\nrenew_seconds = 5000\n'
                           'rebind_seconds = 6000\n[[dhcp.subnet.pool]]\nname = "p"\nrange = "198.18.0.10 - 198.18.0.20"\n'
                           '[[dhcp.subnet.pool]]\nname = "g"\nrange = "198.18.0.30 - 198.18.0.40"\n'
                           'walled_garden = true\n[[dhcp.subnet.pool]]\nname = "long"\n'
                           'range = "198.18.0.50 - 198.18.0.60"\nlease_seconds = 7200\n')
    dhcp = load_config(path).dhcp
    [warning] = dhcp.timer_warnings()
    assert warning == ("subnet 198.18.0.0/24: pool 'p': renew_seconds = 5000 and rebind_seconds = 6000 do not fit "
                       "its lease time of 3600 s (T1 < T2 < lease): its clients get T1 1800 s and T2 3150 s "
                       "instead; set lease_seconds beside them, or times that fit")
    subnet = dhcp.subnet[0]
    assert [dhcp.lease_times(subnet, pool) for pool in subnet.pool] == [
        (3600, 1800, 3150, False), (300, 150, 262, True), (7200, 5000, 6000, True)]
    checked = subprocess.run([ISPD, "check-config", "-c", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0 and f"dhcp: warning: {warning}" in checked.stderr


def test_a_relay_address_inside_its_own_subnet_is_only_redundant(tmp_path: Path) -> None:
    path = write(tmp_path, '[dhcp]\nenabled = true\ninterfaces = ["eth1"]\n[[dhcp.subnet]]\nnetwork = "198.18.0.0/24"\n'
                           'relay_addresses = ["198.18.0.1"]\n[[dhcp.subnet.pool]]\nname = "p"\n'
                           'range = "198.18.0.10 - 198.18.0.20"\n')
    load_config(path)


@pytest.mark.parametrize(("text", "message"), [
    ('[dns]\nenabled = true\nlisten = ["127.0.0.1:5300", "127.0.0.1:5300"]\n',
     "dns.listen (127.0.0.1:5300) and dns.listen (127.0.0.1:5300) both take port 5300 (UDP)"),
    ('[dns]\nenabled = true\nlisten = ["127.0.0.1:5300"]\n[radius]\nenabled = true\n'
     'listen_auth = ["127.0.0.1:5300"]\nlisten_acct = ["127.0.0.1:5301"]\n',
     "radius.listen_auth (127.0.0.1:5300) and dns.listen (127.0.0.1:5300) both take port 5300 (UDP)"),
    ('[radius]\nenabled = true\nlisten_auth = ["127.0.0.1:1812"]\nlisten_acct = ["127.0.0.1:1812"]\n',
     "radius.listen_acct (127.0.0.1:1812) and radius.listen_auth (127.0.0.1:1812) both take"),
    ('[metrics]\nlisten = "127.0.0.1:8740"\n[admin]\nlisten = ["127.0.0.1:8740"]\n'
     'token = "a-token-long-enough-for-the-check-0123"\n',
     "admin.listen (127.0.0.1:8740) and metrics.listen (127.0.0.1:8740) both take port 8740 (TCP)"),
    ('[metrics]\nlisten = "0.0.0.0:9611"\n[admin]\nlisten = ["127.0.0.7:9611"]\n'
     'token = "a-token-long-enough-for-the-check-0123"\n',
     "admin.listen (127.0.0.7:9611) and metrics.listen (0.0.0.0:9611) both take port 9611 (TCP)"),
    ('[daemon]\ncontrol_socket = "/run/x.sock"\n[admin]\nsocket = "/run/x.sock"\n',
     "admin.socket is daemon.control_socket (/run/x.sock)"),
    # DHCP binds its port on 0.0.0.0 and DHCPv6 on [::]: the others' bind failed at `ispd run`
    # ("Address already in use") after check-config said ok.
    ('[radius]\nenabled = true\nlisten_auth = ["127.0.0.1:20067"]\nlisten_acct = ["127.0.0.1:20068"]\n'
     '[dhcp]\nenabled = true\ninterfaces = ["eth1"]\nport = 20067\n[[dhcp.subnet]]\nnetwork = "198.18.0.0/24"\n'
     '[[dhcp.subnet.pool]]\nname = "p"\nrange = "198.18.0.10 - 198.18.0.20"\n',
     "dhcp.port (0.0.0.0:20067) and radius.listen_auth (127.0.0.1:20067) both take port 20067 (UDP)"),
    ('[dns]\nenabled = true\nlisten = ["[::1]:20547"]\n[dhcp6]\nenabled = true\ninterfaces = ["eth1"]\n'
     'port = 20547\n[[dhcp6.subnet]]\nname = "s"\nprefix = "2001:db8:1::/64"\n[[dhcp6.subnet.pool]]\n'
     'name = "p"\nrange = "2001:db8:1::100 - 2001:db8:1::1ff"\n',
     "dhcp6.port ([::]:20547) and dns.listen ([::1]:20547) both take port 20547 (UDP)"),
])
def test_two_listeners_on_one_address_are_an_error_before_the_start(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    assert message in error_of(path)


@pytest.mark.parametrize(("text", "message"), [
    ('[metrics]\nlisten = "[::ffff:127.0.0.1]:20999"\n',
     "metrics.listen: [::ffff:7f00:1]:20999 is IPv4-mapped IPv6, which an IPv6 listener cannot take (each is "
     "IPv6-only): write 127.0.0.1:20999"),
    ('[dns]\nenabled = true\nlisten = ["[::ffff:198.18.0.53]:0"]\n', "write 198.18.0.53:0"),
])
def test_an_ipv4_mapped_listen_address_is_an_error_before_the_start(tmp_path: Path, text: str, message: str) -> None:
    """An IPv6 listener is IPv6-only: `ispd run` failed with "cannot listen on [::ffff:7f00:1]:20999:
    Invalid argument" after check-config said ok."""
    assert message in error_of(write(tmp_path, text))


def test_one_port_for_a_tcp_and_a_udp_service_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, '[dns]\nenabled = true\nlisten = ["127.0.0.1:5300"]\n[radius]\nenabled = true\n'
                           'listen_auth = ["127.0.0.1:8740"]\nlisten_acct = ["127.0.0.2:5300"]\n'
                           '[metrics]\nlisten = "127.0.0.1:8740"\n')
    load_config(path)


def test_dhcp_and_dhcp6_on_one_port_number_are_fine(tmp_path: Path) -> None:
    """0.0.0.0 and [::] are two families: DHCP's port and DHCPv6's may be the same number, and
    a TCP listener (DNS over TCP) beside DHCP's UDP port is no clash either."""
    path = write(tmp_path, '[dhcp]\nenabled = true\ninterfaces = ["eth1"]\nport = 20067\n[[dhcp.subnet]]\n'
                           'network = "198.18.0.0/24"\n[[dhcp.subnet.pool]]\nname = "p"\n'
                           'range = "198.18.0.10 - 198.18.0.20"\n[dhcp6]\nenabled = true\ninterfaces = ["eth1"]\n'
                           'port = 20067\n[[dhcp6.subnet]]\nname = "s"\nprefix = "2001:db8:1::/64"\n'
                           '[[dhcp6.subnet.pool]]\nname = "p6"\nrange = "2001:db8:1::100 - 2001:db8:1::1ff"\n'
                           '[metrics]\nlisten = "127.0.0.1:20067"\n')
    load_config(path)


def test_a_plan_with_a_framed_pool_and_an_address_pool_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[[radius.plan]]\nplan = "home"\nframed_pool = "nas"\naddress_pool = "main"\n')
    assert "framed_pool (the NAS gives the address) and address_pool (ispd gives it) exclude each other" in error_of(path)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    assert error_of(tmp_path / "nope.toml") == f"{tmp_path / 'nope.toml'}: no such file"
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert error_of(binary) == f"{binary}: not UTF-8 text"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:53", SocketAddress("127.0.0.1", 53)),
        ("[::1]:0", SocketAddress("::1", 0)),
        ("0.0.0.0:65535", SocketAddress("0.0.0.0", 65535)),
        ("[2001:db8::1]:853", SocketAddress("2001:db8::1", 853)),
    ],
)
def test_socket_addresses(text: str, expected: SocketAddress) -> None:
    assert parse_socket_address(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize("text", ["", ":53", "127.0.0.1", "127.0.0.1:65536", "::1:53", "[::1]53", "1.2.3.4:-1",
                                  "[::1]:x", "300.1.1.1:1"])
def test_bad_socket_addresses(text: str) -> None:
    with pytest.raises(ValueError, match="is not an address"):
        parse_socket_address(text)


def test_check_config_command(tmp_path: Path) -> None:
    # dev.toml names the example certificates that tools/dev-run makes first, as here.
    subprocess.run([str(ROOT / "tools" / "dev-certs")], check=True, capture_output=True)
    good = subprocess.run([ISPD, "check-config", "-c", str(ROOT / "configs" / "dev.toml")],
                          capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    path = write(tmp_path, "[metrics]\nlisten = 9520\n")
    bad = subprocess.run([ISPD, "check-config", "-c", str(path)], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr == f"ispd: {path}: metrics.listen: 9520 is not an address: expected HOST:PORT with an IP address, e.g. 127.0.0.1:9520 or [::1]:9520\n"
    assert "Traceback" not in bad.stderr + bad.stdout


def test_run_with_a_bad_config_exits_2_without_starting(tmp_path: Path) -> None:
    path = write(tmp_path, "[store]\nwhat = 1\n")
    result = subprocess.run([ISPD, "run", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith(f"ispd: {path}: store.what: unknown key")


def test_an_accounting_feed_collector_needs_an_address_and_a_secret(tmp_path: Path) -> None:
    path = write(tmp_path, '[[accounting_feed.collectors]]\nname = "shaper"\naddress = "nowhere"\nsecret = ""\n')
    error = error_of(path)
    assert "accounting_feed.collectors.0.address" in error and "accounting_feed.collectors.0.secret" in error, error
    assert "the shared secret is empty" in error


def test_accounting_feed_collectors_that_cannot_work_as_written_are_warned_of(tmp_path: Path) -> None:
    """From a bug hunt: check-config said ok to a collector at port 0 (every request "timeout",
    as if the collector were down), to two collectors of one name (one metric label, one share
    of the requests in flight) and to one address listed twice (every Start and Stop sent twice).
    Warned of, not refused: a config that ran must still start after an upgrade."""
    def warnings(*entries: tuple[str, str]) -> list[str]:
        path = write(tmp_path, "".join(f'[[accounting_feed.collectors]]\nname = "{name}"\naddress = "{address}"\n'
                                       f'secret = "s"\n' for name, address in entries))
        return load_config(path).accounting_feed.collector_warnings()

    [warning] = warnings(("shaper", "198.51.100.9:0"))
    assert "collector 'shaper' at 198.51.100.9:0: port 0 reaches nothing" in warning, warning
    [warning] = warnings(("shaper", "198.51.100.9:1813"), ("shaper", "198.51.100.10:1813"))
    assert "two collectors are named 'shaper'" in warning, warning
    [warning] = warnings(("shaper", "198.51.100.9:1813"), ("billing", "198.51.100.9:1813"))
    assert "collectors 'shaper' and 'billing' are both 198.51.100.9:1813" in warning, warning
    assert warnings(("shaper", "198.51.100.9:1813"), ("billing", "198.51.100.9:1814")) == []


def test_the_admin_per_client_limit_is_at_most_the_total(tmp_path: Path) -> None:
    """A per-client limit above max_connections would let one client take every place: said
    when set so; left at its default beside a small max_connections, it is that."""
    path = write(tmp_path, "[admin]\nmax_connections = 8\nmax_connections_per_client = 9\n")
    assert "admin.max_connections_per_client (9) is more than admin.max_connections (8)" in error_of(path)
    assert "greater than or equal to 1" in error_of(write(tmp_path, "[admin]\nmax_connections_per_client = 0\n"))
    assert load_config(write(tmp_path, "[admin]\nmax_connections = 8\n")).admin.per_client() == 8
    assert load_config(write(tmp_path, "")).admin.per_client() == 16


def test_an_admin_tcp_listener_needs_a_long_enough_token(tmp_path: Path) -> None:
    assert "admin.listen needs admin.token" in error_of(write(tmp_path, '[admin]\nlisten = ["127.0.0.1:8740"]\n'))
    short = write(tmp_path, '[admin]\nlisten = ["127.0.0.1:8740"]\ntoken = "short"\n')
    assert "at least 16 characters" in error_of(short)


def test_dns_processes_need_fixed_ports_and_a_sane_count(tmp_path: Path) -> None:
    path = write(tmp_path, '[dns]\nenabled = true\nprocesses = 2\nlisten = ["127.0.0.1:5353"]\n'
                           '[dns.doq]\nlisten = ["127.0.0.1:0"]\ncertificate = "c.pem"\nprivate_key = "k.pem"\n')
    assert error_of(path) == (f"{path}: dns: doq.listen: port 0 (any free port) cannot be shared by 2 processes: "
                              "give the port")
    assert "dns.processes: Input should be less than or equal to 64" in error_of(
        write(tmp_path, "[dns]\nprocesses = 65\n"))
    assert load_config(write(tmp_path, '[dns]\nenabled = true\nprocesses = 4\nlisten = ["127.0.0.1:5353"]\n')
                       ).dns.processes == 4


def test_dns_zone_rate_limits_name_their_domains_once(tmp_path: Path) -> None:
    limits = ('[[dns.resolver.zone_rate_limit_for]]\nname = "Example.com"\nqps = 10\n'
              '[[dns.resolver.zone_rate_limit_for]]\nname = "example.com."\nqps = 0\n')
    path = write(tmp_path, '[dns]\nenabled = true\n' + limits)
    assert error_of(path) == f"{path}: dns: resolver.zone_rate_limit_for: a domain is given twice"
    assert "qps: Input should be greater than or equal to 0" in error_of(write(
        tmp_path, '[[dns.resolver.zone_rate_limit_for]]\nname = "example.com"\nqps = -1\n'))
    assert "is not a domain name" in error_of(write(
        tmp_path, '[[dns.resolver.zone_rate_limit_for]]\nname = "a..b"\nqps = 1\n'))


@pytest.mark.parametrize("name", ["ispd.toml", "dev.toml", "dns-lab.toml", "tests/everything.toml",
                                  "tests/shared-pools-overlapping.toml"])
def test_a_config_snapshot_reads_back_equal_secrets_included(name: str, tmp_path: Path) -> None:
    """What the main process hands its workers (``ispd worker --config-snapshot``): the shipped
    configs, one with (nearly) every option set, and one whose plans name DHCP pools that
    overlap (validation adds them to RADIUS's pools, which must not be checked again as its own)."""
    from ispd.config import load_config_snapshot, write_config_snapshot

    here = Path(__file__).parent
    source = here / "configs" / name[6:] if name.startswith("tests/") else here.parent / "configs" / name
    config = load_config(source)
    path = tmp_path / "snapshot.json"
    write_config_snapshot(config, path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = load_config_snapshot(path)
    assert again == config
    secrets = [client.secret.get_secret_value() for client in config.radius.client]
    assert secrets == [client.secret.get_secret_value() for client in again.radius.client]
    assert secrets or name in ("dns-lab.toml", "tests/shared-pools-overlapping.toml")  # (no NAS there)
    write_config_snapshot(config, path)  # replaced, not appended to
    assert load_config_snapshot(path) == config
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read the config snapshot"):
        load_config_snapshot(path)


@pytest.mark.parametrize("radius_enabled", [True, False])
def test_a_radius_pool_that_is_a_dhcp_pool_reads_back_in_its_place(tmp_path: Path, radius_enabled: bool) -> None:
    from ispd.config import load_config_snapshot, write_config_snapshot

    path = write(tmp_path, f"""
[[dhcp.subnet]]
network = "198.18.0.0/24"
[[dhcp.subnet.pool]]
name = "a"
range = "198.18.0.100 - 198.18.0.199"
[radius]
enabled = {str(radius_enabled).lower()}
[[radius.address_pool]]
name = "a"
range = "198.18.0.100 - 198.18.0.199"
[[radius.address_pool]]
name = "own"
range = "198.18.5.10 - 198.18.5.20"
[[radius.plan]]
plan = "silver"
address_pool = "a"
""")
    config = load_config(path)
    write_config_snapshot(config, tmp_path / "snapshot.json")
    again = load_config_snapshot(tmp_path / "snapshot.json")
    assert [p.name for p in again.radius.address_pool] == [p.name for p in config.radius.address_pool] == ["a", "own"]
    assert again == config


def test_radius_housekeeping_interval_has_a_default_and_bounds(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).radius.housekeeping_interval_seconds == 60
    path = write(tmp_path, "[radius]\nhousekeeping_interval_seconds = 300\n")
    assert error_of(path) == (f"{path}: radius.housekeeping_interval_seconds: "
                              "Input should be less than or equal to 120 (got 300)")


def test_a_radius_interim_interval_under_a_minute_is_refused(tmp_path: Path) -> None:
    """RFC 2869 §5.16: an Acct-Interim-Interval MUST NOT be smaller than 60, and pppd's radius
    plugin raises a smaller one to 60: told 20, its sessions reported every 60 s and were closed as
    stale in between, their pool addresses given to others while still in use."""
    path = write(tmp_path, "[radius]\ninterim_interval_seconds = 20\n")
    assert "at least 60 s (RFC 2869), or 0 for none" in error_of(path)
    for fine in (0, 60):
        loaded = load_config(write(tmp_path, f"[radius]\ninterim_interval_seconds = {fine}\n"))
        assert loaded.radius.interim_interval_seconds == fine


@pytest.mark.parametrize(("dnstap", "error"), [
    ('socket_path = "/run/d.sock"\naddress = "127.0.0.1:6000"', "socket_path or address (one collector), not both"),
    ('address = "127.0.0.1:0"', "give the collector's port"),
    ('address = "collector.example:6000"', "is not an IP address"),
    ('socket_path = "/run/d.sock"\nbuffer_bytes = 1000', "greater than or equal to 65536"),
    ('socket_path = "/run/d.sock"\nsample = 2', "dns.dnstap.sample: unknown key"),
])
def test_dnstap_mistakes_are_named(tmp_path: Path, dnstap: str, error: str) -> None:
    text = error_of(write(tmp_path, f"[dns]\nenabled = true\n[dns.dnstap]\n{dnstap}\n"))
    assert error in text and "dns.dnstap" in text, text


@pytest.mark.parametrize(("realms", "error"), [
    ('[[radius.realm]]\nname = "a.example"\nauth_servers = ["198.18.5.1:1812"]\nsecret = "s"\n'
     '[[radius.realm]]\nname = "A.example."\nauth_servers = ["198.18.5.2:1812"]\nsecret = "s"\n',
     "'a.example' has two [[radius.realm]] tables"),
    ('local_realms = ["a.example"]\n[[radius.realm]]\nname = "a.example"\nauth_servers = ["198.18.5.1:1812"]\n'
     'secret = "s"\n', "is in local_realms too"),
    ('[[radius.realm]]\nname = "not a realm"\nauth_servers = ["198.18.5.1:1812"]\nsecret = "s"\n',
     "is not a realm"),
    ('[[radius.realm]]\nname = "a.example"\nauth_servers = []\nsecret = "s"\n', "auth_servers"),
    ('[[radius.realm]]\nname = "a.example"\nauth_servers = ["198.18.5.1:1812"]\nsecret = ""\n',
     "the shared secret is empty"),
    # Port 0 (a listener's "any port") was taken: every send failed, the server read as silent.
    ('[[radius.realm]]\nname = "a.example"\nauth_servers = ["198.18.5.1:0"]\nsecret = "s"\n',
     "radius.realm.0.auth_servers: 198.18.5.1:0: give the home server's port"),
    ('[[radius.realm]]\nname = "a.example"\nauth_servers = ["198.18.5.1:1812"]\nsecret = "s"\n'
     'acct_servers = ["198.18.5.1:1813", "198.18.5.1:1813"]\n',
     "radius.realm.0.acct_servers: 198.18.5.1:1813 is listed twice"),
])
def test_realm_mistakes_are_named(tmp_path: Path, realms: str, error: str) -> None:
    text = error_of(write(tmp_path, f"[radius]\nenabled = true\n{realms}"))
    assert error in text and "radius" in text, text


@pytest.mark.parametrize(("written", "kept"), [
    ("198.18.0.53", "198.18.0.53"), ("198.18.0.53@5300", "198.18.0.53@5300"), ("198.18.0.53:5300", "198.18.0.53@5300"),
    ("198.18.0.53@53", "198.18.0.53"), ("[2001:DB8::53]:5300", "2001:db8::53@5300"), ("2001:db8::53@5300", "2001:db8::53@5300"),
    ("2001:db8::53", "2001:db8::53")])
def test_a_forward_zone_server_may_have_a_port_of_its_own(written: str, kept: str) -> None:
    """Kept as the address, with "@port" only for another port than 53: what the resolver's
    upstream transport reads."""
    from ispd.dns.config import ForwardZoneConfig
    assert ForwardZoneConfig(name="corp.internal", servers=[written]).servers == [kept]


@pytest.mark.parametrize(("written", "problem"), [
    ("198.18.0.53@0", "the port must be a number from 1 to 65535"), ("198.18.0.53@x", "the port must be a number"),
    ("ns1.corp.example", "is not an IP address"), ("2001:db8::53:5300x", "is not an IP address"),
    ("198.18.0.53:", "port must be a number")])
def test_a_forward_zone_server_that_is_not_one_is_named(written: str, problem: str) -> None:
    from pydantic import ValidationError

    from ispd.dns.config import ForwardZoneConfig
    with pytest.raises(ValidationError, match=problem):
        ForwardZoneConfig(name="corp.internal", servers=[written])


def test_forward_first_is_for_forward_zones_only() -> None:
    from pydantic import ValidationError

    from ispd.dns.config import ForwardZoneConfig
    assert ForwardZoneConfig(name=".", servers=["198.18.0.53"], first=True).first
    with pytest.raises(ValidationError, match="first = true is for forward zones"):
        ForwardZoneConfig(name="corp.internal", servers=["198.18.0.53"], stub=True, first=True)


PREFIX_POOL = '[[radius.prefix_pool]]\nname = "homes"\nprefix = "2001:db8:1000::/40"\n'


def test_a_radius_prefix_pool_and_a_plan_naming_it(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, f'[radius]\nenabled = true\n{PREFIX_POOL}'
                                         '[[radius.plan]]\nplan = "home"\nprefix_pool = "homes"\n'))
    pool = config.radius.prefix_pool[0]
    assert (str(pool.prefix), pool.delegated_length) == ("2001:db8:1000::/40", 56)
    assert config.radius.plan[0].prefix_pool == "homes"


@pytest.mark.parametrize(("pools", "error"), [
    ('[[radius.prefix_pool]]\nname = "a"\nprefix = "2001:db8:1000::1/40"\n', "is not an IPv6 network without host bits"),
    ('[[radius.prefix_pool]]\nname = "a"\nprefix = "198.18.0.0/16"\n', "is not an IPv6 network"),
    ('[[radius.prefix_pool]]\nname = "a"\nprefix = "fe80::/48"\n', "is link-local"),
    ('[[radius.prefix_pool]]\nname = "a"\nprefix = "ff00::/16"\n', "is multicast"),
    ('[[radius.prefix_pool]]\nname = "a"\nprefix = "2000::/12"\n', "is shorter than /16"),
    ('[[radius.prefix_pool]]\nname = "a"\nprefix = "2001:db8::/56"\ndelegated_length = 48\n',
     "delegated_length 48 is shorter than the pool's prefix 2001:db8::/56; give /56 or longer"),
    ('[[radius.prefix_pool]]\nname = "a"\nprefix = "2001:db8::/48"\ndelegated_length = 80\n', "less than or equal to 64"),
    ('[[radius.prefix_pool]]\nname = "a b"\nprefix = "2001:db8::/48"\n', "name"),
    (f'{PREFIX_POOL}{PREFIX_POOL.replace("1000::/40", "2000::/40")}', "two pools are named 'homes'"),
    (f'{PREFIX_POOL}[[radius.prefix_pool]]\nname = "b"\nprefix = "2001:db8:1010::/48"\n',
     "pools 'homes' (2001:db8:1000::/40) and 'b' (2001:db8:1010::/48) overlap"),
    ('[[radius.plan]]\nplan = "home"\nprefix_pool = "nowhere"\n',
     "plan 'home': prefix_pool 'nowhere' names no [[radius.prefix_pool]]"),
])
def test_radius_prefix_pool_mistakes_are_named(tmp_path: Path, pools: str, error: str) -> None:
    text = error_of(write(tmp_path, f"[radius]\nenabled = true\n{pools}"))
    assert error in text and "radius" in text, text


@pytest.mark.parametrize(("dhcp6_pool", "named"), [
    ('[[dhcp6.subnet.prefix_pool]]\nname = "dyn"\nprefix = "2001:db8:1000::/44"\ndelegated_length = 60\n',
     "[[dhcp6.subnet.prefix_pool]] 'dyn' (2001:db8:1000::/44)"),
    ('[[dhcp6.subnet.pool]]\nname = "hosts"\nrange = "2001:db8:10ff::10 - 2001:db8:10ff::ff"\n',
     "[[dhcp6.subnet.pool]] 'hosts' (2001:db8:10ff::10 - 2001:db8:10ff::ff)"),
    # From a bug hunt: the access link itself inside the pool (a login's /56 holding it) passed.
    ('[[dhcp6.subnet.prefix_pool]]\nname = "dyn"\nprefix = "2001:db8:3000::/44"\ndelegated_length = 60\n',
     "the link prefix (2001:db8:10ff::/64) of subnet 'access': a login's prefix would hold the link"),
])
def test_a_radius_prefix_pool_may_not_overlap_a_dhcp6_pool(tmp_path: Path, dhcp6_pool: str, named: str) -> None:
    dhcp6 = ('[dhcp6]\nenabled = true\ninterfaces = ["eth1"]\n[[dhcp6.subnet]]\nname = "access"\n'
             'prefix = "2001:db8:10ff::/64"\ninterface = "eth1"\n')
    text = error_of(write(tmp_path, f"{dhcp6}{dhcp6_pool}[radius]\nenabled = true\n{PREFIX_POOL}"))
    assert f"radius.prefix_pool 'homes' (2001:db8:1000::/40) overlaps {named}" in text, text
    apart = dhcp6_pool.replace("2001:db8:1000::/44", "2001:db8:2000::/44").replace("10ff", "20ff")
    load_config(write(tmp_path, f"{dhcp6.replace('10ff', '20ff')}{apart}[radius]\nenabled = true\n{PREFIX_POOL}"))


def test_check_config_gives_each_problem_its_own_ispd_line(tmp_path: Path) -> None:
    """Two problems in the file came out as "ispd: FILE: first" then "FILE: second", while the
    problems of the files it names get "ispd: FILE: ..." each: a `grep ^ispd:` saw only one."""
    path = write(tmp_path, "[daemon]\nshutdown_grace_second = 5\n[store]\npth = 'x'\n")
    result = subprocess.run([ISPD, "check-config", "-c", str(path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"ispd: {path}: daemon.shutdown_grace_second: unknown key (did you mean 'shutdown_grace_seconds'?)",
        f"ispd: {path}: store.pth: unknown key (did you mean 'path'?)",
    ]


def test_a_missing_default_config_says_how_to_name_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`ispd subscriber list` without -c said only "ispd: /etc/ispd/ispd.toml: no such file": a
    newcomer who tried the README's commands had given no such path and was not told of -c."""
    import ispd.cli

    monkeypatch.delenv("ISPD_CONFIG", raising=False)
    monkeypatch.setattr(ispd.cli, "DEFAULT_CONFIG", str(tmp_path / "ispd.toml"))
    assert ispd.cli.main(["subscriber", "list"]) == 2
    assert capsys.readouterr().err == (f"ispd: {tmp_path / 'ispd.toml'}: no such file (the default without -c FILE "
                                       "or $ISPD_CONFIG; in a clone of ispd, -c configs/dev.toml)\n")
    # named, it is the file asked for: no more to say
    assert ispd.cli.main(["subscriber", "list", "-c", str(tmp_path / "other.toml")]) == 2
    assert capsys.readouterr().err == f"ispd: {tmp_path / 'other.toml'}: no such file\n"


def test_the_config_may_come_before_the_command(tmp_path: Path) -> None:
    """`ispd -c FILE subscriber list`, as unbound-control -c and postconf -c take it, was refused
    as "argument COMMAND: invalid choice: 'FILE'"; the command's own -c wins over it."""
    from ispd.entry import command_of

    good = write(tmp_path, "")
    result = subprocess.run([ISPD, "-c", str(good), "check-config"], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, f"{good}: ok\n"), result.stderr
    result = subprocess.run([ISPD, "--config", str(tmp_path / "missing.toml"), "check-config", "-c", str(good)],
                            capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, f"{good}: ok\n"), result.stderr
    result = subprocess.run([ISPD, "-c", str(tmp_path / "missing.toml"), "check-config"], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (2, f"ispd: {tmp_path / 'missing.toml'}: no such file\n")
    # `ispd -c FILE run` holds back SIGTERM and SIGHUP from its first instant too
    assert [command_of(argv) for argv in (["run"], ["-c", "f", "run"], ["--config=f", "worker"], ["plan"], [])] == [
        "run", "run", "worker", "plan", None]
    # An abbreviation there would start the daemon without that: refused as a usage error.
    result = subprocess.run([ISPD, "--conf", str(good), "check-config"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_ctrl_c_while_the_command_loads_exits_130_without_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """From a bug hunt: Ctrl-C in the half second an admin command spends loading its modules
    (`ispd subscriber list`, then a second thought) printed a KeyboardInterrupt traceback from
    deep in an import: the command's own handling (exit 130) starts only once they are loaded."""
    import importlib.abc

    from ispd import entry

    class InterruptedImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: object, target: object = None) -> None:
            if name == "ispd.cli":
                raise KeyboardInterrupt

    monkeypatch.delitem(sys.modules, "ispd.cli", raising=False)
    monkeypatch.setattr(sys, "meta_path", [InterruptedImport(), *sys.meta_path])
    monkeypatch.setattr(sys, "argv", ["ispd", "subscriber", "list"])
    try:
        status = entry.main()
    except KeyboardInterrupt:
        pytest.fail("the KeyboardInterrupt reached the user as a traceback")
    assert status == 130


def test_check_config_warns_of_an_admin_listener_beyond_loopback(tmp_path: Path) -> None:
    # The bearer token goes in clear over TCP: on a wildcard or public address check-config said
    # "ok" and the daemon started without a word. Loopback stays silent.
    token = 'token = "a-token-of-the-lab-0123456789"\n'
    path = write(tmp_path, f'[admin]\nlisten = ["0.0.0.0:8740", "127.0.0.1:8741", "[::1]:8742"]\n{token}')
    result = subprocess.run([ISPD, "check-config", "-c", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == (f"ispd: {path}: admin: warning: listen 0.0.0.0:8740: the bearer token and every "
                             "answer cross the network unencrypted: listen on loopback and put a TLS proxy in "
                             "front\n")
    quiet = write(tmp_path, f'[admin]\nlisten = ["127.0.0.1:8741"]\n{token}')
    assert subprocess.run([ISPD, "check-config", "-c", str(quiet)], capture_output=True, text=True).stderr == ""


def test_a_walled_garden_with_nothing_to_wall_with_is_refused(tmp_path: Path) -> None:
    """From a bug hunt: `suspended = "walled-garden"` with no walled_garden_attributes and no DNS
    walled garden was accepted; a suspended subscriber then got an Access-Accept with Class and
    Acct-Interim-Interval only - no rate limit, no timeouts: more service than its plan."""
    radius = ('[radius]\nenabled = true\nlisten_auth = ["127.0.0.1:18120"]\nlisten_acct = ["127.0.0.1:18130"]\n'
              '[[radius.client]]\nname = "nas"\naddress = "198.18.0.1"\nsecret = "s"\n')
    path = write(tmp_path, radius.replace("enabled = true\n", 'enabled = true\nsuspended = "walled-garden"\n'))
    assert 'radius.suspended = "walled-garden", but radius.walled_garden_attributes is empty' in error_of(path)
    path = write(tmp_path, radius + '[[radius.plan]]\nplan = "home"\nsuspended = "walled-garden"\n')
    assert "[[radius.plan]] 'home' suspended = \"walled-garden\"" in error_of(path)
    walled = radius.replace("enabled = true\n", 'enabled = true\nsuspended = "walled-garden"\n'
                            'walled_garden_attributes = ["Filter-Id = walled"]\n')
    assert load_config(write(tmp_path, walled)).radius.walled_garden_attributes
    by_dns = radius.replace("enabled = true\n", 'enabled = true\nsuspended = "walled-garden"\n') + (
        '[dns]\nenabled = true\n[dns.walled_garden]\nportal_ipv4 = "198.18.0.10"\n')
    assert load_config(write(tmp_path, by_dns)).dns.walled_garden.portal_ipv4 is not None


@pytest.mark.parametrize(("setting", "given"), [
    ('clients = ["2001:db8:64::/48"]', "clients"),
    ("synthesize_all = true", "synthesize_all"),
    ('exclude = ["::ffff:0:0/96", "2001:db8:bad::/48"]', "exclude"),
])
def test_dns64_settings_without_a_prefix_are_refused(tmp_path: Path, setting: str, given: str) -> None:
    """From a bug hunt: [dns.dns64] with clients (or synthesize_all) and the prefix forgotten
    passed check-config, and ispd ran with DNS64 off: the IPv6-only clients listed got NODATA
    for every IPv4-only name. The defaults, which the annotated config writes out, still pass."""
    path = write(tmp_path, f"[dns.dns64]\n{setting}\n")
    assert f"dns.dns64: {given} given without prefix" in error_of(path)
    defaults = write(tmp_path, '[dns.dns64]\nexclude = ["::ffff:0:0/96"]\nsynthesize_all = false\nclients = []\n')
    assert load_config(defaults).dns.dns64.prefix is None


@pytest.mark.parametrize("setting", [
    "upstream_timeout_initial_seconds = 5",  # max is 2.0
    "upstream_timeout_initial_seconds = 0.01",  # min is 0.05
    "upstream_timeout_initial_seconds = 3\nupstream_timeout_max_seconds = 1",
])
def test_an_initial_upstream_timeout_outside_min_and_max_is_warned_of(tmp_path: Path, setting: str) -> None:
    """From a bug hunt: upstream_timeout_initial_seconds = 5 with the default max of 2 passed
    check-config, and a server not yet measured was waited 2 s, not 5 (every timeout is clamped
    to [min, max]): the setting did nothing, silently. Warned of, not refused: a config that ran
    must still start after an upgrade."""
    path = write(tmp_path, f"[dns]\nenabled = true\n[dns.resolver]\n{setting}\n")
    [warning] = load_config(path).dns.ignored_settings()
    assert "upstream_timeout_initial_seconds" in warning and "outside" in warning
    fine = write(tmp_path, "[dns]\nenabled = true\n[dns.resolver]\nupstream_timeout_initial_seconds = 2\n")
    assert load_config(fine).dns.ignored_settings() == []


def test_lease_reverse_networks_without_a_domain_are_not_answered_and_warned_of(tmp_path: Path) -> None:
    """From a bug hunt: [dns.lease_names] reverse_networks with no domain passed check-config;
    lease names were off, yet ispd answered every PTR question in those networks itself,
    NXDOMAIN, the names the real reverse zone holds never asked for."""
    path = write(tmp_path, '[dns.lease_names]\nreverse_networks = ["198.18.3.0/24"]\n')
    lease_names = load_config(path).dns.lease_names
    assert lease_names.served_reverse_networks == []
    [warning] = load_config(path).dns.ignored_settings()
    assert "reverse_networks is ignored without lease_names.domain" in warning
    named = write(tmp_path, '[dns.lease_names]\ndomain = "dyn.isp.example"\nreverse_networks = ["198.18.3.0/24"]\n')
    assert load_config(named).dns.lease_names.served_reverse_networks
    assert load_config(named).dns.ignored_settings() == []


@pytest.mark.parametrize(("key", "text"), [
    ("dns.allow.0", '[dns]\nallow = ["::ffff:198.51.100.0/120"]\n'),
    ("dns.dns64.clients.0", '[dns.dns64]\nprefix = "64:ff9b::/96"\nclients = ["::ffff:198.51.100.0/120"]\n'),
    ("dns.policy_zone.0.clients.0",
     '[[dns.policy_zone]]\nname = "rpz.example"\nfile = "rpz.zone"\nclients = ["::ffff:198.51.100.0/120"]\n'),
])
def test_a_client_network_of_ipv4_mapped_addresses_is_refused_with_the_ipv4_one_to_write(
        tmp_path: Path, key: str, text: str) -> None:
    # IPv4 clients are matched by their IPv4 address (IPv6 sockets take IPv6 only, a mapped peer
    # counts as its IPv4 address): such an entry would let no one in, silently.
    path = write(tmp_path, text)
    assert error_of(path) == (f"{path}: {key}: '::ffff:198.51.100.0/120' is IPv4-mapped IPv6, which no client is "
                              "matched as: IPv4 clients are matched by their IPv4 address (write '198.51.100.0/24')")


def test_a_radius_client_written_as_ipv4_mapped_is_refused_with_the_ipv4_address_to_write(tmp_path: Path) -> None:
    """From a bug hunt: [[radius.client]] address = "::ffff:127.86.0.9" passed check-config, and
    its NAS, sending from 127.86.0.9, was matched as a wider client (with that one's secret: bad
    Message-Authenticator) or dropped as unknown. IPv6 sockets take IPv6 only, so no NAS is ever
    seen under an IPv4-mapped address."""
    path = write(tmp_path, '[radius]\nenabled = true\n[[radius.client]]\nname = "bng"\n'
                           'address = "::ffff:198.51.100.2"\nsecret = "s3cret"\n')
    assert error_of(path) == (f"{path}: radius.client.0.address: '::ffff:198.51.100.2' is IPv4-mapped IPv6, which "
                              "no client is matched as: IPv4 clients are matched by their IPv4 address "
                              "(write '198.51.100.2/32')")
    native = write(tmp_path, '[radius]\nenabled = true\n[[radius.client]]\nname = "bng"\n'
                             'address = "2001:db8::2"\nsecret = "s3cret"\n')
    assert str(load_config(native).radius.client[0].address) == "2001:db8::2/128"


def test_radius_clients_twice_are_refused_without_a_test_per_pair() -> None:
    """From a bug hunt: the checks for a client name or address given twice compared every pair
    (and counted each name through the whole list): 5,000 [[radius.client]] entries took 0.7 s of
    the config's 0.75 s, run at start, at each SIGHUP (on the event loop) and by check-config,
    and 20,000 took 12 s."""
    def clients(count: int) -> list[dict[str, str]]:
        return [{"name": f"nas{i}", "address": f"10.{i // 250}.{i % 250}.1", "secret": "s3cret"} for i in range(count)]

    with pytest.raises(ValueError, match="client: the name 'nas1' is used twice"):
        RadiusConfig(enabled=True, client=[*clients(3), {"name": "nas1", "address": "10.9.9.9", "secret": "s"}])
    with pytest.raises(ValueError, match=re.escape("client: 10.0.1.1/32 is configured twice")):
        RadiusConfig(enabled=True, client=[*clients(3), {"name": "again", "address": "10.0.1.1/32", "secret": "s"}])
    RadiusConfig(enabled=True, client=clients(5000))  # (once a test per pair: 0.7 s; 20,000 took 12 s)


def test_a_client_network_that_only_holds_ipv4_mapped_addresses_among_others_is_taken(tmp_path: Path) -> None:
    path = write(tmp_path, '[dns]\nallow = ["::/0", "198.51.100.0/24", "2001:db8::/32"]\n')
    assert [str(n) for n in load_config(path).dns.allow] == ["::/0", "198.51.100.0/24", "2001:db8::/32"]


def test_dnstap_socket_path_empty_is_off_and_too_long_is_refused(tmp_path: Path) -> None:
    # "" was the config file's directory (dnstap on, "Connection refused" for ever), and a path
    # too long for a Unix socket passed check-config ("No such file or directory" for ever).
    config = load_config(write(tmp_path, '[dns]\nenabled = true\n[dns.dnstap]\nsocket_path = ""\n'))
    assert config.dns.dnstap.socket_path is None and not config.dns.dnstap.enabled
    path = write(tmp_path, f'[dns]\nenabled = true\n[dns.dnstap]\nsocket_path = "/run/{"x" * 120}.sock"\n')
    assert error_of(path) == (f"{path}: dns.dnstap.socket_path: /run/{'x' * 120}.sock is 130 bytes long; a Unix "
                              "socket's path can have at most 107")


def test_timers_of_addresses_in_no_pool_that_do_not_fit_are_warned_of_too(tmp_path: Path) -> None:
    """From a review: the warning looked at pools only, while a reservation's fixed address
    outside the pools gets the subnet's own times (lease_times with no pool): a subnet of
    business lines whose pool sets a lease that fits its T1 and T2, these over the section's lease
    time, gave the reserved clients 1/2 and 7/8 of it without a word."""
    path = write(tmp_path, '[dhcp]\nenabled = true\ninterfaces = ["eth1"]\n[[dhcp.subnet]]\n'
                           'network = "198.18.0.0/24"\ninterface = "eth1"\nrenew_seconds = 5000\n'
                           'rebind_seconds = 6000\n[[dhcp.subnet.pool]]\nname = "long"\n'
                           'range = "198.18.0.50 - 198.18.0.60"\nlease_seconds = 7200\n')
    dhcp = load_config(path).dhcp
    assert dhcp.lease_times(dhcp.subnet[0], None) == (3600, 1800, 3150, False)
    assert dhcp.timer_warnings() == [
        "subnet 198.18.0.0/24: its addresses in no pool (reservations): renew_seconds = 5000 and "
        "rebind_seconds = 6000 do not fit its lease time of 3600 s (T1 < T2 < lease): its clients get T1 "
        "1800 s and T2 3150 s instead; set lease_seconds beside them, or times that fit"]


def test_config_warnings_are_the_enabled_sections_each_named_by_its_event() -> None:
    """What check-config prints and the supervisor logs: the sections that run, not the others."""
    dns = {"allow": ["0.0.0.0/0"], "lease_names": {"reverse_networks": ["198.18.0.0/24"]}}
    assert Config.model_validate({"dns": dns}).warnings() == []
    warnings = Config.model_validate({"dns": {**dns, "enabled": True}}).warnings()
    assert [(w.event, w.section) for w in warnings] == [("dns.config.ignored", "dns"), ("dns.open_resolver", "dns")]
    [admin] = Config.model_validate({"admin": {"listen": ["0.0.0.0:0"], "token": "x" * 32}}).warnings()
    assert admin.event == "admin.listen.cleartext" and admin.detail.startswith("listen 0.0.0.0:0: the bearer token")


def test_eap_methods_listed_that_cannot_be_offered_are_warned_of(tmp_path: Path) -> None:
    """[radius.eap] methods = ["tls", "peap"] with a certificate and no client_ca ran offering
    PEAP alone, without a word: the devices set up for EAP-TLS got EAP-Failure after their Nak.
    The default list (written out as configs/ispd.toml has it, or not) names all four for
    whatever the section configures, and is not warned of."""
    certificate = tmp_path / "radius.pem"
    head = ('[radius]\nenabled = true\n[[radius.client]]\nname = "ap"\naddress = "127.0.0.1"\nsecret = "s3cret"\n'
            f'[radius.eap]\ncertificate = "{certificate}"\nprivate_key = "{tmp_path / "radius.key"}"\n')
    config = load_config(write(tmp_path, head + 'methods = ["tls", "peap"]\n'))
    assert config.radius.eap.offered == ["peap"]
    assert [(w.event, w.detail) for w in config.warnings()] == [
        ("radius.eap.method_unavailable", "methods: 'tls' is not offered: it needs `client_ca`")]
    assert load_config(write(tmp_path, head + 'methods = ["md5", "peap", "ttls", "tls"]\n')).warnings() == []
    assert load_config(write(tmp_path, head)).warnings() == []
    bare = load_config(write(tmp_path, '[radius]\nenabled = true\n[radius.eap]\nmethods = ["md5", "ttls"]\n'))
    assert [w.detail for w in bare.warnings()] == [
        "methods: 'ttls' is not offered: it needs `certificate` and `private_key`"]
