"""Output helpers: JSON for machines, aligned tables for people."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import click


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def emit_table(rows: Iterable[dict[str, Any]], columns: Sequence[str], *, empty: str = "(none)") -> None:
    rows = list(rows)
    if not rows:
        click.echo(empty)
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def emit_record(record: dict[str, Any], *, skip: Sequence[str] = ()) -> None:
    width = max(len(k) for k in record)
    for key, value in record.items():
        if key in skip:
            continue
        click.echo(f"{key.ljust(width)}  {_cell(value)}")


def day(iso: str | None) -> str | None:
    """The date part of an ISO timestamp, for compact tables."""
    return iso[:10] if iso else None
