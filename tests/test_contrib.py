"""Operator assets shipped in contrib/ stay valid, and name only metrics that ispd exports.

The exported names come from a running ispd with DHCP, DNS and RADIUS enabled on loopback (no
traffic is sent: every family is exported from the start), so renaming a metric, or a value of a
DNS or RADIUS label such as ``rcode``, ``port`` or ``reason``, fails here before it silently breaks
an alert or a dashboard.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.lab.dnshier import free_port
from tests.lab.ports import free_udp_port
from tests.lab.process import IspdProcess, base_config

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
PROMETHEUS = CONTRIB / "prometheus"
RULE_FILES = (PROMETHEUS / "ispd.rules.yml", PROMETHEUS / "ispd.rules.test.yml")
DASHBOARDS = sorted((CONTRIB / "grafana").glob("*.json"))
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# An ispd metric name where it stands alone (not inside a recording rule's "ispd:..." name).
METRIC = re.compile(r"(?<![A-Za-z0-9_:])ispd_[a-z0-9_]+")
SELECTOR = re.compile(r"(?<![A-Za-z0-9_:])(ispd_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
# Labels whose values are not ispd's to choose, or come from the config (pool names, certificate
# files and the services that serve them) or the code's many store operations rather than from
# a closed set exported from the start.
FOREIGN_LABELS = {"job", "instance", "le", "pool", "operation", "file", "service"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not installed (apt-get install prometheus)", pytrace=False)
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=PROMETHEUS, timeout=60)


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", "ispd.rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_fire_as_intended() -> None:
    result = promtool("test", "rules", "ispd.rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


# --- dashboards ---------------------------------------------------------------------------------


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data, also those inside collapsed rows."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, query) of every panel query and query variable."""
    for panel in panels(dashboard):
        for target in panel["targets"]:
            yield f"panel {panel['title']!r}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            yield f"variable {variable['name']!r}", query["query"] if isinstance(query, dict) else query


