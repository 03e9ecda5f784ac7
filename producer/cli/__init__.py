"""``segq``: queue Mask2Former segmentation jobs, follow them, fetch their outputs.

A thin layer over ``producer.Client``: parsing arguments, printing, exit codes
(``segq.errors`` lists them). The commands live in ``jobs``, ``fleet``, ``models``, ``stack``
and ``config``; this module makes the root group and is the one place that joins commands
defined outside the producer: those other installed packages declare under the
``segq.commands`` entry-point group (the worker extra's ``worker`` and ``models.tiny``; a
dotted name attaches the command to that subgroup). They are looked up only when a command
line names something that is not built in, or when commands are listed (``--help``), so
``producer`` never imports ``workers`` itself.
"""

from __future__ import annotations

import click
from rich.markup import escape

from segq import __version__
from segq.errors import SegqError, UsageError

from producer.cli import config as _config
from producer.cli import fleet as _fleet
from producer.cli import jobs as _jobs
from producer.cli import models as _models
from producer.cli import stack as _stack
from producer.progress import err
from producer.display import safe

#: The entry-point group through which installed packages add commands to ``segq``.
ENTRY_POINT_GROUP = "segq.commands"


class SegqGroup(click.Group):
    """The root group.

    Prints SegqError messages and exits with their codes instead of a traceback, and joins the
    commands of the ``segq.commands`` entry points on first need (``commands`` loads them;
    ``get_command`` returns a built-in command without looking).
    """

    def __init__(self, *args, **kwargs):
        self._extensions_joined = False
        super().__init__(*args, **kwargs)

    @property
    def commands(self) -> dict[str, click.Command]:
        if not self._extensions_joined:
            self._extensions_joined = True
            join_extensions(self)
        return self._commands

    @commands.setter
    def commands(self, value) -> None:
        self._commands = value

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        name = name or cmd.name
        if name is None:
            raise TypeError("Command has no name.")
        self._commands[name] = cmd  # without joining the extensions first

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        builtin = self._commands.get(cmd_name)
        if builtin is not None and not isinstance(builtin, click.Group):
            return builtin
        return self.commands.get(cmd_name)  # a group may have subcommands from extensions

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SegqError as exc:
            # user-supplied names (paths, keys) are in messages: control characters escaped
            message = "\n".join(safe(line) for line in str(exc).split("\n"))
            err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            ctx.exit(exc.exit_code)


def join_extensions(root: click.Group) -> None:
    """Add the commands of the ``segq.commands`` entry points to ``root`` and its subgroups.

    ``worker = "workers.host.cli:worker"`` becomes ``segq worker``; ``"models.tiny" = ...`` becomes
    ``segq models tiny``. Built-in commands win over extensions of the same name. An entry
    point that fails to load becomes a command that explains why (exit 2).
    """
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name.count("."), e.name)):
        *path, name = ep.name.split(".")
        parent = root
        for word in path:
            parent = parent.commands.get(word)
            if not isinstance(parent, click.Group):
                break
        else:
            if name not in parent.commands:
                parent.add_command(_load(ep, " ".join([*path, name])), name)


def _load(ep, words: str) -> click.Command:
    try:
        cmd = ep.load()
        if isinstance(cmd, click.Command):
            return cmd
        problem = f"{ep.value} is not a click command"
    except Exception as exc:  # ImportError, or a broken extension: `segq --help` must still work
        problem = f"{ep.value} did not load ({type(exc).__name__}: {exc})"

    def unavailable(args):
        raise UsageError(f"segq {words} is unavailable: {problem}; "
                         f"the worker commands need the worker extra: pip install 'segq[worker]'")

    return click.Command(
        words.split()[-1], callback=unavailable, help=f"Unavailable: {problem}.", short_help="(unavailable)",
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        context_settings={"ignore_unknown_options": True},
    )


@click.group(cls=SegqGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="segq")
def cli():
    """Mask2Former segmentation (semantic, instance, panoptic) as a job queue.

    Jobs go to Redis; GPU workers with the models loaded take them, write overlays, label maps
    and segment lists to S3, and record status and FPS in Redis.

    \b
    Quick start (local stack, no GPU or hub access needed):
      segq demo                     start everything, segment a demo image, show outputs
    \b
    With a running fleet (settings come from SEGQ_* variables or .env):
      segq submit street.jpg --task panoptic --wait
      segq submit photos/ --task semantic        # one job per image
      segq wait JOB...  ;  segq status JOB  ;  segq get JOB -o out/

    Exit codes: 0 ok, 1 a job failed or input refused, 2 usage, 3 Redis/S3 unreachable,
    4 no such job, 5 timeout.
    """


for _module in (_jobs, _fleet, _models, _stack, _config):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    cli(prog_name="segq")


__all__ = ["ENTRY_POINT_GROUP", "SegqGroup", "cli", "join_extensions", "main"]
