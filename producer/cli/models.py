"""``segq models``: the models the fleet serves.

``segq models tiny`` (offline checkpoints) needs torch: it comes from the worker extra, joined
to this group by ``producer.cli`` through the ``segq.commands`` entry point ``models.tiny``.
"""

from __future__ import annotations

import click

from producer import display
from producer.progress import out


@click.group()
def models():
    """The models the fleet serves, and offline stand-ins.

    \b
    Examples:
      segq models list
      segq models tiny ./models    # prints the SEGQ_MODELS line for them
    """


@models.command(name="list")
@click.option("--json", "as_json", is_flag=True)
def models_list(as_json):
    """Configured model names, their checkpoints, and which task uses which by default."""
    from segq.settings import Settings

    s = Settings.from_env()
    rows = [{"model": n, "checkpoint": c, "default_for": [t for t, m in s.task_models.items() if m == n]}
            for n, c in s.models.items()]
    if as_json:
        display.print_json(out, rows)
    else:
        for row in rows:
            tasks = f"  (default for {', '.join(row['default_for'])})" if row["default_for"] else ""
            out.print(f"{row['model']:<16} {row['checkpoint']}{tasks}", highlight=False)


COMMANDS = (models,)
