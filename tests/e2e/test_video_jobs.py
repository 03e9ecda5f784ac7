"""Videos: split into chunks, segmented on two workers in parallel, assembled exactly once
into a browser-playable H.264 MP4 with every frame."""

from __future__ import annotations

import io
import json

import av
import numpy as np
import pytest
from PIL import Image

from segq import layout
from segq.errors import InputError
from segq.protocol import SEGMENT_CHUNK, VideoJob, model_queue
from segq.settings import Settings

from support.fleet import wait_handled
from support.media import audio_only, video
from support.reference import assert_batch_matches
from support.servers import WORKER_THREADS
from support.storage import fetch

pytestmark = pytest.mark.e2e


def decoded_frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def test_a_video_on_two_workers_comes_back_as_h264_with_every_frame(client, second_worker, worker, tiny_models, tmp_path):
    src = video(tmp_path / "clip.mp4", frames=91, size=(320, 240), fps=30, audio=True)
    [job] = client.submit([str(src)], task="semantic", chunk_frames=12, batch_size=4)
    assert job.kind == "video"
    [done] = client.wait([job.id], timeout=300)
    assert done.state == "done", done.error

    assert (done.frames_total, done.frames_done, done.chunks_total, done.chunks_done) == (91, 91, 8, 8)
    assert done.assemblies == 1
    assert done.fps == pytest.approx(91 / done.inference_s, rel=1e-3)
    # Inference seconds are summed per batch (preprocessing, forward, post-processing). Each of the
    # two workers runs up to SEGQ_WORKER_CONCURRENCY chunks at once, and within a chunk the next
    # forward pass overlaps the previous batch's post-processing: at most 2 x 2 x concurrency
    # inference seconds per second of wall time.
    assert 0 < done.e2e_fps < done.fps * 2 * 2 * Settings().worker_concurrency
    assert done.split_s > 0 and done.assemble_s > 0

    out = tmp_path / "overlay.mp4"
    out.write_bytes(fetch(client, layout.output_key(job.id, layout.OVERLAY_VIDEO)))
    data = out.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat"), "faststart: the index comes first"
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        assert v.codec_context.name == "h264" and v.codec_context.pix_fmt == "yuv420p"
        assert v.average_rate == 30 and (v.codec_context.width, v.codec_context.height) == (320, 240)
        assert [s.codec_context.name for s in c.streams.audio] == ["aac"]
        assert sum(1 for _ in c.decode(v)) == 91

    doc = json.loads(fetch(client, layout.output_key(job.id, layout.VIDEO_JSON)))
    assert [c["chunk"] for c in doc["chunks"]] == list(range(8))
    assert [c["frames"] for c in doc["chunks"]] == [12] * 7 + [7]  # odd count: the last chunk is short
    assert {c["worker"] for c in doc["chunks"]} == {worker, second_worker}
    assert all(c["read_bytes"] > 0 for c in doc["chunks"])

    assert doc["processor"] == "Mask2FormerImageProcessorPil" and doc["input"] == done.input
    assert (doc["probe"]["frames"], doc["probe"]["width"], doc["probe"]["height"]) == (91, 320, 240)

    # Every frame's label map equals transformers run directly on the checkpoint, but for rare
    # near-ties of the reference. The worker ran each chunk's frames in passes of 4 (batch_size;
    # SEGQ_MAX_BATCH=1 joins no passes) on one torch thread: the reference runs the same passes.
    frames = decoded_frames(src)
    checkpoint = tiny_models["ade-semantic"]
    seen = []
    for key in doc["label_archives"]:
        archive = np.load(io.BytesIO(fetch(client, key)))
        segments = json.loads(str(archive["segments"]))
        assert len(segments) == len(archive["frames"])
        indices, labels = [int(i) for i in archive["frames"]], list(archive["labels"])
        for at in range(0, len(indices), 4):
            batch = indices[at:at + 4]
            assert_batch_matches(labels[at:at + 4], checkpoint, [Image.fromarray(frames[i]) for i in batch],
                                 "semantic", what=[f"frame {i}" for i in batch], threads=WORKER_THREADS)
        seen += indices
    assert seen == list(range(91))


def test_a_chunk_delivered_twice_neither_assembles_twice_nor_corrupts_the_output(client, second_worker, redis_client, tmp_path):
    import time

    src = video(tmp_path / "dup.mp4", frames=45, size=(160, 120), fps=25)
    [job] = client.submit([str(src)], task="instance", chunk_frames=10, batch_size=3)
    deadline = time.monotonic() + 120
    while not client.status(job.id).chunks_total:  # the split step has planned the chunks
        assert time.monotonic() < deadline
        time.sleep(0.05)
    bucket, key = job.input.removeprefix("s3://").split("/", 1)
    base = VideoJob(job_id=job.id, task="instance", model=job.model, input_bucket=bucket, input_key=key,
                    chunk_frames=10, batch_size=3)
    for n, (i, s, e) in enumerate([(0, 0, 10), (0, 0, 10), (4, 40, 45)]):
        client.celery.send_task(SEGMENT_CHUNK, kwargs=base.for_chunk(i, s, e).to_message(),
                                queue=model_queue(job.model), task_id=f"{job.id}-dup{n}")
    [done] = client.wait([job.id], timeout=300)
    wait_handled(client.r, {f"{job.id}-dup{n}" for n in range(3)})  # every duplicate ran (or was skipped)
    assert done.state == "done", done.error
    assert done.assemblies == 1
    assert (done.frames_done, done.chunks_done, done.chunks_total) == (45, 5, 5)
    out = tmp_path / "dup-overlay.mp4"
    out.write_bytes(fetch(client, layout.output_key(job.id, layout.OVERLAY_VIDEO)))
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(c.streams.video[0])) == 45


