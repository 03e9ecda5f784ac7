"""Bad input gets a clear error: the job fails with a reason, `segq wait` exits non-zero,
the worker keeps serving, and no other job is touched."""

from __future__ import annotations

import pytest

from segq.protocol import SEGMENT_SHARD, model_queue, new_job_id, shard_task_id

from support.cli import segq
from support.media import huge_png, photo, truncated_jpeg
from support.fleet import lone_shard

pytestmark = pytest.mark.e2e


def make_bad_inputs(tmp_path, client) -> dict[str, tuple[str, str]]:
    """name -> (what to submit, expected fragment of the error)."""
    # (an empty file and a text file named .jpg are refused at submit: test_security.py)
    return {
        "corrupt jpeg": (str(truncated_jpeg(tmp_path / "broken.jpg")), "corrupt or truncated JPEG image"),
        "over the pixel limit": (str(huge_png(tmp_path / "huge.png")), "over the limit of 4.0 MP"),
    }


def test_bad_inputs_fail_with_reasons_and_the_worker_goes_on(client, worker, tmp_path):
    good_before = client.submit([str(photo(tmp_path / "ok1.png", (96, 64)))], task="semantic")[0]
    bad = make_bad_inputs(tmp_path, client)
    jobs = {name: client.submit([path], task="semantic")[0] for name, (path, _) in bad.items()}

    result = segq("wait", *[j.id for j in jobs.values()], "--timeout", "120")
    assert result.returncode == 1, result.stderr
    assert "2 failed of 2 jobs" in result.stderr

    for name, job in jobs.items():
        record = client.status(job.id)
        assert record.state == "failed", name
        assert bad[name][1] in record.error, f"{name}: {record.error}"
        assert record.worker and record.outputs == []

    # The worker still serves, and the job queued before the bad ones was not touched.
    good_after = client.submit([str(photo(tmp_path / "ok2.png", (96, 64)))], task="semantic")[0]
    records = client.wait([good_before.id, good_after.id], timeout=60)
    assert [r.state for r in records] == ["done", "done"]


def test_a_missing_s3_key_is_refused_at_submit_and_an_input_gone_later_fails_its_job(client, worker):
    missing = f"s3://{client.settings.s3_bucket}/inputs/nope/missing.jpg"
    result = segq("submit", missing, "--task", "semantic")
    assert result.returncode == 1 and f"not found: {missing}" in result.stderr
    # an input deleted after its job was queued: the worker fails the image with the reason
    job_id, batch, shard = lone_shard(client, missing)
    payload = {"batch": batch, "shard": f"{shard:06d}", "task": "semantic", "model": "ade-semantic"}
    client.celery.send_task(SEGMENT_SHARD, kwargs=payload, queue=model_queue("ade-semantic"),
                            task_id=shard_task_id(batch, shard))
    [record] = client.wait([job_id], timeout=60)
    assert record.state == "failed" and f"input not found: {missing}" in record.error


def test_status_of_a_failed_job_exits_non_zero_and_shows_the_reason(client, tmp_path):
    # (a local empty file is refused at submit; one already in storage fails on the worker)
    key = f"inputs/{new_job_id()}/zero.png"
    client.storage.put_bytes(key, b"")
    [job] = client.submit([f"s3://{client.settings.s3_bucket}/{key}"], task="instance")
    client.wait([job.id], timeout=60)
    result = segq("status", job.id)
    assert result.returncode == 1
    assert "failed" in result.stdout and "input is empty" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "depth"], "Invalid value for '-t' / '--task'"),
        (["--task", "semantic", "--model", "sam-huge"], "unknown model 'sam-huge': the fleet serves"),
    ],
)
def test_unknown_task_or_model_is_refused_at_submit_and_nothing_is_queued(client, tmp_path, redis_client, args, message):
    before = redis_client.zcard("segq:batches")
    result = segq("submit", str(photo(tmp_path / "x.png", (64, 48))), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert redis_client.zcard("segq:batches") == before


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("task", "depth", "invalid request: unknown task 'depth'"),
        ("model", "sam-huge", "model 'sam-huge' is not served by worker"),
    ],
)
def test_a_message_naming_an_unknown_task_or_model_fails_its_job_on_the_worker(client, tmp_path, field, value, message):
    """A producer that skipped validation (old version, hand-written message) cannot hurt the worker."""
    src = photo(tmp_path / "y.png", (64, 48))
    obj = client.storage.put_file(src, f"inputs/manual/{field}.png")
    job_id, batch, shard = lone_shard(client, obj.uri)
    payload = {"batch": batch, "shard": f"{shard:06d}", "task": "semantic", "model": "ade-semantic", "version": 1,
               field: value}
    client.celery.send_task(SEGMENT_SHARD, kwargs=payload, queue=model_queue("ade-semantic"),
                            task_id=shard_task_id(batch, shard))
    [record] = client.wait([job_id], timeout=60)
    assert record.state == "failed"
    assert message in record.error


def test_missing_files_and_unknown_content_are_refused_before_queueing(client, tmp_path, redis_client):
    before = redis_client.zcard("segq:batches")
    result = segq("submit", str(tmp_path / "nowhere.jpg"), "--task", "semantic")
    assert result.returncode == 1 and "no such file or directory" in result.stderr
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x00\x01\x02" * 10)
    result = segq("submit", str(blob), "--task", "semantic")
    assert result.returncode == 1 and "not an image or video" in result.stderr
    assert redis_client.zcard("segq:batches") == before


def test_wrong_s3_credentials_and_unreachable_redis_exit_3(client, tmp_path):
    src = str(photo(tmp_path / "z.png", (64, 48)))
    result = segq("submit", src, "--task", "semantic", env={"AWS_SECRET_ACCESS_KEY": "wrong-secret"})
    assert result.returncode == 3, result.stderr
    assert "refused the credentials" in result.stderr

    result = segq("submit", src, "--task", "semantic", env={"SEGQ_REDIS_URL": "redis://127.0.0.1:9/0"})
    assert result.returncode == 3, result.stderr
    assert "cannot reach Redis at redis://127.0.0.1:9/0" in result.stderr


def test_unknown_job_id_exits_4(client):
    result = segq("status", "0123456789abcdef")
    assert result.returncode == 4 and "no job '0123456789abcdef'" in result.stderr
