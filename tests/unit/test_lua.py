"""The Lua scripts against a real redis-server: video jobs and shards move once and their batches
count them in the same step; a chunk counts once and the last one queues assembly once; the
scheduler releases work up to its target, high before normal before low, one task per batch in
turn, a range of shards as one entry with each shard's message made from the batch's template,
and records what it released as in flight; a batch is canceled a page at a time; a shard's
failed images run again as a retry shard; the registry keeps the models' slot counts exact."""

from __future__ import annotations

import json

import pytest

from segq import keys
from segq.batches import BatchStore, NewJob, identity
from segq.jobs import ASSEMBLY_QUEUED, CHUNK_DUPLICATE, CHUNK_RECORDED, JobRecord, JobStore
from segq.messages import BATCH_SLOT, SLOT
from segq.metrics import STAGE, Tally
from segq.scheduler import Scheduler
from segq.shards import ShardStore
from segq.states import JobKind, JobState

TTL = 600


@pytest.fixture()
def store(r):
    finished = []
    store = JobStore(r, TTL, on_batch_finished=finished.append)
    store.finished = finished
    return store


def entry(task_id: str) -> str:
    """A pending entry with a stand-in message that names its task."""
    return f"{task_id} {json.dumps({'headers': {'id': task_id}})}"


def template(batch: str = "") -> str:
    """A stand-in shard message that names its task (``segq.messages.template`` fills real ones)."""
    return json.dumps({"headers": {"id": f"shard:{BATCH_SLOT}:{SLOT}"},
                       "properties": {"delivery_tag": f"t.{BATCH_SLOT}.{SLOT}"}})


def jobs(r, batch: str, ids: list[str], kind=JobKind.VIDEO, model="m", priority="normal", seal=True) -> BatchStore:
    batches = BatchStore(r, TTL)
    batches.open(batch, "semantic", model, priority, template(batch), "token")
    new = [NewJob(i, identity(batch, i), JobRecord(id=i, kind=kind, task="semantic", model=model, input="s3://b/k",
                                                   batch=batch, priority=priority).to_hash(), entry(i))
           for i in ids]
    assert batches.submit(batch, new) == {}
    if seal:
        batches.seal(batch, "token")
    return batches


def released(r, model="m") -> list[str]:
    """The task ids in the model's queue, in the order workers take them (BRPOP: from the right)."""
    return [json.loads(m)["headers"]["id"] for m in reversed(r.lrange(f"segq.model.{model}", 0, -1))]


def test_a_job_starts_once_and_a_final_job_is_skipped(store, r):
    jobs(r, "b1", ["00000000000000a1"])
    assert store.start("00000000000000a1", "w1", "cpu") is True
    assert store.get("00000000000000a1").state == JobState.RUNNING
    assert BatchStore(r, TTL).get("b1").counts == {"queued": 0, "running": 1, "done": 0, "failed": 0, "canceled": 0}
    assert store.start("00000000000000a1", "w1", "cpu") is True  # redelivered while running: counted once
    assert BatchStore(r, TTL).get("b1").running == 1
    store.finish("00000000000000a1", frames=1)
    assert store.start("00000000000000a1", "w2", "cpu") is False  # a redelivery of a finished job
    assert store.get("00000000000000a1").attempts == 2
    assert store.start("00000000000000ff", "w1", "cpu") is None  # no record


def test_a_batch_counts_its_jobs_in_the_moves_and_finishes_with_its_last_job(store, r):
    batches = jobs(r, "b2", ["00000000000000b1", "00000000000000b2", "00000000000000b3"], seal=False)
    assert batches.get("b2").state == "submitting"
    store.start("00000000000000b1", "w", "cpu")
    store.finish("00000000000000b1", frames=1, inference_s=0.2)
    store.fail("00000000000000b2", "bad input")
    assert not store.finished
    assert batches.seal("b2", "token") is False  # one job still queued
    ended = store.cancel("00000000000000b3")
    assert ended.moved and ended.batch_finished == "b2" and store.finished == ["b2"]
    b = batches.get("b2")
    assert (b.state, b.jobs, b.done, b.failed, b.canceled, b.queued, b.running) == ("finished", 3, 1, 1, 1, 0, 0)
    assert (b.frames_total, b.frames_done) == (0, 0)  # videos count frames from their split
    assert 0 < r.ttl(keys.batch("b2")) <= TTL and 0 < r.ttl(keys.batch_jobs("b2")) <= TTL
    # a retry opens the batch again and queues the job's new first task in the same step
    assert store.reset_for_retry("00000000000000b2", 1, entry("00000000000000b2-r1")) == 1
    b = batches.get("b2")
    assert (b.state, b.failed, b.queued, b.finished_at) == ("running", 0, 1, None)  # some jobs ended
    assert r.ttl(keys.batch("b2")) == -1
    assert store.reset_for_retry("00000000000000b2", 2, entry("x")) == 0  # queued: nothing to retry
    assert Scheduler(r).dispatch("m", 10) == 4  # the three first tasks and the retry's
    assert released(r)[-1] == "00000000000000b2-r1"


