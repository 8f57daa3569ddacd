"""Config of address pools RADIUS shares with DHCP.

A plan names a DHCP pool to share it; the store can only keep the two services apart if both
see the same range under the same name, so anything else that makes them overlap is refused
when the config is loaded, not discovered as a double-assigned address later.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ispd.config import load_config
from tests.lab.process import ISPD
from tests.test_config import error_of, write

DHCP = """
[dhcp]
enabled = true
interfaces = ["eth1"]

[[dhcp.subnet]]
network = "198.18.0.0/24"
interface = "eth1"

[[dhcp.subnet.pool]]
name = "lan"
range = "198.18.0.100 - 198.18.0.199"
"""

RADIUS = """
[radius]
enabled = true
listen_auth = ["127.0.0.1:18120"]
listen_acct = ["127.0.0.1:18130"]

[[radius.client]]
name = "nas"
address = "127.0.0.0/8"
secret = "testing123"
"""


def plan(pool: str) -> str:
    return f'\n[[radius.plan]]\nplan = "home"\naddress_pool = "{pool}"\n'


def radius_pool(name: str, range_: str) -> str:
    return f'\n[[radius.address_pool]]\nname = "{name}"\nrange = "{range_}"\n'


def test_a_plan_naming_a_dhcp_pool_shares_it_with_its_range(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, DHCP + RADIUS + plan("lan")))
    [pool] = config.radius.address_pool
    assert (pool.name, pool.range) == ("lan", "198.18.0.100 - 198.18.0.199")
    assert pool.bounds == (0xC6120064, 0xC61200C7)


def test_a_radius_pool_of_the_same_name_and_range_shares_it_once(tmp_path: Path) -> None:
    # Spelling the shared pool out is allowed; it must not be added a second time.
    text = DHCP + RADIUS + radius_pool("lan", "198.18.0.100 - 198.18.0.199") + plan("lan")
    config = load_config(write(tmp_path, text))
    assert [p.name for p in config.radius.address_pool] == ["lan"]


def test_a_plan_naming_a_radius_pool_adds_nothing(tmp_path: Path) -> None:
    text = DHCP + RADIUS + radius_pool("bng", "198.18.8.10 - 198.18.8.250") + plan("bng")
    config = load_config(write(tmp_path, text))
    assert [(p.name, p.range) for p in config.radius.address_pool] == [("bng", "198.18.8.10 - 198.18.8.250")]


def test_a_plan_naming_an_unknown_pool(tmp_path: Path) -> None:
    path = write(tmp_path, DHCP + RADIUS + plan("lna"))
    assert error_of(path) == (f"{path}: radius.plan 'home': address_pool 'lna' is neither a "
                              "[[radius.address_pool]] nor a [[dhcp.subnet.pool]]")


def test_a_radius_pool_overlapping_a_dhcp_pool_of_another_name(tmp_path: Path) -> None:
    # Two names for some of the same addresses: the store could not tell that they clash.
    path = write(tmp_path, DHCP + RADIUS + radius_pool("bng", "198.18.0.150 - 198.18.0.250"))
    assert error_of(path) == (f"{path}: radius.address_pool 'bng' overlaps the DHCP pool 'lan'; "
                              "to share that pool, name it in the plan's address_pool instead")


def test_a_radius_pool_named_like_a_dhcp_pool_with_another_range(tmp_path: Path) -> None:
    path = write(tmp_path, DHCP + RADIUS + radius_pool("lan", "198.18.0.100 - 198.18.0.150"))
    assert error_of(path) == (f"{path}: radius.address_pool 'lan': the DHCP pool of that name is "
                              "198.18.0.100 - 198.18.0.199; give the same range to share it, or another name")


def test_a_radius_pool_named_like_a_dhcp_pool_without_overlap_is_still_refused(tmp_path: Path) -> None:
    # Same name, disjoint range: leases of both would carry one pool name for different addresses.
    path = write(tmp_path, DHCP + RADIUS + radius_pool("lan", "198.18.8.10 - 198.18.8.20"))
    assert "the DHCP pool of that name is" in error_of(path)


def test_two_radius_pools_that_overlap(tmp_path: Path) -> None:
    text = RADIUS + radius_pool("a", "198.18.8.10 - 198.18.8.20") + radius_pool("b", "198.18.8.20 - 198.18.8.30")
    path = write(tmp_path, text)
    assert error_of(path) == f"{path}: radius: address_pool: pools 'a' and 'b' overlap"


def test_two_radius_pools_that_touch_without_overlapping(tmp_path: Path) -> None:
    text = RADIUS + radius_pool("a", "198.18.8.10 - 198.18.8.20") + radius_pool("b", "198.18.8.21 - 198.18.8.30")
    config = load_config(write(tmp_path, text))
    assert [p.name for p in config.radius.address_pool] == ["a", "b"]


def test_two_radius_pools_of_one_name(tmp_path: Path) -> None:
    text = RADIUS + radius_pool("a", "198.18.8.10 - 198.18.8.20") + radius_pool("a", "198.18.9.10 - 198.18.9.20")
    path = write(tmp_path, text)
    assert error_of(path) == f"{path}: radius: address_pool: two pools have one name"


def test_a_radius_pool_range_backwards(tmp_path: Path) -> None:
    path = write(tmp_path, RADIUS + radius_pool("a", "198.18.8.20 - 198.18.8.10"))
    assert error_of(path) == (f"{path}: radius.address_pool.0.range: range '198.18.8.20 - 198.18.8.10': "
                              "the first address is after the last")


def test_pools_are_not_checked_while_radius_is_disabled(tmp_path: Path) -> None:
    # A disabled section may keep a half-edited plan without stopping DHCP from starting.
    text = DHCP + RADIUS.replace("enabled = true", "enabled = false") + plan("nowhere")
    config = load_config(write(tmp_path, text))
    assert config.radius.address_pool == []


def test_a_radius_pool_must_not_include_a_dhcp_subnets_router(tmp_path: Path) -> None:
    # A PPPoE session given the subnet's gateway address would cut the subnet's DHCP clients off.
    text = DHCP.replace('interface = "eth1"\n', 'interface = "eth1"\nrouters = ["198.18.0.1"]\n', 1)
    path = write(tmp_path, text + RADIUS + radius_pool("bng", "198.18.0.1 - 198.18.0.50") + plan("bng"))
    assert error_of(path) == (f"{path}: radius.address_pool 'bng' includes 198.18.0.1, a router, server or "
                              "network address of the DHCP subnet 198.18.0.0/24")


def test_a_radius_pool_must_not_include_a_router_given_as_option_3(tmp_path: Path) -> None:
    # Written as Kea writes routers (option-data), on the subnet or for every subnet.
    for where, option in (("subnet", '[[dhcp.subnet.option]]\ncode = 3\naddresses = ["198.18.0.1"]\n'),
                          ("global", '[[dhcp.option]]\ncode = 3\naddresses = ["198.18.0.1"]\n')):
        dhcp = DHCP.replace("[[dhcp.subnet.pool]]", option + "[[dhcp.subnet.pool]]", 1) if where == "subnet" \
            else DHCP.replace("[[dhcp.subnet]]", option + "[[dhcp.subnet]]", 1)
        path = write(tmp_path, dhcp + RADIUS + radius_pool("bng", "198.18.0.1 - 198.18.0.50") + plan("bng"))
        assert error_of(path) == (f"{path}: radius.address_pool 'bng' includes 198.18.0.1, a router, server or "
                                  "network address of the DHCP subnet 198.18.0.0/24"), where


def test_a_radius_pool_holding_a_dhcp_pools_own_router_is_warned_of_and_never_given(tmp_path: Path) -> None:
    """A subnet's router in a RADIUS pool is refused; a pool's own (its `routers`) was accepted
    without a word, and RADIUS could give a session the gateway's address. A config that ran
    must still start: a warning, and RADIUS leaves that address out."""
    dhcp = DHCP.replace('range = "198.18.0.100 - 198.18.0.199"\n',
                        'range = "198.18.0.100 - 198.18.0.199"\nrouters = ["198.18.0.1"]\n')
    path = write(tmp_path, dhcp + RADIUS + radius_pool("bng", "198.18.0.1 - 198.18.0.50") + plan("bng"))
    config = load_config(path)
    assert config.radius_pool_routers() == {0xC6120001: (
        "radius.address_pool 'bng' includes 198.18.0.1, a router of the DHCP pool 'lan' (subnet 198.18.0.0/24): "
        "RADIUS does not give it; leave it out of the range")}
    checked = subprocess.run([ISPD, "check-config", "-c", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0
    assert "radius: warning: radius.address_pool 'bng' includes 198.18.0.1, a router of the DHCP pool" in checked.stderr
    # A shared DHCP pool is not RADIUS's own: the DHCP pool's checks keep routers out of it.
    assert load_config(write(tmp_path, dhcp + RADIUS + plan("lan"))).radius_pool_routers() == {}