def test_fps_annotation_and_batch_size_one(client, second_worker, tmp_path):
    src = video(tmp_path / "fps.mp4", frames=20, size=(200, 150), fps=24)
    [job] = client.submit([str(src)], task="panoptic", chunk_frames=7, batch_size=1, annotate_fps=True)
    [done] = client.wait([job.id], timeout=300)
    assert done.state == "done", done.error
    plain = client.submit([str(src)], task="panoptic", chunk_frames=7, batch_size=1)[0]
    client.wait([plain.id], timeout=300)
    first = {}
    for j in (job.id, plain.id):
        path = tmp_path / f"{j}.mp4"
        path.write_bytes(fetch(client, layout.output_key(j, layout.OVERLAY_VIDEO)))
        first[j] = decoded_frames(path)[0].astype(int)
    # The text is drawn top left, in red; the rest of the frame is the same overlay.
    corner = (first[job.id][5:35, 10:160] - first[plain.id][5:35, 10:160])
    assert np.abs(corner).sum() > 1000
    assert np.abs(first[job.id][60:] - first[plain.id][60:]).mean() < 2


def bad_videos(tmp_path, client) -> dict[str, tuple[str, str]]:
    empty_stream = tmp_path / "noframes.mp4"
    with av.open(str(empty_stream), "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()  # a header, and not one frame
    good = video(tmp_path / "good.mp4", frames=30, size=(96, 64))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    indexed = tmp_path / "indexed.mp4"  # faststart: the index survives the cut, the frames do not
    with av.open(str(good)) as i, av.open(str(indexed), "w", format="mp4", options={"movflags": "+faststart"}) as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(i.streams.video[0]):
            if p.dts is not None:
                p.stream = s
                o.mux(p)
    cut_indexed = tmp_path / "cut-indexed.mp4"
    cut_indexed.write_bytes(indexed.read_bytes()[: indexed.stat().st_size * 2 // 3])
    # Already in storage (the CLI refuses such local files before upload): the worker must say why.
    text_key = "inputs/bad-videos/notes.mp4"
    client.storage.put_bytes(text_key, b"not a video\n" * 30)
    long = video(tmp_path / "long.mp4", frames=310, size=(32, 32), gop=100)
    return {
        "zero frames": (str(empty_stream), "the video has no frames"),
        "truncated": (str(truncated), "truncated MP4/MOV: the file ends inside its 'mdat' box"),
        "truncated after its index": (str(cut_indexed), "truncated or corrupt video: its index lists 30 frames"),
        "text named .mp4": (f"s3://{client.settings.s3_bucket}/{text_key}", "not a video container (neither MP4/MOV, Matroska/WebM nor AVI)"),
        "audio only": (str(audio_only(tmp_path / "sound.mp4")), "no video stream in the file (it holds audio)"),
        "too long": (str(long), "more than 300 frames (SEGQ_MAX_VIDEO_FRAMES)"),
    }


def test_bad_videos_fail_cleanly_and_the_workers_go_on(client, second_worker, tmp_path):
    bad = bad_videos(tmp_path, client)
    jobs = {}
    for name, (path, _) in bad.items():
        [jobs[name]] = client.submit([path], task="semantic")
    records = {name: r for name, r in zip(jobs, client.wait([j.id for j in jobs.values()], timeout=300))}
    for name, record in records.items():
        assert record.state == "failed", name
        assert bad[name][1] in record.error, f"{name}: {record.error}"
    # Too large: refused at submission (the producer reads the object's size before any job exists);
    # the worker checks the size it fetches again (an object replaced since): the same segq.limits.
    big_key = "inputs/bad-videos/big.mp4"
    client.storage.put_bytes(big_key, b"\0" * (client.settings.max_input_bytes + 1))
    with pytest.raises(InputError, match=r"big\.mp4 is 8,388,609 bytes, over the limit of 8,388,608 bytes \(8\.0 MiB\) \(SEGQ_MAX_INPUT_BYTES\)"):
        client.submit([f"s3://{client.settings.s3_bucket}/{big_key}"], task="semantic")
    [ok] = client.submit([str(video(tmp_path / "after.mp4", frames=15, size=(96, 64)))], task="semantic", chunk_frames=5)
    [done] = client.wait([ok.id], timeout=300)
    assert done.state == "done", done.error