def test_a_batch_holds_each_input_once(r):
    batches = jobs(r, "b3", ["00000000000000c1"], seal=False)
    again = [NewJob("00000000000000c2", identity("b3", "00000000000000c1"), {"id": "00000000000000c2"}, entry("c2")),
             NewJob("00000000000000c3", identity("b3", "new"), JobRecord(
                 id="00000000000000c3", kind="video", task="semantic", model="m", input="s3://b/k",
                 batch="b3").to_hash(), entry("00000000000000c3"))]
    assert batches.submit("b3", again) == {0: "00000000000000c1"}  # held already, by its first job
    assert not r.exists(keys.job("00000000000000c2"))
    assert batches.get("b3").jobs == 2
    assert batches.holders("b3", [identity("b3", "new"), identity("b3", "other")]) == ["00000000000000c3", None]
    assert r.lrange(keys.batch_jobs("b3"), 0, -1) == ["00000000000000c1", "00000000000000c3"]


def test_a_batch_refuses_another_task_model_or_priority(r):
    from segq.errors import UsageError

    batches = BatchStore(r, TTL)
    first = batches.open("b4", "semantic", "m", "normal", template(), "t1")
    with pytest.raises(UsageError, match="semantic batch on model m"):
        batches.open("b4", "panoptic", "m", "normal", template(), "t1")
    with pytest.raises(UsageError, match="priority normal"):
        batches.open("b4", "semantic", "m", "low", template(), "t1")
    again = batches.open("b4", "semantic", "m", "normal", template(), "t1")  # the same submission
    assert (again.created, again.jobs, again.namespace, again.shards, again.first) == (False, 0, first.namespace, 1, 1)
    assert first.created and first.first == 0 and r.get(keys.namespace(first.namespace)) == "b4"
    assert first.namespace[0] in "89abcdef"
    with pytest.raises(UsageError, match="being submitted to by another process"):
        batches.open("b4", "semantic", "m", "normal", template(), "t2", wait=0.3, poll=0.1)
    batches.seal("b4", "t1")  # the lock is given back with the seal
    assert batches.open("b4", "semantic", "m", "normal", template(), "t2").first == 2


def test_each_chunk_counts_once_and_the_last_queues_assembly_once(store, r):
    job = "00000000000000d1"
    jobs(r, "b5", [job], kind=JobKind.VIDEO)
    store.start(job, "w", "cpu")
    assert Scheduler(r).dispatch("m", 10) == 1  # the split
    chunks = [entry(f"{job}-chunk{i:05d}") for i in range(3)]
    assert store.split_done(job, 30, chunks, frames_total=30, chunks_total=3) == 3
    assert store.split_done(job, 30, chunks, frames_total=30, chunks_total=3) == 0  # a redelivered split
    # the chunks went in front of their batch's pending work, in order; another batch takes turns
    jobs(r, "b5-later", ["00000000000000d2"])
    assert Scheduler(r).dispatch("m", 10) == 4
    assert released(r)[1:] == [f"{job}-chunk00000", "00000000000000d2", f"{job}-chunk00001", f"{job}-chunk00002"]
    assembly = entry(f"{job}-assemble")
    outcomes = [store.chunk_done(job, i, 10, 0.5, {"chunk": i}, assembly)[0] for i in (0, 1, 1, 2, 2)]
    assert outcomes == [CHUNK_RECORDED, CHUNK_RECORDED, CHUNK_DUPLICATE, ASSEMBLY_QUEUED, CHUNK_DUPLICATE]
    rec = store.get(job)
    assert (rec.frames_done, rec.chunks_done, rec.inference_s) == (30, 3, 1.5)
    assert sorted(store.chunk_infos(job)) == [0, 1, 2]
    b = BatchStore(r, TTL).get("b5")
    assert (b.frames_total, b.frames_done) == (30, 30)
    assert Scheduler(r).dispatch("m", 10) == 1
    assert released(r)[-1] == f"{job}-assemble"


