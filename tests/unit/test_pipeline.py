"""The worker's pipeline (``workers.model.stage``) without torch: a fake callable stands for the model.

The model stage runs every pass on one thread in submission order, blocks submitters beyond its
bounded queue, hands each pass's exception to that pass's future only, and counts busy time and
items; ``Ahead`` and ``Behind`` keep order and raise their thread's errors in the caller."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from workers.tasks.threads import Ahead, Behind
from workers.model.stage import InlineStage, ModelStage


class Recorder:
    """A fake model: records which thread ran which input; sleeps ``delay``; fails on "boom"."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None):
        self.delay, self.gate = delay, gate
        self.calls: list[tuple[str, object]] = []
        self.threads: set[int] = set()

    def __call__(self, model, inputs):
        if self.gate is not None:
            self.gate.wait(10)
        self.threads.add(threading.get_ident())
        self.calls.append((model, inputs))
        if self.delay:
            time.sleep(self.delay)
        if inputs == "boom":
            raise ValueError("bad batch")
        return f"{model}:{inputs}"


def test_every_pass_runs_on_one_thread_in_submission_order_from_many_submitters():
    fake = Recorder()
    stage = ModelStage(fake, maxsize=2)
    results: dict[tuple[int, int], str] = {}

    def submitter(t: int):
        futures = [(i, stage.submit("m", (t, i))) for i in range(20)]
        for i, f in futures:
            results[(t, i)] = f.result(10)

    threads = [threading.Thread(target=submitter, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(20)
    stage.close()
    assert results == {(t, i): f"m:{(t, i)}" for t in range(4) for i in range(20)}
    assert len(fake.threads) == 1 and threading.get_ident() not in fake.threads
    for t in range(4):  # each submitter's passes ran in the order it submitted them
        assert [inp[1] for _, inp in fake.calls if inp[0] == t] == list(range(20))
    assert stage.stats().items == stage.stats().passes == 80


def test_the_queue_is_bounded_submit_blocks_until_the_stage_takes_work():
    gate = threading.Event()
    stage = ModelStage(Recorder(gate=gate), maxsize=2)
    first = stage.submit("m", 0)  # taken by the stage thread, which waits at the gate
    deadline = time.monotonic() + 5
    while not first.running():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    stage.submit("m", 1)
    stage.submit("m", 2)  # the queue is now full
    blocked = threading.Event()
    done = threading.Event()

    def third():
        blocked.set()
        stage.submit("m", 3)
        done.set()

    threading.Thread(target=third, daemon=True).start()
    blocked.wait(5)
    assert not done.wait(0.3), "submit returned although the queue was full"
    gate.set()
    assert done.wait(5)
    stage.close()
    assert first.result() == "m:0"


def test_an_exception_goes_to_its_own_future_and_the_stage_goes_on():
    stage = ModelStage(Recorder(), maxsize=4)
    ok1, bad, ok2 = stage.submit("m", "a"), stage.submit("m", "boom"), stage.submit("m", "b")
    assert ok1.result(5) == "m:a"
    with pytest.raises(ValueError, match="bad batch"):
        bad.result(5)
    assert ok2.result(5) == "m:b"
    assert stage.run("m", "c") == "m:c"
    stage.close()
    s = stage.stats()
    assert (s.passes, s.items) == (4, 3)  # a failed pass processed no item


def test_busy_time_items_and_the_recent_fraction_are_counted():
    stage = ModelStage(Recorder(delay=0.05), maxsize=4)
    futures = [stage.submit("m", i, items=3) for i in range(4)]
    for f in futures:
        f.result(5)
        assert 0.04 <= f.seconds < 1.0  # the pass's own time, set before its result
    s = stage.stats()
    assert s.items == 12 and s.passes == 4
    assert 0.19 <= s.busy_s <= s.wall_s
    assert 0.0 < s.busy_fraction <= 1.0 and 0.0 < s.recent <= 1.0
    time.sleep(0.25)  # idle: the fraction falls, the busy seconds stay
    later = stage.stats()
    assert later.busy_s == pytest.approx(s.busy_s) and later.busy_fraction < s.busy_fraction
    fields = stage.fields()
    assert set(fields) == {"model_busy", "model_busy_s", "model_wall_s", "model_items", "model_passes"}
    assert fields["model_items"] == 12
    stage.close()
    assert not stage.alive


def test_the_recent_fraction_only_counts_its_window():
    now = [0.0]

    def fake(model, inputs):
        now[0] += 10.0  # a 10 s pass on the fake clock
        return inputs

    stage = ModelStage(fake, window=20.0, clock=lambda: now[0])
    stage.run("m", 1)  # busy 0..10
    now[0] = 40.0  # idle 10..40
    s = stage.stats()
    assert s.busy_s == pytest.approx(10.0) and s.busy_fraction == pytest.approx(0.25)
    assert s.recent == 0.0  # nothing in the last 20 s
    stage.run("m", 2)  # busy 40..50
    assert stage.stats().recent == pytest.approx(0.5)  # 10 of the last 20 s
    stage.close()


def test_a_cancelled_pass_is_skipped_and_a_closed_stage_refuses_work():
    gate = threading.Event()
    fake = Recorder(gate=gate)
    stage = ModelStage(fake, maxsize=4)
    first = stage.submit("m", 0)
    second = stage.submit("m", 1)
    assert second.cancel()
    gate.set()
    assert first.result(5) == "m:0"
    stage.close()
    assert [inp for _, inp in fake.calls] == [0]
    with pytest.raises(RuntimeError, match="closed"):
        stage.submit("m", 2)


def test_the_inline_stage_runs_at_once():
    stage = InlineStage(Recorder())
    assert stage.run("m", "x") == "m:x"
    with pytest.raises(ValueError):
        stage.submit("m", "boom").result()


def test_ahead_keeps_order_runs_ahead_and_raises_the_source_error_where_it_happened():
    produced: list[int] = []

    def source():
        for i in range(10):
            produced.append(i)
            yield i

    with Ahead(source(), maxsize=3) as it:
        seen = []
        for x in it:
            if x == 0:  # the producer runs ahead, up to the bound
                deadline = time.monotonic() + 5
                while len(produced) < 4:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                time.sleep(0.1)
                assert len(produced) <= 5  # 3 queued, 1 waiting to be put, and the one taken
            seen.append(x)
    assert seen == list(range(10))

    def failing():
        yield 1
        yield 2
        raise ValueError("corrupt frame 3")

    got = []
    with pytest.raises(ValueError, match="corrupt frame 3"):
        with Ahead(failing(), maxsize=2) as it:
            for x in it:
                got.append(x)
    assert got == [1, 2]


def test_ahead_stops_its_thread_and_closes_the_source_when_the_consumer_leaves_early():
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    ahead = Ahead(endless(), maxsize=2)
    for x in ahead:
        if x == 5:
            break
    ahead.close()
    assert closed.wait(5) and not ahead._thread.is_alive()


def test_behind_consumes_in_order_and_raises_its_error_in_the_producer():
    seen = []
    with Behind(seen.append, maxsize=2) as b:
        for i in range(20):
            b.put(i)
    assert seen == list(range(20))

    def consume(x):
        if x == 3:
            raise OSError("disk full")
        seen.append(x)

    seen.clear()
    b = Behind(consume, maxsize=2)
    with pytest.raises(OSError, match="disk full"):
        for i in range(100):  # a later put raises; the producer never blocks on a dead consumer
            b.put(i)
            time.sleep(0.001)
    with pytest.raises(OSError):
        b.close()
    assert seen == [0, 1, 2]


def test_behind_abort_drops_what_is_queued():
    gate = threading.Event()
    seen = []

    entered = threading.Event()

    def slow(x):
        entered.set()
        gate.wait(5)
        seen.append(x)

    b = Behind(slow, maxsize=10)
    for i in range(5):
        b.put(i)
    assert entered.wait(5)
    aborting = threading.Thread(target=b.abort)
    aborting.start()  # while item 0 is being consumed
    deadline = time.monotonic() + 5
    while not b._dropping:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    gate.set()
    aborting.join(5)
    assert seen == [0]
    with pytest.raises(RuntimeError):
        b.put(9)


def test_the_pipeline_imports_no_torch():
    code = "import sys, workers.model.stage; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


class BatchingRunner:
    """A stand-in for a Segmenter on the stage: inputs are (key, values); outputs the values
    doubled; it records the batches it ran."""

    def __init__(self, gate: threading.Event | None = None):
        self.batches: list[list] = []
        self.gate = gate

    def forward(self, inputs):
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append(list(inputs[1]))
        return [2 * v for v in inputs[1]]

    @staticmethod
    def batch_key(inputs):
        return inputs[0]

    @staticmethod
    def concat(inputs):
        assert len({i[0] for i in inputs}) == 1, "only passes of one key are joined"
        return (inputs[0][0], [v for i in inputs for v in i[1]])

    @staticmethod
    def split(outputs, counts):
        parts, start = [], 0
        for n in counts:
            parts.append(outputs[start:start + n])
            start += n
        return parts


def test_passes_of_one_shape_waiting_together_run_as_one_batch_and_others_apart():
    gate = threading.Event()
    runner = BatchingRunner(gate)
    stage = ModelStage(maxsize=16, max_batch=4)
    first = stage.submit(runner, ("a", [0]), items=1)  # runs alone (the stage is idle), held by the gate
    time.sleep(0.1)
    waiting = [stage.submit(runner, (key, [i]), items=1) for i, key in
               enumerate(["a", "a", "b", "a", "a", "a", "a"], start=1)]
    gate.set()
    results = [f.result(5) for f in [first, *waiting]]
    stage.close()
    assert results == [[0], [2], [4], [6], [8], [10], [12], [14]]  # each its own part, in order
    assert runner.batches == [[0], [1, 2], [3], [4, 5, 6, 7]]  # the "b" pass ends the first batch
    assert [f.batch_items for f in [first, *waiting]] == [1, 2, 2, 1, 4, 4, 4, 4]
    assert stage.stats().passes == 4 and stage.stats().items == 8


def test_a_batching_stage_waits_up_to_its_delay_for_more():
    runner = BatchingRunner()
    stage = ModelStage(maxsize=8, max_batch=3, delay=0.3)
    a = stage.submit(runner, ("a", [1]), items=1)
    time.sleep(0.1)
    b = stage.submit(runner, ("a", [2]), items=1)  # arrives within the delay: same batch
    assert (a.result(5), b.result(5)) == ([2], [4])
    stage.close()
    assert runner.batches == [[1, 2]] and a.queued_s >= 0.1


def test_a_failing_batch_fails_each_of_its_submissions():
    class Failing(BatchingRunner):
        def forward(self, inputs):
            raise RuntimeError("out of memory")

    gate = threading.Event()
    stage = ModelStage(lambda runner, inputs: gate.wait(5) and runner.forward(inputs), maxsize=8, max_batch=4)
    runner = Failing()
    futures = [stage.submit(runner, ("a", [i]), items=1) for i in range(3)]
    gate.set()
    for f in futures:
        with pytest.raises(RuntimeError, match="out of memory"):
            f.result(5)
    stage.close()


def test_a_call_runs_on_the_stage_thread_in_turn_never_in_a_batch_and_not_as_a_pass():
    """A CPU worker's post-processing goes through ``call``: on the thread that runs the passes."""
    gate = threading.Event()
    runner = BatchingRunner(gate)
    stage = ModelStage(maxsize=16, max_batch=4)
    first = stage.submit(runner, ("a", [0]), items=1)  # held by the gate: the rest waits
    time.sleep(0.1)
    a1 = stage.submit(runner, ("a", [1]), items=1)
    called = stage.call(lambda x, y=0: (threading.get_ident(), x + y), 2, y=3)
    a2 = stage.submit(runner, ("a", [2]), items=1)
    failing = stage.call(lambda: 1 / 0)
    gate.set()
    ident, value = called.result(5)
    assert value == 5 and ident == stage._thread.ident != threading.get_ident()
    with pytest.raises(ZeroDivisionError):
        failing.result(5)
    assert [f.result(5) for f in (first, a1, a2)] == [[0], [2], [4]]
    stage.close()
    assert runner.batches == [[0], [1], [2]]  # the call between the two "a" passes kept them apart
    assert stage.stats().passes == 3 and stage.stats().items == 3
    assert called.queued_s > 0 and called.seconds >= 0 and called.batch_items == 0
    inline = InlineStage().call(lambda: threading.get_ident())
    assert inline.result() == threading.get_ident()
