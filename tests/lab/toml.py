"""Writing the TOML files the tests hand to ispd: tables, arrays of tables (``[[dhcp.subnet]]``),
scalars, lists and inline tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def dumps(config: dict[str, Any], prefix: str = "") -> str:
    scalars = [f"{k} = {_value(v)}" for k, v in config.items() if not isinstance(v, dict) and not _is_table_array(v)]
    out = "\n".join(scalars) + ("\n" if scalars else "")
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += f"\n[{name}]\n" + dumps(value, f"{name}.")
        elif _is_table_array(value):
            for item in value:
                out += f"\n[[{name}]]\n" + dumps(item, f"{name}.")
    return out


def write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(dumps(config), encoding="utf-8")
    return path