def test_finishing_counts_fleet_stats_with_the_codec(store, r):
    jobs(r, "b6", ["00000000000000e1"], model="m2")
    store.finish("00000000000000e1", frames=30, inference_s=0.25, fps=120.0)
    stats = r.hgetall(keys.STATS)
    assert stats[keys.stat_field(keys.STAT_JOBS, "done", "video", "m2")] == "1"
    assert stats[keys.stat_field(keys.STAT_FRAMES, "m2")] == "30"
    assert stats[keys.stat_field(keys.STAT_LAST_FPS, "video", "m2")] == "120.0"
    assert keys.parse_stat_field("last_fps|image|m2") == ("last_fps", ("image", "m2"))
    assert keys.parse_stat_field("nonsense|x") is None
    assert store.finish("00000000000000e1", frames=30).moved is False
    assert r.hget(keys.STATS, keys.stat_field(keys.STAT_JOBS, "done", "video", "m2")) == "1"  # counted once


def test_a_record_expires_counting_from_the_end_and_a_final_state_is_never_overwritten(store, r):
    jobs(r, "b7", ["00000000000000f1"])
    r.expire(keys.job("00000000000000f1"), 5)  # as if created long ago
    assert store.cancel("00000000000000f1").moved is True
    assert r.ttl(keys.job("00000000000000f1")) > 500  # the full TTL again, from the end
    assert store.finish("00000000000000f1", frames=1).moved is False  # a late finish does not undo the cancel
    assert store.get("00000000000000f1").state == JobState.CANCELED
    assert store.reset_for_retry("00000000000000f1", 2, entry("x")) == 0  # not retry number 2
    assert store.reset_for_retry("00000000000000f1", 1, entry("00000000000000f1-r1")) == 1
    assert store.get("00000000000000f1").state == JobState.QUEUED and r.ttl(keys.job("00000000000000f1")) == -1


def test_the_scheduler_releases_up_to_its_target_and_each_end_releases_the_next(r):
    jobs(r, "big", [f"{i:016x}" for i in range(10)])
    scheduler = Scheduler(r)
    assert scheduler.dispatch("m", 3) == 3
    assert scheduler.dispatch("m", 3) == 0  # the queue holds its target
    assert released(r) == [f"{i:016x}" for i in range(3)]
    assert sorted(r.zrange(keys.INFLIGHT, 0, -1)) == [f"{i:016x}" for i in range(3)]
    r.rpop("segq.model.m")  # a worker takes one
    assert scheduler.ended(f"{0:016x}", "m", target=3) == 1
    assert f"{0:016x}" not in r.zrange(keys.INFLIGHT, 0, -1)
    assert scheduler.pending() == {("m", "normal"): 6}
    assert scheduler.dispatch("m", 0) == 0  # no live slot: nothing released


def test_batches_take_turns_and_priorities_are_strict(r):
    jobs(r, "a-big", [f"a{i:015x}" for i in range(6)])
    jobs(r, "b-small", [f"b{i:015x}" for i in range(2)])
    jobs(r, "c-low", [f"c{i:015x}" for i in range(3)], priority="low")
    jobs(r, "d-high", [f"d{i:015x}" for i in range(1)], priority="high")
    assert Scheduler(r).dispatch("m", 100) == 12
    order = released(r)
    assert order[0] == f"d{0:015x}"  # high first
    assert order[1:5] == [f"a{0:015x}", f"b{0:015x}", f"a{1:015x}", f"b{1:015x}"]  # one each in turn
    assert order[5:9] == [f"a{i:015x}" for i in range(2, 6)]
    assert order[9:] == [f"c{i:015x}" for i in range(3)]  # low only once no normal work is pending
    assert r.llen(keys.ring("m", "normal")) == 0 and not r.hexists(keys.batch("a-big"), "inring")


