from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ispd.configtypes import Section


class StoreConfig(Section):
    # sqlite: the embedded default, one file on local disk. postgresql: a database on a
    # PostgreSQL server (tested with 15), named by url.
    backend: Literal["sqlite", "postgresql"] = "sqlite"
    # Relative paths are taken from the directory of the config file. With postgresql, the
    # daemon's local files (its lock, the DNS workers' copies) still go beside this path.
    path: Path = Path("/var/lib/ispd/ispd.db")
    # postgresql only: a libpq connection URL or string, e.g.
    # "postgresql://ispd@db.example.net/ispd" or "host=/run/postgresql dbname=ispd user=ispd".
    # Keep a password out of it: libpq reads ~/.pgpass (or the file passfile= names).
    url: str | None = None
    # How long a writer waits for another process (the CLI, a second daemon) to finish its write.
    busy_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    # Most writes grouped into one transaction (one fsync) by group commit.
    group_commit_max_batch: int = Field(default=1024, ge=1, le=100_000)
    # History older than this is purged by the daemon hourly, the first time an hour after its start.
    history_retention_days: int = Field(default=400, ge=1, le=36_500)

    @model_validator(mode="after")
    def _url_for_postgresql(self) -> StoreConfig:
        if self.backend == "postgresql" and not self.url:
            raise ValueError('backend "postgresql" needs url, e.g. url = "postgresql://ispd@db.example.net/ispd"')
        if self.backend == "sqlite" and self.url is not None:
            raise ValueError('url is for backend = "postgresql"; the sqlite store is the file at path')
        if self.url is not None:
            _check_url_parses(self.url)
        return self

    @field_validator("path")
    @classmethod
    def _a_file_name(cls, path: Path) -> Path:
        if "\x00" in str(path):
            raise ValueError("the path contains a NUL character")
        if str(path) in ("", ".") or not path.name:
            raise ValueError("the path must name a file, e.g. /var/lib/ispd/ispd.db")
        return path


def _check_url_parses(url: str) -> None:
    """A url libpq cannot read fails every connection: say so at check-config, not at the first one."""
    try:
        from psycopg import Error, conninfo
    except ImportError:  # without psycopg the store says what to install when it opens
        return
    try:
        conninfo.conninfo_to_dict(url)
    except Error as exc:
        reason = (str(exc).strip().splitlines() or ["it does not parse"])[0]
        # libpq quotes the whole URI in some reasons, its password too: this text goes to the
        # terminal and, from a rejected reload, to the log.
        reason = reason.replace(f': "{url}"', "").replace(url, "(the url)")
        # Others quote the part they could not read, which may be the password alone (a bad
        # percent-escape in it): no quoted part is shown.
        reason = re.sub(r'"[^"]*"', '"…"', reason)
        raise ValueError(f"url is not a libpq connection URL or string: {reason}") from None
