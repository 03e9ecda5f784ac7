"""``segq config``: the effective settings, secrets redacted; ``--markdown``: the README's table."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import click

from segq.errors import UsageError

from producer.display import redact

def _plain(value: Any) -> Any:
    """A setting's value as JSON, every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _text(value: Any) -> str:
    """A setting's value as its variable would spell it."""
    if value is None or value == [] or value == {}:
        return "-"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def effective() -> list[tuple[str, Any, bool]]:
    """(variable, value with secrets redacted, set by the environment or .env) for every setting."""
    from segq.settings import ENV_FILE_VARIABLE, Settings, variables

    settings = Settings.from_env()  # also loads the .env file into os.environ
    by_field = {v.field: v.name for v in variables() if v.field}
    rows = []
    for f in fields(Settings):
        name = by_field[f.name]
        rows.append((name, _plain(getattr(settings, f.name)), bool(os.environ.get(name, "").strip())))
    rows.append((ENV_FILE_VARIABLE, os.environ.get(ENV_FILE_VARIABLE, ".env"), ENV_FILE_VARIABLE in os.environ))
    return rows


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: variable -> value.")
@click.option("--markdown", is_flag=True, help="Print the table of every variable, its meaning and default.")
def config(as_json, markdown):
    """Show the effective settings: every SEGQ_* variable and the value segq uses.

    Values come from the environment, then the .env file (SEGQ_ENV_FILE, default ./.env), then
    the defaults (marked "default"). Passwords in URLs show as ***; AWS credentials are never
    printed (boto3 reads them itself). --markdown prints the settings table of the README.

    \b
    Examples:
      segq config
      SEGQ_ENV_FILE=.segq/segq.env segq config --json | jq -r .SEGQ_REDIS_URL
      segq config --markdown
    """
    if as_json and markdown:
        raise UsageError("--json and --markdown exclude each other")
    if markdown:
        from segq.settings import markdown_table

        click.echo(markdown_table())
        return
    rows = effective()
    if as_json:
        click.echo(json.dumps({name: value for name, value, _ in rows}, indent=2))
        return
    width = max(len(name) for name, _, _ in rows)
    for name, value, is_set in rows:
        click.echo(f"{name:<{width}}  {_text(value)}" + ("" if is_set else "  (default)"))


COMMANDS = (config,)
