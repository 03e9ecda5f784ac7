"""Storage errors are sorted into transient (retried within the budget) and deterministic
(the job fails at once), from botocore's own exception objects."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

from segq.errors import ObjectNotFound, ServiceRefused, ServiceUnavailable
from segq.settings import Settings
from segq.storage import Storage


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


@pytest.fixture(scope="module")
def storage():
    return Storage(Settings.from_env({"SEGQ_S3_ENDPOINT_URL": "http://127.0.0.1:9"}))


@pytest.mark.parametrize("exc", [
    EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
    ConnectTimeoutError(endpoint_url="http://127.0.0.1:9"),
    ReadTimeoutError(endpoint_url="http://127.0.0.1:9"),
    client_error("SlowDown", 503), client_error("InternalError", 500), client_error("", 502),
    client_error("Throttling", 400), client_error("TooManyRequests", 429),
])
def test_transient_errors_are_retried(storage, exc):
    err = storage._explain(exc, "s3://segq/inputs/x/input.png")
    assert isinstance(err, ServiceUnavailable) and err.transient


@pytest.mark.parametrize("exc, kind", [
    (client_error("NoSuchBucket", 404), ServiceRefused),
    (client_error("AccessDenied", 403), ServiceRefused),
    (client_error("InvalidRequest", 400), ServiceRefused),
    (client_error("NoSuchKey", 404), ObjectNotFound),
])
def test_deterministic_errors_fail_at_once(storage, exc, kind):
    err = storage._explain(exc, "s3://segq/inputs/x/input.png")
    assert isinstance(err, kind) and not getattr(err, "transient", False)
