"""segq workers: GPU-pinned Celery workers that keep Mask2Former models loaded between jobs.

The package is in rooms (each has its own docstring listing its modules):

- ``workers.tasks``    the Celery side: the app and its signals, the one task skeleton, the image
                       task, the video tasks (split, chunk, assemble) and a chunk's pipeline
- ``workers.model``    the model: loading, the one inference path (``Segmenter``), the model
                       stage (one thread for every forward pass, dynamic batching), the fast
                       post-processing, device and precision, offline checkpoints
- ``workers.media``    bytes in and out: image decoding, video (probe, decode, encode, assemble),
                       predictions, rendering (overlays, label maps, segments JSON, COCO
                       panoptic), label sets
- ``workers.host``     the process: ``segq worker`` (one process per GPU), the runtime, its upkeep (heartbeat, reaper, watchdog, leases), the memory
                       budget, the ``segq`` commands of the worker extra
- ``workers.testing``  helpers of tests and benchmarks (equivalence with transformers, synthetic
                       outputs); no task imports them

Layering: ``tasks`` -> ``host`` -> ``model`` -> ``media`` -> ``segq``; nothing imports upwards
(``tests/unit/test_imports.py`` checks it). Importing any module starts nothing.
"""
