"""Image jobs through the whole queue vs. a direct in-process loop, same model, same machine.

    python -m bench.images [--images 40] [--size 640x480] [--model tiny|swin-l] [--max-batch 4] [--load N]

(a) direct: one process loads the model once, then for each image: read, decode, infer,
    render the same outputs, write them to local files;
(b) segq: producer -> Redis -> one worker process -> S3 (upload, queue, fetch, infer, render,
    upload outputs, job record), from the first submit to the last job done;
(c) the same with dynamic batching across jobs (``SEGQ_MAX_BATCH=--max-batch``,
    ``SEGQ_BATCH_DELAY_MS=--batch-delay-ms``; the images are all one size, so their passes can
    be taken together), a second worker process that serves the same checkpoint under another
    model name (``ade-batched``), so that (b) and (c) alternate round by round on one set of
    servers and neither worker takes the other's jobs.

Each side with its own default threads (the direct loop: torch's, every core; the workers: their
thread policy; ``--threads N`` pins both). Prints images/s and the ratio (goal >= 0.95), and how
busy each worker's model stage was during its rounds (its forward seconds / the round's wall
time) and its items per pass, from the worker's registry record. ``--load N``: the rounds again
with N processes keeping N cores busy (``bench.common.busy``), in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import busy, checkpoint, load_label, servers, start_workers, stop_workers, table

#: The queue's images/s as a share of the direct loop's, at least.
GOAL = 0.95


def make_images(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        img = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 255, 3)))
        d = ImageDraw.Draw(img)
        for _ in range(8):
            x, y = int(rng.integers(0, size[0])), int(rng.integers(0, size[1]))
            d.ellipse([x, y, x + size[0] // 4, y + size[1] // 4], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        p = folder / f"img{i:03d}.jpg"
        img.save(p, quality=90)
        paths.append(p)
    return paths


class Direct:
    """The single-process loop: model loaded once; read, decode, infer, render, write files."""

    def __init__(self, ckpt: str, out: Path, threads: int | None):
        from workers.model import device
        from workers.model import models
        from workers.model.segmenter import Segmenter

        self.ckpt, self.out = ckpt, out
        self.model = models.load("bench", ckpt, device.select("auto", threads))
        self.segmenter = Segmenter(self.model)

    def run(self, paths: list[Path]) -> float:
        import numpy as np

        from workers.media import render
        from workers.media.decode import decode_image

        started = time.perf_counter()
        for p in paths:
            img = decode_image(p.read_bytes(), 10**9)
            pred = self.segmenter.predict([img], "semantic").predictions[0]
            files = render.image_outputs(np.asarray(img), pred, self.model.labels, job_id="direct", model="bench",
                                         checkpoint=self.ckpt, max_value=self.model.max_label_value)
            for name, (data, _) in files.items():
                (self.out / f"{p.stem}-{name}").write_bytes(data)
        return len(paths) / (time.perf_counter() - started)


class Queued:
    """The same images through segq: producer -> Redis -> one worker process of ``model`` -> S3."""

    def __init__(self, root: Path, env: dict, threads: int | None, model: str = "ade-semantic", prefix: str = "bench"):
        os.environ.update(env)
        from producer.client import Client
        from segq.settings import Settings

        self.model = model
        self.workers = start_workers(root, env, 1, threads, models=model, prefix=prefix)
        self.client = Client(Settings.from_env())

    def stage(self) -> tuple[float, int, int]:
        """The worker's model stage so far: busy seconds, items, passes."""
        from segq import registry

        rec = registry.get(self.client.records.r, self.workers[0][1])
        return (rec.model_busy_s, rec.model_items, rec.model_passes) if rec else (0.0, 0, 0)

    def run(self, paths: list[Path]) -> tuple[float, list, float, float | None]:
        """images/s, the job records, the busy fraction, items per pass."""
        busy0, items0, passes0 = self.stage()
        started = time.perf_counter()
        jobs = self.client.submit([str(p) for p in paths], task="semantic", model=self.model)
        records = self.client.wait([j.id for j in jobs], timeout=3600, poll=0.5)
        elapsed = time.perf_counter() - started
        assert all(r.state == "done" for r in records), [r.error for r in records if r.state != "done"]
        deadline = time.monotonic() + 15  # the record's figures come with the worker's next heartbeat (10 s)
        while (now := self.stage())[1] - items0 < len(paths) and time.monotonic() < deadline:
            time.sleep(0.05)
        passes = now[2] - passes0
        return len(paths) / elapsed, records, (now[0] - busy0) / elapsed, (now[1] - items0) / passes if passes else None

    def close(self) -> None:
        stop_workers(self.workers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--model", choices=["tiny", "swin-l"], default="tiny")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of each path; medians are reported")
    ap.add_argument("--max-batch", type=int, default=4, help="SEGQ_MAX_BATCH of the batching worker (path c)")
    ap.add_argument("--batch-delay-ms", type=int, default=5, help="SEGQ_BATCH_DELAY_MS of the batching worker")
    ap.add_argument("--threads", type=int, default=None, help="pin both sides' threads (default: each its own)")
    ap.add_argument("--load", type=int, default=0, metavar="N",
                    help="also run the rounds with N processes keeping N cores busy, in the same run")
    args = ap.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    loads = [0] + ([args.load] if args.load else [])
    by_load = {}
    with tempfile.TemporaryDirectory(prefix="segq-bench-") as tmp:
        root = Path(tmp)
        ckpt = checkpoint(root, args.model)
        paths = make_images(root / "in", args.images, size)
        (root / "direct-out").mkdir()
        with servers(root) as env:
            env["SEGQ_MODELS"] = f"ade-semantic={ckpt},ade-batched={ckpt}"
            batched_env = {**env, "SEGQ_MAX_BATCH": str(args.max_batch), "SEGQ_BATCH_DELAY_MS": str(args.batch_delay_ms)}
            direct = Direct(ckpt, root / "direct-out", args.threads)
            queued = Queued(root, env, args.threads)
            batched = None
            try:
                batched = Queued(root, batched_env, args.threads, model="ade-batched", prefix="batched")
                direct.run(paths[:2])  # warm-up of every path
                queued.run(paths[:2])
                batched.run(paths[: 2 * args.max_batch])
                for load in loads:
                    runs: dict[str, list[float]] = {"direct": [], "queued": [], "batched": []}
                    records, busy_, items = ({"queued": [], "batched": []} for _ in range(3))
                    with busy(load):
                        for _ in range(args.rounds):  # alternate, so drifts of the machine hit every path
                            runs["direct"].append(direct.run(paths))
                            for name, path in (("queued", queued), ("batched", batched)):
                                ips, recs, fraction, per_pass = path.run(paths)
                                runs[name].append(ips)
                                records[name] += recs
                                busy_[name].append(fraction)
                                items[name].append(per_pass or 0.0)
                    by_load[load] = (runs, records, busy_, items)
            finally:
                queued.close()
                if batched is not None:
                    batched.close()
    print(f"\n{args.images} images of {args.size}, model {args.model}, torch on CPU, "
          f"median of {args.rounds} alternating rounds\n")
    rows = []
    for load, (runs, records, busy_, items) in by_load.items():
        med = {k: statistics.median(v) for k, v in runs.items()}
        d = med["direct"]
        rows.append(("direct loop (1 process)", load_label(load), f"{d:.2f}",
                     " ".join(f"{x:.2f}" for x in runs["direct"]), "1.00", "-", "-"))
        for name, label in (("queued", "segq queue (1 worker, batching off)"),
                            ("batched", f"segq queue (1 worker, SEGQ_MAX_BATCH={args.max_batch}, "
                                        f"delay {args.batch_delay_ms} ms)")):
            ratio = med[name] / d
            rows.append((label, load_label(load), f"{med[name]:.2f}", " ".join(f"{x:.2f}" for x in runs[name]),
                         f"{ratio:.2f} ({'met' if ratio >= GOAL else 'NOT met'})",
                         f"{statistics.median(busy_[name]):.2f}", f"{statistics.median(items[name]):.2f}"))
    print(table(rows, ("path", "beside", "images/s", "rounds", f"ratio (>= {GOAL})", "model busy", "items/pass")))
    for load, (runs, records, busy_, items) in by_load.items():
        for name in ("queued", "batched"):
            recs = records[name]
            infer = statistics.mean(r.inference_s for r in recs)
            worker = statistics.mean(r.total_s for r in recs)
            print(f"\n{name} ({load_label(load)}): per job, inference {infer * 1000:.1f} ms, worker total "
                  f"{worker * 1000:.1f} ms (jobs overlap in the worker's threads); model busy by round: "
                  f"{' '.join(f'{b:.2f}' for b in busy_[name])}")


if __name__ == "__main__":
    main()