def test_canceling_a_batch_drops_its_pending_work(r):
    jobs(r, "e-cancel", [f"e{i:015x}" for i in range(5)])
    shards = ShardStore(r, None, TTL)
    assert shards.cancel_batch("e-cancel") == (5, 0)
    assert shards.cancel_batch("e-cancel") == (0, 0)  # again: nothing left, and no error
    assert Scheduler(r).dispatch("m", 10) == 0
    assert Scheduler(r).pending() == {}


def test_a_canceled_video_with_no_frame_done_is_retried(store, r):
    """A video canceled before its split counted frames (none done): the retry moves its batch's
    frame counters by nothing, and succeeds."""
    job = "00000000000000f9"
    jobs(r, "b9", [job], kind=JobKind.VIDEO)
    store.cancel(job)
    assert store.reset_for_retry(job, 1, entry(f"{job}-r1")) == 1
    b = BatchStore(r, TTL).get("b9")
    assert (b.queued, b.canceled, b.frames_total, b.frames_done) == (1, 0, 0, 0)


# -- shards ------------------------------------------------------------------------------------

def shard_batch(r, batch: str, sizes: list[int], priority="normal", seal=True) -> tuple[BatchStore, ShardStore]:
    """A batch of shards of ``sizes`` images (their lists are not needed by the scripts)."""
    batches = BatchStore(r, TTL)
    opened = batches.open(batch, "semantic", "m", priority, template(batch), "token")
    shards = ShardStore(r, None, TTL)
    for i, n in enumerate(sizes):
        assert shards.add(batch, opened.first if i == 0 else shards.next_index(batch), n) is True
    if seal:
        batches.seal(batch, "token")
    return batches, shards


def counts(batches: BatchStore, batch: str) -> tuple:
    b = batches.get(batch)
    return b.jobs, b.queued, b.running, b.done, b.failed, b.canceled


def test_consecutive_shards_wait_as_one_entry_and_each_is_released_with_its_own_message(r):
    batches, shards = shard_batch(r, "s1", [3, 4, 5, 6])
    assert r.lrange(keys.batch_pending("s1"), 0, -1) == ["@0 3"]  # four shards, one entry
    assert shards.add("s1", 2, 5) is False  # added once
    assert counts(batches, "s1") == (18, 18, 0, 0, 0, 0) and batches.get("s1").frames_total == 18
    assert Scheduler(r).pending() == {("m", "normal"): 4}  # no slots (no worker) yet: nothing released
    assert Scheduler(r).dispatch("m", 2) == 2
    assert released(r) == ["shard:s1:000000", "shard:s1:000001"]
    bodies = [json.loads(m) for m in reversed(r.lrange("segq.model.m", 0, -1))]
    assert [b["properties"]["delivery_tag"] for b in bodies] == ["t.s1.000000", "t.s1.000001"]
    assert r.lrange(keys.batch_pending("s1"), 0, -1) == ["@2 3"]
    assert sorted(r.zrange(keys.INFLIGHT, 0, -1)) == ["shard:s1:000000", "shard:s1:000001"]
    assert r.lrange(keys.batch_jobs("s1"), 0, -1) == ["s0", "s1", "s2", "s3"]


def test_a_shard_starts_once_ends_once_and_its_batch_counts_its_images(r):
    batches, shards = shard_batch(r, "s2", [3, 2])
    start = shards.start("s2", 0, "w1", "cpu")
    assert (start.run, start.attempt, start.canceled) == (True, 1, frozenset())
    assert counts(batches, "s2") == (5, 2, 3, 0, 0, 0)
    again = shards.start("s2", 0, "w2", "cpu")  # its worker died: another takes it over
    assert (again.run, again.attempt) == (True, 2) and counts(batches, "s2")[2] == 3
    assert shards.end("s2", 0, 2, 2, 1, 0, inference_s=0.5, fps=4.0) == 1
    assert shards.end("s2", 0, 1, 3, 0, 0) == 0  # the other attempt: counted once
    assert counts(batches, "s2") == (5, 2, 0, 2, 1, 0) and batches.get("s2").frames_done == 2
    state = shards.state("s2", 0)
    assert (state.s, state.e, state.d, state.f, state.a, state.w) == ("e", 2, 2, 1, 2, "w2")
    assert r.hget(keys.STATS, "jobs|done|image|m") == "2" and r.hget(keys.STATS, "jobs|failed|image|m") == "1"
    assert shards.start("s2", 0, "w3", "cpu").run is False  # ended: nothing to do
    shards.start("s2", 1, "w1", "cpu")
    assert shards.end("s2", 1, 1, 2, 0, 0) == 2  # the batch's last images: it finished
    b = batches.get("s2")
    assert b.state == "finished" and 0 < r.ttl(keys.batch_shards("s2")) <= TTL
    assert 0 < r.ttl(keys.namespace(b.ns)) <= TTL
    assert shards.start("s2", 7, "w1", "cpu").missing