def test_there_is_a_dashboard() -> None:
    assert [p.name for p in DASHBOARDS] == ["ispd-dns.json", "ispd-radius.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_well_formed(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["datasource"] == DATASOURCE
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    ids = [p["id"] for p in rows] + [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    shown = list(panels(dashboard))
    assert shown
    for panel in shown:
        title = panel.get("title")
        assert title, panel
        assert panel.get("datasource") == DATASOURCE, f"{title}: datasource must be the ${{datasource}} variable"
        assert panel.get("targets"), f"{title}: no query"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, f"{title}: outside the 24-column grid"
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, title
            assert METRIC.search(target.get("expr", "")), f"{title}: a query without an ispd metric"
            assert '{instance=~"$instance"' in target["expr"], f"{title}: not filtered by $instance"


# --- the names they use are the names ispd exports ---------------------------------------------


@dataclass
class Exported:
    series: set[str] = field(default_factory=set)  # what PromQL can select: foo_total, foo_bucket, ...
    families: set[str] = field(default_factory=set)  # what documentation may name: foo_total, foo (a histogram)
    label_values: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # series -> label -> values


def parse_exposition(text: str) -> Exported:
    exported = Exported()
    for line in text.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split(" ", 3)
        if kind == "counter":
            names = {name.removesuffix("_total") + "_total"}
        elif kind == "histogram":
            names = {name + "_bucket", name + "_sum", name + "_count"}
        elif kind == "summary":
            names = {name, name + "_sum", name + "_count"}
        else:
            names = {name}
        exported.series |= names
        exported.families |= names | {name}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exported.series.add(sample.name)
            exported.families.add(sample.name)
            labels = exported.label_values.setdefault(sample.name, {})
            for label, value in sample.labels.items():
                labels.setdefault(label, set()).add(value)
    return exported


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    """What a running ispd with DHCP, DNS, RADIUS and mail exports. The resolver's root is a loopback
    address where nothing listens, DHCP listens on a free port of lo and RADIUS on free ports of
    127.0.0.1 with no clients: nothing leaves the machine. RADIUS runs in a worker process of its
    own, as ``process = "auto"`` has it on 4 CPUs or more: its metrics must come out of the main
    /metrics all the same."""
    if os.geteuid() != 0:
        pytest.skip("DHCP opens AF_PACKET sockets: needs root")
    workdir = tmp_path_factory.mktemp("contrib-ispd")
    hints = workdir / "root.hints"
    hints.write_text(".  3600000  NS  a.root.invalid.\na.root.invalid.  3600000  A  127.0.0.254\n")
    dhcp = {"enabled": True, "interfaces": ["lo"], "port": free_udp_port(),
            "subnet": [{"network": "198.18.0.0/24",
                        "pool": [{"name": "contrib", "range": "198.18.0.100 - 198.18.0.199"}]}]}
    dns = {"enabled": True, "listen": [f"127.0.0.1:{free_port()}"], "allow": ["127.0.0.0/8"],
           "root_hints": str(hints), "resolver": {"do_ipv6": False}}
    radius = {"enabled": True, "process": "own", "listen_auth": [f"127.0.0.1:{free_udp_port()}"],
              "listen_acct": [f"127.0.0.1:{free_udp_port()}"]}
    # Mail on a free port of 127.0.0.1, no checks needing DNS, its resolver a port where nothing listens.
    mail = {"enabled": True, "domains": ["isp.example"], "listen_mx": [f"127.0.0.1:{free_port()}"],
            "maildir_root": str(workdir / "mail"), "queue_directory": str(workdir / "queue"),
            "authentication_checks": False, "resolver": f"127.0.0.1:{free_udp_port()}"}
    dhcp6 = {"enabled": True, "interfaces": ["lo"], "port": free_udp_port(),
             "subnet": [{"name": "contrib6", "prefix": "2001:db8:1::/64", "interface": "lo",
                         "prefix_pool": [{"name": "contrib6-homes", "prefix": "2001:db8:100::/40",
                                          "delegated_length": 56}]}]}
    config = base_config(workdir, dns=dns, dhcp=dhcp, dhcp6=dhcp6, radius=radius, mail=mail)
    with IspdProcess(workdir, config) as ispd:
        ispd.start()
        status, text = ispd.http_get("/metrics")
        assert status == 200, text
        yield parse_exposition(text)


def promql_texts() -> Iterator[tuple[str, str]]:
    """(where, text) of everything PromQL in contrib/: rule files whole, dashboard queries."""
    for path in RULE_FILES:
        yield path.name, path.read_text()
    for path in DASHBOARDS:
        for where, query in dashboard_queries(json.loads(path.read_text())):
            yield f"{path.name} {where}", query


def unknown_names(text: str, known: set[str]) -> set[str]:
    # A name ending in "_" is a prefix in prose ("ispd_dns_*"), not a metric.
    return {name for name in METRIC.findall(text) if not name.endswith("_") and name not in known}


def unknown_label_values(text: str, exported: Exported) -> list[str]:
    """Label matchers whose value ispd never exports. The collectors export every value of their
    closed label sets from the start (at 0), so a value missing from the exposition is a typo or a
    renamed one, or a series that would first appear at its first event: increase() and rate()
    see no increase in that first sample, so an alert on "any store_error" would miss it."""
    problems = []
    for name, matchers in SELECTOR.findall(text):
        values = exported.label_values.get(name, {})
        for label, op, value in MATCHER.findall(matchers):
            if label in FOREIGN_LABELS or op.startswith("!"):
                continue
            if op == "=~":
                if not re.fullmatch(r"[A-Za-z0-9_|]+", value):
                    continue  # a real pattern: nothing to look up
                wanted = value.split("|")
            else:
                wanted = [value]
            problems += [f'{name}{{{label}="{v}"}}' for v in wanted if v not in values.get(label, set())]
    return problems


def test_exported_names_are_read_correctly(exported: Exported) -> None:
    """The checks below are only as good as this parse."""
    assert "ispd_dns_queries_total" in exported.series
    assert "ispd_dns_queries" not in exported.series
    assert {"ispd_dns_answer_seconds_bucket", "ispd_dns_answer_seconds_count"} <= exported.series
    assert "ispd_dns_answer_seconds" not in exported.series
    assert "ispd_dns_answer_seconds" in exported.families
    assert "ispd_dhcp_packets_dropped_total" in exported.series  # no sample yet, but declared
    assert {"ispd_dhcp6_pool_size", "ispd_dhcp6_pool_assigned", "ispd_dhcp6_packets_dropped_total"} <= exported.series
    assert {"ispd_radius_dropped_total", "ispd_radius_processing_seconds_bucket", "ispd_radius_open_sessions"} <= (
        exported.series)
    assert "SERVFAIL" in exported.label_values["ispd_dns_answers_total"]["rcode"]
    assert unknown_names("rate(ispd_dns_querys_total[5m]) / ispd:dns_queries:rate5m", exported.series) == {
        "ispd_dns_querys_total"}
    assert unknown_label_values('ispd_dns_answers_total{job="ispd", rcode="SERVFAILED"}', exported) == [
        'ispd_dns_answers_total{rcode="SERVFAILED"}']
    assert unknown_label_values('ispd_dns_dropped_total{reason=~"overload|ratelimited"}', exported) == [
        'ispd_dns_dropped_total{reason="ratelimited"}']
    assert exported.label_values["ispd_radius_dropped_total"]["port"] == {"auth", "acct"}
    assert unknown_label_values(
        'ispd_radius_dropped_total{port="acct", reason=~"accounting_queue_full|overloaded"}', exported) == [
        'ispd_radius_dropped_total{reason="overloaded"}']
    assert unknown_label_values('ispd_radius_duplicates_total{kind="auth"}', exported) == [
        'ispd_radius_duplicates_total{kind="auth"}']


def test_rules_and_dashboards_use_only_exported_metrics(exported: Exported) -> None:
    problems = []
    for where, text in promql_texts():
        problems += [f"{where}: {name} is not exported" for name in sorted(unknown_names(text, exported.series))]
        problems += [f"{where}: {selector} is never exported" for selector in unknown_label_values(text, exported)]
    assert not problems, "\n".join(problems)


def test_contrib_readme_names_only_exported_metrics(exported: Exported) -> None:
    """The Unbound and freeradius_exporter translation tables name ispd's metrics; they must exist."""
    text = (CONTRIB / "README.md").read_text()
    assert unknown_names(text, exported.families) == set()
    assert METRIC.search(text)


def test_the_unbound_table_maps_every_statistic_ispd_has_an_equivalent_of() -> None:
    """From a bug hunt: num.query.tcp, .tls, .https, .tcpout and num.query.ratelimited had ispd
    equivalents (ispd_dns_transport_queries_total, ispd_dns_upstream_tcp_queries_total,
    ispd_dns_zone_rate_limited_total) but no row, and the notes said TCP queries were not
    counted, so an Unbound dashboard's panels for them were dropped when ported."""
    text = (CONTRIB / "README.md").read_text()
    section = text.split("## Porting an Unbound dashboard", 1)[1].split("\n## ", 1)[0]
    mapped: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("| `") else []
        if len(cells) >= 3:
            for key in re.findall(r"`([a-z][a-z0-9_.*-]+)`", cells[0]):
                mapped[key] = cells[2]
    for key in ("num.queries", "num.cachehits", "num.query.tcp", "num.query.tls", "num.query.https",
                "num.query.tcpout", "num.query.ratelimited", "num.queries_ip_ratelimited"):
        assert METRIC.search(mapped.get(key, "")), f"{key}: no row naming an ispd metric"
