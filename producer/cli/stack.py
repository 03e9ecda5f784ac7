"""Local-stack commands: ``up`` and ``demo``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from segq.errors import SegqError

from producer.display import redact
from producer.progress import err, out


def _stack_models(data_dir: Path, offline: bool) -> dict[str, str] | None:
    if not offline:
        return None
    from producer.stack import offline_models

    err.print("[yellow]offline models:[/] segq's tiny checkpoints, trained on synthetic street scenes (docs/offline-models.md)")
    return offline_models(data_dir / "models")


@click.command()
@click.option("--data-dir", default=".segq", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--offline/--hub", default=True, show_default=True,
              help="--offline: segq's tiny checkpoints (trained on synthetic street scenes); --hub: the real ones (needs hub access or HF cache).")
@click.option("--gpus", default="auto", show_default=True)
@click.option("--flower/--no-flower", default=True, show_default=True)
@click.option("--flower-auth/--no-flower-auth", default=True, show_default=True,
              help="Basic auth for Flower (every page, /metrics included): the password from SEGQ_FLOWER_PASSWORD, "
                   "else a generated one; either way it is written to DATA_DIR/segq.env, never printed, never on a "
                   "command line. --no-flower-auth leaves Flower open to every local user.")
@click.option("--flower-user", default="admin", show_default=True, help="Flower's user name.")
def up(data_dir, offline, gpus, flower, flower_auth, flower_user):
    """Start a local stack: Redis, SeaweedFS S3, one worker and Flower, on loopback.

    Prints the endpoints and writes DATA_DIR/segq.env (readable by you alone: it holds the
    credentials); in another terminal run `export SEGQ_ENV_FILE=DATA_DIR/segq.env` and use segq as
    usual. Ctrl-C stops everything. No secret is ever taken from or put on a command line, which
    every local user can read (`ps`).

    \b
    Example:
      segq up                                     # then, in another shell:
      export SEGQ_ENV_FILE=.segq/segq.env && segq submit street.jpg --task panoptic --wait
      grep FLOWER_BASIC_AUTH .segq/segq.env       # Flower's user:password
    """
    import os
    import secrets
    import signal
    import time

    from producer.stack import LocalStack

    auth = ""
    if flower_auth:
        auth = f"{flower_user}:{os.environ.get('SEGQ_FLOWER_PASSWORD') or secrets.token_urlsafe(16)}"
    elif flower:
        err.print("[yellow]warning:[/] Flower without authentication: every local user can see and control "
                  "the workers (--flower-auth is the default)")
    stack = LocalStack(data_dir, models=_stack_models(data_dir, offline), flower=flower, gpus=gpus,
                       flower_auth=auth)
    err.print("starting redis, s3, worker" + (", flower" if flower else "") + " ...")
    with stack:
        out.print(f"redis   {redact(stack.redis.url)}  (credentials in {stack.env_file})", highlight=False)
        out.print(f"s3      {stack.s3.endpoint}  bucket {stack.s3.bucket}", highlight=False)
        if flower:
            out.print(f"flower  {stack.flower.url}" + (f"  (user {flower_user}, password in {stack.env_file})"
                                                       if auth else ""), highlight=False)
        out.print(f"logs    {stack.data_dir / 'logs'}", highlight=False)
        out.print(f"\nexport SEGQ_ENV_FILE={stack.env_file}", highlight=False)
        err.print("ready; Ctrl-C stops")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while stack.worker.running or not stack.with_worker:
                time.sleep(1)
            raise SegqError(f"the worker exited; see {stack.worker.log_path}")
        except KeyboardInterrupt:
            err.print("stopping ...")


@click.command()
@click.option("--data-dir", default=".segq", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", default="segq-demo", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--offline/--hub", default=True, show_default=True,
              help="--offline: segq's tiny checkpoints (trained on synthetic street scenes); --hub: the real ones.")
@click.option("--keep", is_flag=True, help="Keep the stack running after the demo (Ctrl-C stops).")
def demo(data_dir, out_dir, offline, keep):
    """Start the local stack, segment a demo image (all three tasks) and a demo clip, show the outputs.

    The image and the clip are a street drawn by segq's scene generator with a seed its offline
    checkpoints never trained on; the overlays show sky, buildings, windows, trees, road,
    sidewalk, persons and cars segmented.

    \b
    Example:
      segq demo --keep          # leave the stack running afterwards (Ctrl-C stops it)
    """
    from producer.demo import run_demo  # the demo needs the stack and the client: loaded when it runs

    sys.exit(run_demo(data_dir, out_dir, offline=offline, keep=keep, out=out, err=err))


COMMANDS = (up, demo)
