"""Writing the small TOML files the tests hand to ispd (tables of scalars and lists)."""

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
    raise TypeError(f"cannot write {value!r} as TOML")


def dumps(config: dict[str, Any], prefix: str = "") -> str:
    scalars = [f"{k} = {_value(v)}" for k, v in config.items() if not isinstance(v, dict)]
    out = "\n".join(scalars) + ("\n" if scalars else "")
    for key, value in config.items():
        if isinstance(value, dict):
            name = f"{prefix}{key}"
            out += f"\n[{name}]\n" + dumps(value, f"{name}.")
    return out


def write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(dumps(config), encoding="utf-8")
    return path
