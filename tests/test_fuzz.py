"""Whatever an operator or a client throws at the edges, the answer is a clear error, not a crash."""

from __future__ import annotations

import asyncio
import math
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ispd.config import Config, ConfigError, load_config
from ispd.configtypes import SocketAddress
from ispd.metrics.config import MetricsConfig
from ispd.metrics.service import MetricsService
from ispd.service import ServiceContext

SECTIONS = list(Config.model_fields)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30),
                    st.lists(st.integers(), max_size=3))
keys = st.one_of(st.sampled_from(["path", "listen", "level", "format", "enabled", "backend",
                                  "shutdown_grace_seconds", "busy_timeout_seconds"]), st.text(min_size=1, max_size=10))
sections = st.dictionaries(keys, scalars, max_size=4)
documents = st.dictionaries(st.one_of(st.sampled_from(SECTIONS), st.text(min_size=1, max_size=10)),
                            st.one_of(sections, scalars), max_size=4)


def toml_value(value: Any) -> str:
    import json

    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return json.dumps(value)


def toml_text(document: dict[str, Any]) -> str:
    import json

    lines = []
    for key, value in document.items():
        if isinstance(value, dict):
            lines.append(f"[{json.dumps(key)}]")
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()]
        else:
            lines.insert(0, f"{json.dumps(key)} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=documents)
def test_any_structure_loads_or_gives_a_config_error(tmp_path: Path, document: dict[str, Any]) -> None:
    path = tmp_path / "fuzz.toml"
    text = toml_text(document)
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return  # the generator wrote something TOML does not allow (duplicate keys)
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}: ")
        assert "Traceback" not in str(exc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_any_bytes_load_or_give_a_config_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_bytes(raw)
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}: ")


@settings(max_examples=500, deadline=None)
@given(head=st.one_of(
    st.binary(max_size=200),
    st.builds(lambda m, t, v: f"{m} {t} {v}".encode(), st.sampled_from(["GET", "HEAD", "POST", "get", ""]),
              st.sampled_from(["/metrics", "/healthz", "/", "*", "/metrics?x=1", ""]), st.text(max_size=12)),
))
def test_metrics_listener_answers_any_request_head(head: bytes) -> None:
    async def health() -> tuple[bool, dict[str, Any]]:
        return True, {}

    from prometheus_client import CollectorRegistry

    context = ServiceContext(store=None, bus=None, registry=CollectorRegistry(), health_report=health)  # type: ignore[arg-type]
    service = MetricsService(Config(metrics=MetricsConfig(listen=SocketAddress("127.0.0.1", 0))), context)
    status, _, body, _ = asyncio.run(service._respond(head + b"\r\n\r\n"))
    assert status in (200, 400, 404, 405) and isinstance(body, bytes)
