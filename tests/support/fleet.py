"""A mixed batch of jobs spread over the fleet, and who took which part."""

from __future__ import annotations

from support.media import photo, video


def chunk_workers(client, job_id: str) -> set[str]:
    return {c["worker"] for c in client.records.chunk_infos(job_id).values()}


def workers_of_a_mixed_batch(client, tmp_path) -> tuple[set[str], list[str], str]:
    """Submit 9 image jobs and a 40-frame video in 4-frame chunks, wait; returns every worker that
    took a part, the image job ids and the video job id."""
    images = client.submit([str(photo(tmp_path / f"i{i}.png", (160, 120), seed=i)) for i in range(9)],
                           task="semantic")
    [clip] = client.submit([str(video(tmp_path / "v.mp4", frames=40, size=(160, 120)))], task="semantic",
                           chunk_frames=4, batch_size=2)
    records = client.wait([j.id for j in images] + [clip.id], timeout=300)
    assert all(r.state == "done" for r in records), [r.error for r in records]
    return {r.worker for r in records[:-1]} | chunk_workers(client, clip.id), [j.id for j in images], clip.id


def queued_or_held(r, task_ids: set[str]) -> set[str]:
    """Which of ``task_ids`` still have a message in a model queue or held unacknowledged."""
    import json

    from segq import keys, messages

    found = set()
    for queue in r.scan_iter(match="segq.model.*"):
        for raw in r.lrange(queue, 0, -1):
            task = messages.task_of(raw)
            if task and task[1] in task_ids:
                found.add(task[1])
    for raw in r.hvals(keys.KOMBU_UNACKED):
        try:
            found |= {json.loads(raw)[0]["headers"]["id"]} & task_ids
        except (ValueError, KeyError, IndexError, TypeError):
            pass
    return found


def wait_handled(r, task_ids, timeout: float = 120.0) -> None:
    """Block until the messages of ``task_ids`` (sent by hand, with no result backend to ask) were
    taken and acknowledged by a worker: in no queue and held by none."""
    import time

    ids, deadline = set(task_ids), time.monotonic() + timeout
    while queued_or_held(r, ids):
        assert time.monotonic() < deadline, f"messages not handled in {timeout:g}s: {queued_or_held(r, ids)}"
        time.sleep(0.1)


def lone_record(r, record, ttl: int = 3600) -> None:
    """A job record with no batch and no message, as a hand-made message's job would have."""
    from segq import keys

    r.hset(keys.job(record.id), mapping=record.to_hash())
    r.expire(keys.job(record.id), ttl)


def lone_shard(client, uri: str, model: str = "ade-semantic", task: str = "semantic") -> tuple[str, str, int]:
    """A batch of one shard of the image ``uri``, its list in S3 and its state in Redis, queued
    and never released (as a hand-made message's shard would have): (image id, batch, shard)."""
    import json
    import time
    import uuid

    from segq import keys
    from segq.batches import BatchStore, new_batch_name
    from segq.protocol import image_id
    from segq.shards import ShardImage, ShardSpec, message_template

    name, token = new_batch_name(), uuid.uuid4().hex
    batches = BatchStore(client.r, client.settings.job_ttl_seconds)
    opened = batches.open(name, task, model, "normal", message_template(client.celery, task, model, "normal"), token)
    job_id = image_id(opened.namespace, opened.first, 0)
    client.shards.write_spec(ShardSpec(name, opened.first, task, model, [ShardImage(job_id, 0, uri, uri)],
                                       created_at=time.time()))
    client.r.hset(keys.batch_shards(name), opened.first, json.dumps({"s": "q", "n": 1, "t": time.time()}))
    client.r.rpush(keys.batch_jobs(name), f"s{opened.first}")
    client.r.hset(keys.batch(name), mapping={"jobs": 1, "queued": 1, "frames_total": 1})
    batches.seal(name, token)
    return job_id, name, opened.first
