"""The Celery side of a worker: thin tasks over plain functions.

- ``app``       the worker's Celery app (``celery -A workers.tasks.app``) and its signals (boot,
                leases of received messages, shutdown)
- ``skeleton``  the one task skeleton: parse, skip when final, guarded work, follow-up
- ``image``     the image task: fetch, decode, segment, render, upload, finish
- ``video``     the video tasks: split into chunks, a chunk, assemble (exactly once)
- ``chunk``     a chunk's frames through the model (``ChunkPipeline``)
- ``threads``   the threads that keep a chunk's frames moving (decode ahead, encode behind)
- ``outputs``   an image job's files encoded and uploaded several at once
"""
