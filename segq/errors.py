"""Every error a segq user can see, with the exit code the CLI uses for it.

Exit codes a script can rely on:

====  ===================================================================
0     success
1     a job failed (``wait``/``submit --wait``), or the input was refused
2     usage error: unknown option, task or model, bad argument
3     Redis or S3 cannot be reached, or refused the credentials
4     no such job
5     timed out while waiting
====  ===================================================================
"""


class SegqError(Exception):
    """Base class of errors shown to users. ``str(err)`` is the message to print."""

    exit_code = 1


class ConfigError(SegqError):
    """A setting (environment variable or ``.env``) has an invalid value."""

    exit_code = 2


class UsageError(SegqError):
    """The request itself is wrong: unknown task or model, bad option."""

    exit_code = 2


class UnknownTask(UsageError):
    pass


class UnknownModel(UsageError):
    pass


class ServiceUnavailable(SegqError):
    """Redis or S3 cannot be reached, or refused us.

    ``transient``: whether trying again later may succeed (unreachable, timeouts, 5xx,
    throttling). Workers retry transient errors with backoff up to ``SEGQ_RETRY_BUDGET`` and fail
    the job at once on the others.
    """

    exit_code = 3
    transient = True


class ServiceRefused(ServiceUnavailable):
    """A deterministic refusal: no such bucket, access denied, invalid request. Retrying will
    not help."""

    transient = False


class JobNotFound(SegqError):
    exit_code = 4


class BatchNotFound(JobNotFound):
    """No batch of that name (exit 4, as for a job)."""


class WaitTimeout(SegqError):
    exit_code = 5


class InputError(SegqError):
    """The input itself is bad (empty, corrupt, wrong type, too large, missing).

    Raised by workers: the job is marked failed with this message and never retried.
    Raised by the producer: nothing is queued.
    """

    exit_code = 1


class ObjectNotFound(InputError):
    """An S3 object (an input) does not exist."""


class JobFailed(SegqError):
    """One or more jobs ended in the ``failed`` state."""

    exit_code = 1