def test_canceling_a_batch_ends_its_queued_shards_a_page_at_a_time_and_stops_the_rest(r, monkeypatch):
    from segq import shards as shards_mod

    monkeypatch.setattr(shards_mod, "CANCEL_PAGE", 3)
    batches, shards = shard_batch(r, "s3", [2] * 7)
    Scheduler(r).dispatch("m", 2)  # shards 0 and 1 released
    shards.start("s3", 0, "w", "cpu")
    assert shards.cancel_batch("s3") == (0, 5)  # shards 2..6, in pages of 3
    assert counts(batches, "s3") == (14, 2, 2, 0, 0, 10)
    assert shards.check("s3", 0) == (True, frozenset())  # the running one learns it
    late = shards.start("s3", 1, "w", "cpu")  # released before the cancel: ends as it starts
    assert not late.run and counts(batches, "s3") == (14, 0, 2, 0, 0, 12)
    assert shards.end("s3", 0, 1, 1, 0, 1) == 2  # one image done before it stopped: the batch finished
    assert counts(batches, "s3") == (14, 0, 0, 1, 0, 13)
    assert Scheduler(r).pending() == {} and r.llen(keys.ring("m", "normal")) == 0


def test_an_image_is_canceled_in_its_queued_shard_at_once_and_asked_of_a_running_one(r):
    batches, shards = shard_batch(r, "s4", [3, 2])
    assert shards.cancel_image("s4", 0, 1) == 1
    assert shards.cancel_image("s4", 0, 1) == 3  # again: already
    assert counts(batches, "s4") == (5, 4, 0, 0, 0, 1)
    start = shards.start("s4", 0, "w", "cpu")
    assert start.canceled == frozenset({1}) and counts(batches, "s4") == (5, 2, 2, 0, 0, 1)
    assert shards.cancel_image("s4", 0, 2) == 2  # running: the shard skips it unless done first
    assert shards.check("s4", 0) == (False, frozenset({1, 2}))
    shards.end("s4", 0, 1, 1, 0, 2)  # the worker reports every image: 1 done, 2 canceled
    assert counts(batches, "s4") == (5, 2, 0, 1, 0, 2)
    assert shards.cancel_image("s4", 0, 0) == 0  # ended: too late
    assert shards.cancel_image("s4", 1, 0) == 1 and shards.cancel_image("s4", 1, 1) == 1
    assert shards.state("s4", 1).s == "e"  # every image canceled: it ended
    assert batches.get("s4").state == "finished"


def test_a_retry_shard_runs_the_failed_and_canceled_images_once(r):
    batches, shards = shard_batch(r, "s5", [4])
    shards.start("s5", 0, "w", "cpu")
    shards.end("s5", 0, 1, 2, 1, 1)
    assert batches.get("s5").state == "finished"
    new = shards.next_index("s5")
    assert shards.add_retry("s5", 0, new, [1, 3], 1, 1, template("s5")) is True
    assert counts(batches, "s5") == (4, 2, 0, 2, 0, 0) and batches.get("s5").state == "running"
    assert shards.add_retry("s5", 0, new + 1, [1], 1, 0, template("s5")) is False  # its retry has not ended
    state = shards.state("s5", 0)
    assert state.r == [(new, [1, 3])] and state.deciding(0, 3) == new and state.deciding(0, 0) == 0
    assert shards.state("s5", new).of == 0
    Scheduler(r).dispatch("m", 5)
    assert released(r)[-1] == f"shard:s5:{new:06d}"
    shards.start("s5", new, "w", "cpu")
    shards.end("s5", new, 1, 2, 0, 0)
    assert counts(batches, "s5") == (4, 0, 0, 4, 0, 0) and batches.get("s5").state == "finished"


