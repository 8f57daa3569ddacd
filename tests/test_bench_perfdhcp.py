"""The pure parts the perfdhcp benchmarks (bench/dhcp.py, bench/dhcp6.py) read their figures with."""

from __future__ import annotations

from bench.common import Step, parse_perfdhcp, udp6_rcvbuf_errors_in, udp_rcvbuf_errors_in

# The end of a perfdhcp -6 report (Kea 2.2.0), as bench/dhcp6.py reads it.
PERFDHCP6_REPORT = """\
***Rate statistics***
Rate: 2472.95 4-way exchanges/second, expected rate: 4000
***Statistics for: SOLICIT-ADVERTISE***
sent packets: 19999
received packets: 16568
drops: 3431
drops ratio: 17.1559 %
orphans: 0
min delay: 0.090 ms
avg delay: 21.845 ms
max delay: 103.931 ms
***Statistics for: REQUEST-REPLY***
sent packets: 16568
received packets: 14839
drops: 1729
drops ratio: 10.436 %
orphans: 2
min delay: 0.108 ms
avg delay: 16.461 ms
max delay: 102.630 ms
"""


def test_a_dhcpv6_report_gives_both_pairs_and_the_step_its_sarr_rate() -> None:
    pairs = parse_perfdhcp(PERFDHCP6_REPORT)
    assert set(pairs) == {"SOLICIT-ADVERTISE", "REQUEST-REPLY"}
    solicit, request = pairs["SOLICIT-ADVERTISE"], pairs["REQUEST-REPLY"]
    assert (solicit.sent, solicit.received, solicit.drops) == (19999, 16568, 3431)
    assert (request.received, request.orphans, request.max_ms) == (14839, 2, 102.630)
    step = Step("kea", 4000, 5, offer=solicit, bind=request)
    assert step.per_second == 14839 / 5
    assert round(step.lost_percent, 2) == round(100 * (1 - 14839 / 19999), 2)
    assert step.max_ms == 103.931


def test_udp_drop_counters_come_from_snmp_for_ipv4_and_snmp6_for_ipv6() -> None:
    snmp = ("Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n"
            "Udp: 10 0 7 10 7 0\n")
    snmp6 = "Udp6InDatagrams                 \t120\nUdp6InErrors                    \t5160\n" \
            "Udp6RcvbufErrors                \t5160\nUdp6SndbufErrors                \t0\n"
    assert udp_rcvbuf_errors_in(snmp) == 7
    assert udp6_rcvbuf_errors_in(snmp6) == 5160
    assert udp6_rcvbuf_errors_in(snmp) == 0  # IPv4 traffic is not counted there
