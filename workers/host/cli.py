"""The ``segq`` commands that need the worker extra: ``segq worker`` and ``segq models tiny``.

``producer.cli`` joins them to the ``segq`` group through the ``segq.commands`` entry points
declared in ``pyproject.toml`` (the producer never imports ``workers``). This module imports
only click and the contract at load time, so ``segq --help`` and ``segq worker --help`` work
without torch; the command bodies import what they need. ``segq worker`` is the launcher's
parent process and never imports torch: each Celery child it starts does.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import click

from segq.errors import UsageError

#: The modules of the worker extra (``pip install 'segq[worker]'``), by import name.
WORKER_EXTRA = ("torch", "transformers", "scipy", "safetensors", "numpy", "PIL", "cv2", "av")


def missing_worker_extra() -> list[str]:
    """The worker extra's modules that cannot be imported here (found without importing them)."""
    missing = []
    for module in WORKER_EXTRA:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return missing


def require_worker_extra(command: str) -> None:
    missing = missing_worker_extra()
    if missing:
        raise UsageError(f"segq {command} needs the worker extra: pip install 'segq[worker]' "
                         f"(not installed: {', '.join(missing)})")


@click.command()
@click.option("--gpus", default="auto", show_default=True,
              help="auto (all GPUs, else CPU), all, cpu, or indexes such as 0,1. One process per GPU.")
@click.option("--models", help="Models to load and serve, by name or task (default: each task's model).")
@click.option("--queues", help="Extra queues to consume besides the models' own.")
@click.option("--name", help="Node name prefix (default segq); the device is appended: NAME-gpu0@host.")
@click.option("--threads", type=click.IntRange(1, 1024),
              help="CPU cores per worker process (default: the host's usable cores, its CPU affinity and "
                   "cgroup quota, split evenly between the processes; docs/fleet.md).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
              help="auto = fp16 on CUDA, fp32 on CPU.")
@click.option("--loglevel", default="info", show_default=True)
def worker(gpus, models, queues, name, threads, precision, loglevel):
    """Run GPU-pinned workers: one Celery worker process per GPU, models kept loaded.

    Needs the worker extra: pip install 'segq[worker]'. Each process sees only its GPU
    (CUDA_VISIBLE_DEVICES), loads its models once at start, and takes one job at a time.

    \b
    Examples:
      segq worker                          # every GPU of this host
      segq worker --gpus 0,1 --models panoptic
      segq worker --gpus cpu --threads 2   # no GPU
    """
    require_worker_extra("worker")
    from segq.settings import Settings
    from workers.host import launcher

    settings = Settings.from_env()
    procs = launcher.plan(settings, gpus=gpus, models=models, extra_queues=queues, name=name)
    for p in procs:
        device = f"GPU {p.cuda_visible_devices}" if p.cuda_visible_devices else "CPU"
        click.echo(f"starting {p.hostname} on {device}: models {', '.join(p.models)}", err=True)
    sys.exit(launcher.run(procs, loglevel=loglevel, threads=threads, precision=precision,
                          redis_url=settings.redis_url))


@click.command(name="tiny")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--random", "random_weights", is_flag=True,
              help="Random-initialised weights instead of the trained ones (noise-like outputs, for tests).")
@click.option("--json", "as_json", is_flag=True, help='Print {"name": "folder", ...} as JSON instead.')
def models_tiny(directory, random_weights, as_json):
    """Write small offline checkpoints for machines without hub access.

    Three folders (ade-semantic, coco-instance, coco-panoptic) with the real label sets, in
    the format from_pretrained reads; prints the SEGQ_MODELS line that points workers at them.
    By default the weights segq ships, trained on synthetic street scenes: they segment sky,
    building, window, tree, road, sidewalk, person and car in scenes like the demo's (a tiny
    model: do not expect much on real photos). With --random: random-initialised weights whose
    predictions are MEANINGLESS, for tests that need noise-like outputs.

    \b
    Examples:
      segq models tiny ./models            # SEGQ_MODELS=ade-semantic=/abs/models/tiny-ade-semantic,...
      segq models tiny ./models --json     # {"ade-semantic": "/abs/models/tiny-ade-semantic", ...}
      segq models tiny ./models --random   # .../tiny-random-ade-semantic,...
    """
    require_worker_extra("models tiny")
    from transformers.utils import logging as hf_logging

    from workers.model.checkpoints import make_all_tiny

    hf_logging.disable_progress_bar()  # "Writing model shards" and "Loading weights" bars for 1.5 MB files
    paths = make_all_tiny(directory, random=random_weights)
    if as_json:
        click.echo(json.dumps(paths))
    else:
        click.echo("SEGQ_MODELS=" + ",".join(f"{k}={v}" for k, v in paths.items()))