def test_the_registry_keeps_the_models_slot_counts_exact(r):
    from segq import registry
    from segq.scheduler import slots

    w1 = registry.WorkerRegistration(r, "w1", "cpu", interval=1, concurrency=3)
    w1.loaded("a", 1.0)
    w1.loaded("b", 1.0)
    w2 = registry.WorkerRegistration(r, "w2", "cpu", interval=1, concurrency=2)
    w2.loaded("a", 1.0)
    assert (slots(r, "a"), slots(r, "b")) == (5, 3)
    again = registry.WorkerRegistration(r, "w1", "cpu", interval=1, concurrency=4)  # restarted in place
    again.loaded("a", 1.0)
    assert (slots(r, "a"), slots(r, "b")) == (6, 0)
    tally = Tally()
    tally.stages("a", {"fetch": 0.01, "forward": 0.2})
    held, _ = w2.beat([], 0.0, histograms=tally.to_json())  # the observations since the last beat go with it
    assert held is False and registry.get(r, "w2").live
    assert r.hget(keys.HISTOGRAMS, f"{STAGE}|a|forward|count") == "1"
    assert float(r.hget(keys.HISTOGRAMS, f"{STAGE}|a|forward|sum")) == 0.2
    assert registry.remove_dead(r, interval=1, now=__import__("time").time() + 10) == ["w1", "w2"]
    assert (slots(r, "a"), r.zcard(keys.WORKERS_INDEX)) == (0, 0)
    w2.count(registry.JOBS_DONE)
    w2.set_active("task x")
    held, _ = w2.beat([], 0.0, "token", 1000)  # a record reaped while cut off is written again, whole
    rec = registry.get(r, "w2")
    assert (rec.jobs_done, rec.active, slots(r, "a")) == (1, "task x", 2)
    assert held is True and r.get(keys.REAPER_LOCK) == "token"
    assert w2.beat([], 0.0, "other", 1000)[0] is False  # one holder at a time


def test_a_task_end_releases_its_lease_and_unacknowledged_record_and_the_next_work(r):
    from segq.leases import LeaseBook

    jobs(r, "t1", ["00000000000000a7", "00000000000000a8"])
    r.hset(keys.SLOTS, "m", 1)
    assert Scheduler(r).dispatch("m") == 1  # the target is the model's slots
    book = LeaseBook(r, "w", 30)
    book.take("tag1", "00000000000000a7", "segq.split_video")
    r.hset(keys.KOMBU_UNACKED, "tag1", "[]")
    r.zadd(keys.KOMBU_UNACKED_INDEX, {"tag1": 1})
    r.rpop("segq.model.m")
    assert Scheduler(r).ended("00000000000000a7", "m", "tag1") == 1
    assert not r.exists(keys.lease("tag1")) and not r.hexists(keys.KOMBU_UNACKED, "tag1")
    assert r.zcard(keys.LEASES) == 0 and r.zcard(keys.KOMBU_UNACKED_INDEX) == 0
    assert released(r) == ["00000000000000a8"]


def test_the_registry_record_carries_the_stage_figures_and_every_running_task_from_the_next_beat(r):
    from segq.registry import WorkerRecord, WorkerRegistration
    from workers.model.stage import ModelStage

    class Recorder:
        def forward(self, inputs):
            __import__("time").sleep(0.01)
            return inputs

    reg = WorkerRegistration(r, "w1-gpu0@host", "cuda:0")
    stage = ModelStage(maxsize=2)
    reg.stage_stats = stage.fields
    reg.publish()
    stage.run(Recorder(), "x", items=4)
    reg.set_active("segq.segment_chunk[j-chunk00001] job j; segq.segment_shard[shard:b:000001] shard 1 of batch b")
    assert WorkerRecord.from_hash("k", r.hgetall(keys.worker("w1-gpu0@host"))).active == ""  # not written yet
    reg.beat([], 0.0)
    stage.close()
    rec = WorkerRecord.from_hash(keys.worker("w1-gpu0@host"), r.hgetall(keys.worker("w1-gpu0@host")))
    assert rec.model_items == 4 and 0 < rec.model_busy_s <= rec.model_wall_s and 0 <= rec.model_busy <= 1
    assert rec.active_tasks == ["segq.segment_chunk[j-chunk00001] job j",
                                "segq.segment_shard[shard:b:000001] shard 1 of batch b"]
    assert WorkerRecord.from_hash("segq:worker:x", {}).active_tasks == []
