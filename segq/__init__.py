"""segq: the contract shared by the producer and the workers.

Everything both sides must agree on lives here, defined once:

- ``segq.protocol``  task names, queue names and the JSON payloads of messages
- ``segq.keys``      every Redis key of the job record
- ``segq.jobs``      the job record itself and the operations on it
- ``segq.layout``    the S3 key layout of inputs and outputs
- ``segq.settings``  the typed settings object read from the environment
- ``segq.defaults``  every default value
- ``segq.errors``    every error a user can see
- ``segq.storage``   S3 access (boto3)
- ``segq.broker``    the Celery application configuration

This package imports neither torch, transformers nor OpenCV.
"""

__version__ = "0.1.0"
