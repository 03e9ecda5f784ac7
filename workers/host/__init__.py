"""The worker process and its host.

- ``launcher``  ``segq worker``: one Celery worker process per GPU, pinned, restarted with backoff
- ``runtime``   per-process state: settings, storage, job records, models, model stage
- ``upkeep``    heartbeat, reaper and watchdog, leases of the messages held
- ``budget``    the memory budget: how many pixels a worker's tasks hold at once
- ``cli``       the ``segq`` commands of the worker extra (``segq worker``, ``segq models tiny``)
"""
