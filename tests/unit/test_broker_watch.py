"""The launcher tells outages from crashes (``workers.host.launcher.BrokerWatch``) against a real
redis-server: stopped, restarted (a new run id) or unreachable counts as an outage for a while;
a steady Redis does not."""

from __future__ import annotations

from producer.stack import RedisServer, free_port
from workers.host.launcher import OUTAGE_GRACE, BrokerWatch


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_restart_or_an_unreachable_redis_is_an_outage_for_a_while(tmp_path):
    server = RedisServer("redis", tmp_path / "redis.log", data_dir=tmp_path).start()
    clock = Clock()
    watch = BrokerWatch(server.url, clock=clock)
    try:
        watch.check()
        assert not watch.outage()  # steady
        server.stop()
        clock.now += 5
        assert watch.outage()  # unreachable
        server.start()  # same port, a new run id
        clock.now += OUTAGE_GRACE + 1
        assert not BrokerWatch(server.url, clock=clock).outage()  # a fresh watch never saw it away
        watch.last_outage = None
        assert watch.outage()  # but this one sees another run id: a restart
        clock.now += OUTAGE_GRACE + 1
        assert not watch.outage()
    finally:
        server.stop()
    assert BrokerWatch(f"redis://127.0.0.1:{free_port()}/0", clock=clock).outage()
    assert not BrokerWatch(None).outage()  # nothing to watch: every exit counts
