"""The shard task: a batch's images, several at a time, as one task (``segq.shards``).

``segq.segment_shard`` is the task skeleton (``workers.tasks.skeleton``: parsing, the shard's start
and lease, the failure policy) over ``workers.tasks.image.run_shard``, which reads the shard's
list of images from S3 and runs each image (``segment_image``) in a few threads of its own
(``in_flight``: two, or ``SEGQ_MAX_BATCH`` when that is more, so that images of one size can
share a forward pass): one image is fetched and decoded while another is in the model and a
third is rendered and uploaded. What each image gave goes into the shard's results, written to
S3 once at its end, then the shard ends in one Lua step with its counts (and its message: the
task's end needs no step of its own).

- A bad image (corrupt, too large, not an image, missing, outside ``SEGQ_INPUT_PREFIXES``) fails
  with the reason; the others go on.
- A transient storage failure stops the shard's new images; those running finish, a progress
  note is written, and the skeleton sends the task again with a countdown (its retry budget
  counts from the shard's first transient failure); the next run skips what is done.
- Every ``CHECK_SECONDS`` it looks whether its batch was canceled (it stops: the images it has
  not finished are canceled) or images of it were (it skips them), and every
  ``PROGRESS_SECONDS`` it notes what it has finished, for a worker that takes it over after this
  one dies.
- Run twice (redelivered), the first run to end counts; the other's results file is removed.
"""

from __future__ import annotations

from segq.protocol import SEGMENT_SHARD
from workers.tasks.image import run_shard
from workers.tasks.skeleton import Context, shard_task


@shard_task(SEGMENT_SHARD)
def segment_shard(ctx: Context) -> dict:
    return run_shard(ctx.rt, ctx.job, ctx.attempt, set(ctx.canceled), task_id=ctx.task.request.id)
