"""Video tasks: split -> chunks (any worker, in parallel) -> assemble (exactly once).

- ``segq.split_video`` probes the video (reading it once, decoding one frame), writes the frame
  table to S3 and queues one ``segq.segment_chunk`` per ``chunk_frames`` frames, in front of its
  batch's pending work (``segq.scheduler`` releases them as worker slots free up), in one step
  with the job's update (a redelivered split queues nothing twice).
- ``segq.segment_chunk`` reads only its part of the video from S3 (ranged reads, seek to the
  keyframe before its first frame), runs the model in batches, renders overlays, encodes its part,
  writes part, label maps and timings, and records itself in the job's set of finished chunks.
- The chunk that completes the set queues ``segq.assemble_video`` in the same Lua script that
  records it (``segq/lua/chunk_done.lua``), so a chunk run twice never queues assembly twice and
  a crash cannot record the last chunk without queueing assembly; assembly joins the parts into
  one H.264 MP4 with the input's audio and finishes the job.

Celery chords are not used: their callbacks get lost on Redis; the set in the job record cannot.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

from segq import layout, limits, metrics, registry
from segq.jobs import CPU_STAGES, STAGES
from segq.protocol import (
    ASSEMBLE_VIDEO, SEGMENT_CHUNK, SPLIT_VIDEO, VideoJob, assembly_task_id, chunk_ranges, chunk_task_id,
)
from segq.shards import CHECK_SECONDS
from segq.storage import S3Object, S3Reader
from workers.host import runtime
from workers.media import video
from workers.host.budget import chunk_pixels
from workers.tasks.chunk import ChunkPipeline
from workers.tasks.skeleton import Context, check_canceled, job_task

log = logging.getLogger(__name__)


def every(seconds: float, check):
    """``check`` run at most once every ``seconds``, the first time ``seconds`` from now (a chunk
    looks whether its job was canceled between its batches of frames: once a second is soon
    enough, and costs Redis less; its start has just looked)."""
    last = [time.monotonic()]

    def maybe() -> None:
        now = time.monotonic()
        if now - last[0] >= seconds:
            last[0] = now
            check()

    return maybe


def _info(rt: runtime.Runtime, job_id: str) -> video.VideoInfo:
    return video.VideoInfo.from_json(rt.storage.get_bytes(S3Object(rt.settings.s3_bucket, layout.frames_key(job_id))))


@job_task(SPLIT_VIDEO, VideoJob.from_message, starts_job=True)
def split_video(ctx: Context) -> dict:
    rt, job = ctx.rt, ctx.job
    t0 = time.perf_counter()
    rt.model(job.model)  # refuse models this worker does not serve before any work
    limits.check_bytes(rt.storage.size(ctx.input), rt.settings.max_input_bytes)
    info = video.probe(S3Reader(rt.storage, ctx.input), rt.settings.max_video_frames, rt.settings.max_image_pixels)
    rt.storage.put_bytes(layout.frames_key(job.job_id), info.to_json(), "application/json")
    chunks = chunk_ranges(info.frames, job.chunk_frames)
    entries = [ctx.entry(SEGMENT_CHUNK, job.for_chunk(index, start, end), chunk_task_id(job.job_id, job.run, index))
               for index, (start, end) in enumerate(chunks)]
    split_s = time.perf_counter() - t0
    rt.records.split_done(
        job.job_id, info.frames, entries, frames_total=info.frames, chunks_total=len(chunks), frames_done=0,
        chunks_done=0, video_fps=round(float(info.fps), 6), width=info.width, height=info.height,
        chunk_frames=job.chunk_frames, batch_size=job.batch_size, split_s=round(split_s, 6),
    )
    return {"job_id": job.job_id, "frames": info.frames, "chunks": len(chunks), "split_s": round(split_s, 4)}


@job_task(SEGMENT_CHUNK, VideoJob.from_message, starts_job=False)
def segment_chunk(ctx: Context) -> dict:
    rt, job = ctx.rt, ctx.job
    t0 = time.perf_counter()
    segmenter = rt.model(job.model)
    info = _info(rt, job.job_id)
    reader = S3Reader(rt.storage, ctx.input, block_size=256 * 1024)
    # The worker's memory budget: the frames this chunk holds at once (workers.host.budget).
    with rt.budget.hold(chunk_pixels(info.width, info.height, job.batch_size)), \
            tempfile.TemporaryDirectory(prefix="segq-chunk-") as tmp:
        admitted = time.perf_counter()
        part, labels = Path(tmp) / "part.mp4", Path(tmp) / "labels.npz"
        encoder = video.PartEncoder(part, info.fps)
        # Frames decoded ahead, the model on the worker's model stage, overlays rendered and
        # encoded behind, each in a thread of its own (workers.tasks.chunk); errors surface here.
        with ChunkPipeline(segmenter, job.task, job.batch_size, encoder.write, annotate_fps=job.annotate_fps,
                           check=every(CHECK_SECONDS, lambda: check_canceled(rt, job.job_id))) as renderer:
            renderer.add_all(video.decode_range(reader, info, job.start, job.end))
            c0 = time.thread_time()
            renderer.archive(job.start, job.end, target=labels)
            frames = encoder.close()
            packed = time.thread_time() - c0  # the label archive and the encoder's last frames
        t1, c1 = time.perf_counter(), time.thread_time()
        rt.storage.put_file(part, layout.part_key(job.job_id, job.chunk), "video/mp4")
        rt.storage.put_file(labels, layout.output_key(job.job_id, layout.chunk_labels_name(job.chunk)),
                            "application/x-npz")
        uploaded, uploaded_cpu = time.perf_counter() - t1, time.thread_time() - c1
    times = renderer.times
    stages = {"fetch": reader.fetch_s, "memory": admitted - t0, "decode": max(0.0, renderer.decode_s - reader.fetch_s),
              "preprocess": times.preprocess_s, "wait": times.wait_s, "forward": times.forward_s,
              "postprocess": times.postprocess_s, "render": times.blend_s + renderer.render_s, "upload": uploaded}
    cpu = {"fetch": reader.fetch_cpu_s, "decode": max(0.0, renderer.decode_cpu_s - reader.fetch_cpu_s),
           "preprocess": times.preprocess_cpu_s, "postprocess": times.postprocess_cpu_s,
           "render": times.blend_cpu_s + renderer.render_cpu_s + packed, "upload": uploaded_cpu}
    inference_s = renderer.inference_s
    chunk_info = {
        "chunk": job.chunk, "start": job.start, "end": job.end, "frames": frames,
        "inference_s": round(inference_s, 6), "fps": round(frames / inference_s, 3) if inference_s else None,
        "total_s": round(time.perf_counter() - t0, 6), "worker": rt.hostname, "device": rt.spec.label,
        "read_bytes": reader.bytes_fetched, "finished_at": time.time(),
        "stages": {k: round(v, 6) for k, v in stages.items()}, "items_per_pass": times.items_per_pass,
        "cpu": {k: round(v, 6) for k, v in cpu.items()},
    }
    assembly = ctx.entry(ASSEMBLE_VIDEO, job.for_chunk(-1, 0, 0), assembly_task_id(job.job_id, job.run))
    task_id = ctx.task.request.id
    task = (task_id, rt.upkeep.tag_of(task_id) or "") if task_id and rt.upkeep is not None else None
    outcome, state = rt.records.chunk_done(job.job_id, job.chunk, frames, inference_s, chunk_info, assembly, task)
    if task is not None:
        rt.upkeep.ended(task_id)  # its message is done with too
    ctx.final_state = state or ""  # the job's state after the chunk: the skeleton need not ask again
    tally = metrics.Tally()
    tally.stages(job.model, stages)
    rt.observe(tally)
    return {"job_id": job.job_id, **chunk_info, "outcome": outcome}


@job_task(ASSEMBLE_VIDEO, VideoJob.from_message, starts_job=False)
def assemble_video(ctx: Context) -> dict:
    rt, job = ctx.rt, ctx.job
    t0 = time.perf_counter()
    rt.records.count_assembly(job.job_id)  # runs of assembly, for `segq status`
    record = rt.records.get(job.job_id)
    info = _info(rt, job.job_id)
    chunks = chunk_ranges(info.frames, job.chunk_frames)
    with tempfile.TemporaryDirectory(prefix="segq-assemble-") as tmp:
        parts = [rt.storage.download(layout.part_key(job.job_id, i), Path(tmp) / f"{i:05d}.mp4")
                 for i in range(len(chunks))]
        out = Path(tmp) / layout.OVERLAY_VIDEO
        audio = S3Reader(rt.storage, ctx.input) if info.audio else None
        written = video.assemble(parts, info.fps, out, audio)
        if written != info.frames:
            raise RuntimeError(f"assembled {written} frames, expected {info.frames}")
        rt.storage.put_file(out, layout.output_key(job.job_id, layout.OVERLAY_VIDEO), "video/mp4")
    finished = time.time()
    infos = rt.records.chunk_infos(job.job_id)
    inference_s = sum(c["inference_s"] for c in infos.values())
    wall = finished - (record.started_at or finished)
    figures = {
        "inference_s": round(inference_s, 6),
        "fps": round(info.frames / inference_s, 3) if inference_s else None,
        "e2e_fps": round(info.frames / wall, 3) if wall > 0 else None,
        "total_s": round(wall, 6),
        "split_s": record.split_s,
        "assemble_s": round(time.perf_counter() - t0, 6),
    }
    model = rt.model(job.model).model
    stages = {name: round(sum(c.get("stages", {}).get(name, 0.0) for c in infos.values()), 6) for name in STAGES}
    cpu = {name: round(sum(c.get("cpu", {}).get(name, 0.0) for c in infos.values()), 6) for name in CPU_STAGES}
    doc = {
        "job_id": job.job_id, "task": job.task, "model": job.model, "checkpoint": model.checkpoint,
        "processor": model.processor_name, "postprocess": model.postprocess, "input": ctx.input.uri, "probe": info.summary(),
        "chunk_frames": job.chunk_frames, "batch_size": job.batch_size,
        "chunks": [infos[i] for i in sorted(infos)], "metrics": figures,
        "label_archives": [layout.output_key(job.job_id, layout.chunk_labels_name(i)) for i in range(len(chunks))],
    }
    rt.storage.put_bytes(layout.output_key(job.job_id, layout.VIDEO_JSON), json.dumps(doc, indent=1).encode(),
                         "application/json")
    ended = rt.records.finish(job.job_id, checkpoint=model.checkpoint, frames=info.frames, stages=stages, cpu=cpu,
                              **{k: v for k, v in figures.items() if k != "split_s"})
    if ended.moved:
        tally = metrics.Tally()
        tally.observe(metrics.LATENCY, (job.model, "video", job.priority), finished - record.created_at)
        rt.observe(tally)
    rt.count(registry.JOBS_DONE)
    for index in range(len(chunks)):  # the parts were intermediate
        rt.storage.delete(layout.part_key(job.job_id, index))
    rt.storage.delete(layout.frames_key(job.job_id))  # and so was the frame table
    return {"job_id": job.job_id, "state": "done", "frames": written, **figures}
