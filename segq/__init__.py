"""segq: the contract shared by the producer and the workers.

Everything both sides must agree on lives here, defined once:

- ``segq.protocol``      task names, queues, task ids and the JSON payloads of messages
- ``segq.states``        job and batch states (which are final), job kinds, priorities
- ``segq.keys``          every Redis key
- ``segq.scripts``       the Lua scripts (``segq/lua/*.lua``): every multi-key step, atomic
- ``segq.jobs``          the job record and its moves
- ``segq.batches``       batches: one handle on many jobs, counters moved with their jobs
- ``segq.manifest``      a batch's manifest (which input became which output)
- ``segq.scheduler``     fair, prioritised release of work into the model queues
- ``segq.messages``      Celery's task envelopes, built ahead of their sending
- ``segq.leases``        leases of held messages and the reaper of dead workers' work
- ``segq.watchdog``      lost messages found and sent again
- ``segq.registry``      the worker registry (records, counters, heartbeats)
- ``segq.transport``     kombu's Redis transport, made to survive what it pops
- ``segq.deadletters``   poison messages, kept with their reason
- ``segq.metrics``       Prometheus histograms kept in Redis
- ``segq.connections``   every Redis client (Sentinel, patience) and the broker URL
- ``segq.broker``        the Celery application configuration and worker policy
- ``segq.layout``        the S3 key layout of inputs and outputs
- ``segq.storage``       S3 access (boto3), with retries of transient errors
- ``segq.input_policy``  which S3 objects may be inputs (``SEGQ_INPUT_PREFIXES``)
- ``segq.retention``     lifecycle rules of the bucket (``SEGQ_RETENTION_DAYS``)
- ``segq.media``         what a file is, from its bytes
- ``segq.limits``        the input limits and their messages
- ``segq.settings``      the typed settings object read from the environment
- ``segq.defaults``      every default value
- ``segq.errors``        every error a user can see, with its exit code
- ``segq.backoff``       the one retry backoff
- ``segq.process``       child processes that do not outlive their parent

This package imports neither torch, transformers nor OpenCV, and nothing on import but its own
modules and the libraries of the base install.
"""

__version__ = "0.1.0"
