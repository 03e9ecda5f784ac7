"""segq workers: GPU-pinned Celery workers that keep Mask2Former models loaded between jobs.

Modules: ``app`` (the Celery app and worker start-up), ``tasks`` (Celery tasks),
``runtime`` (per-process state: models, storage, job store), ``models`` (loading
checkpoints), ``device`` (device and precision), ``decode`` (safe image decoding),
``inference`` (forward pass and post-processing), ``render`` (overlays, label maps,
segments JSON, COCO panoptic), ``labels`` (class names and palettes), ``checkpoints``
(offline random-initialised checkpoints), ``launcher`` (``segq worker``: one process per GPU).
"""
