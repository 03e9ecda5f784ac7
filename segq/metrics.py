"""Histograms for Prometheus, kept in Redis: job latency (submit to done) and seconds per stage.

A histogram here is a few counters in one hash (``segq:hist``): per metric and label values, one
counter per bucket (not cumulative), the sum and the count. A worker counts a shard's images, a
chunk's stages or a video's latency in memory (:class:`Tally`) and adds them to Redis in the very
Lua script that ends the shard, the chunk or the job (``hist_add`` in ``segq/lua/lib.lua``): one
step, so each is counted once (a shard or chunk run twice is counted by the run that ends it
first), and a worker killed before that step loses nothing that is counted, since its work runs
again. ``segq exporter`` reads them at each scrape and serves them in Prometheus's conventions
(cumulative ``_bucket`` series with ``le``, ``_sum``, ``_count``: :func:`families`). Their size does
not grow with the jobs: a counter per bucket and label set.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter, defaultdict

import redis

from segq import keys

#: Job latency, seconds from submission to done.
LATENCY = "segq_job_latency_seconds"
LATENCY_LABELS = ("model", "kind", "priority")
LATENCY_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
#: Seconds of each stage of a job (an image) or a chunk (a video's part).
STAGE = "segq_stage_seconds"
STAGE_LABELS = ("model", "stage")
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

HISTOGRAMS = {LATENCY: (LATENCY_LABELS, LATENCY_BUCKETS), STAGE: (STAGE_LABELS, STAGE_BUCKETS)}


class Tally:
    """Observations of the histograms counted in memory, to be added to Redis in one step
    (:meth:`to_json`)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.sums: defaultdict[str, float] = defaultdict(float)

    def observe(self, name: str, labels: tuple[str, ...], value: float) -> None:
        names, buckets = HISTOGRAMS[name]
        if len(labels) != len(names) or any("|" in v for v in labels):
            raise ValueError(f"bad labels {labels!r} for {name}")
        base = "|".join((name, *labels))
        self.counts[f"{base}|{bisect.bisect_left(buckets, value)}"] += 1
        self.counts[f"{base}|count"] += 1
        self.sums[f"{base}|sum"] += float(value)

    def stages(self, model: str, stages: dict[str, float]) -> None:
        """The seconds of each stage of one image, or one chunk."""
        for stage, seconds in stages.items():
            self.observe(STAGE, (model, stage), seconds)

    def merge(self, other: "Tally") -> None:
        self.counts.update(other.counts)
        for field, value in other.sums.items():
            self.sums[field] += value

    def to_json(self) -> str:
        """``{field: increment}``: counters as whole numbers, sums (fields ending ``|sum``) as
        floats; what ``hist_add`` of ``segq/lua/lib.lua`` adds to Redis."""
        return json.dumps({**self.counts, **self.sums})

    def __bool__(self) -> bool:
        return bool(self.counts)


def families(r: redis.Redis):
    """The histograms as prometheus_client metric families (cumulative buckets)."""
    from prometheus_client.core import HistogramMetricFamily

    found: dict[str, dict[tuple, dict]] = {name: {} for name in HISTOGRAMS}
    for field, value in r.hgetall(keys.HISTOGRAMS).items():
        name, *rest = field.split("|")
        if name not in HISTOGRAMS or len(rest) != len(HISTOGRAMS[name][0]) + 1:
            continue
        *labels, part = rest
        entry = found[name].setdefault(tuple(labels), {"buckets": {}, "sum": 0.0, "count": 0})
        if part == "sum":
            entry["sum"] = float(value)
        elif part == "count":
            entry["count"] = int(value)
        elif part.isdigit():
            entry["buckets"][int(part)] = int(value)
    out = []
    for name, (label_names, bounds) in HISTOGRAMS.items():
        family = HistogramMetricFamily(name, _HELP[name], labels=list(label_names))
        for labels, entry in sorted(found[name].items()):
            cumulative, total = [], 0
            for i, bound in enumerate(bounds):
                total += entry["buckets"].get(i, 0)
                cumulative.append((str(bound), total))
            total += entry["buckets"].get(len(bounds), 0)
            cumulative.append(("+Inf", max(total, entry["count"])))
            family.add_metric(list(labels), cumulative, entry["sum"])
        out.append(family)
    return out


_HELP = {LATENCY: "Seconds from a job's submission to done", STAGE: "Seconds of each stage of an image job or a chunk"}
