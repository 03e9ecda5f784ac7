"""Video tasks: split -> chunks (any worker, in parallel) -> assemble (exactly once).

- ``segq.split_video`` probes the video (reading it once, decoding one frame), writes the frame
  table to S3 and queues one ``segq.segment_chunk`` per ``chunk_frames`` frames.
- ``segq.segment_chunk`` reads only its part of the video from S3 (ranged reads, seek to the
  keyframe before its first frame), runs the model in batches, renders overlays, encodes its part,
  writes part, label maps and timings, and records itself in the job's set of finished chunks.
- The chunk that completes the set queues ``segq.assemble_video`` (a Lua script in
  ``segq.jobs`` decides, atomically, so a chunk run twice never starts assembly twice); it
  joins the parts into one H.264 MP4 with the input's audio and finishes the job.

Celery chords are not used: their callbacks get lost on Redis; the set in the job record cannot.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from celery import Task
from PIL import Image

from segq import keys, layout
from segq.jobs import FINAL_STATES, RESEND_ASSEMBLY, START_ASSEMBLY
from segq.protocol import ASSEMBLE_VIDEO, SEGMENT_CHUNK, SPLIT_VIDEO, VideoJob, model_queue
from segq.storage import S3Object, S3Reader
from workers import render, runtime, video
from workers.app import app
from workers.failures import guarded, parse
from workers.inference import predict
from workers.tasks import TASK_OPTIONS, begin, check_size

log = logging.getLogger(__name__)


def _send(job: VideoJob, name: str, task_id: str) -> None:
    app.send_task(name, kwargs=job.to_message(), queue=model_queue(job.model), task_id=task_id)


def _follow_up(payload: dict):
    """Parse a chunk or assembly message. Returns ``(runtime, job, input object, skipped)``;
    ``skipped`` is the task's result when the job is already final (or gone): nothing to do."""
    rt = runtime.get()
    job = parse(rt, payload, VideoJob.from_message)
    skipped = None
    if rt.store.state(job.job_id) in (*FINAL_STATES, None):
        skipped = {"job_id": job.job_id, "chunk": job.chunk, "skipped": "job finished or gone"}
    return rt, job, S3Object(job.input_bucket, job.input_key), skipped


def _info(rt: runtime.Runtime, job_id: str) -> video.VideoInfo:
    return video.VideoInfo.from_json(rt.storage.get_bytes(S3Object(rt.settings.s3_bucket, layout.frames_key(job_id))))


@app.task(name=SPLIT_VIDEO, **TASK_OPTIONS)
def split_video(self: Task, **payload) -> dict:
    rt, job, obj, skipped = begin(payload, VideoJob.from_message)
    if skipped:
        return skipped

    def work() -> dict:
        t0 = time.perf_counter()
        rt.model(job.model)  # refuse models this worker does not serve before any work
        check_size(rt, obj)
        info = video.probe(S3Reader(rt.storage, obj), rt.settings.max_video_frames, rt.settings.max_image_pixels)
        rt.storage.put_bytes(layout.frames_key(job.job_id), info.to_json(), "application/json")
        chunks = video.plan_chunks(info.frames, job.chunk_frames)
        rt.store.update(
            job.job_id, frames_total=info.frames, chunks_total=len(chunks), frames_done=0, chunks_done=0,
            video_fps=round(float(info.fps), 6), width=info.width, height=info.height,
            chunk_frames=job.chunk_frames, batch_size=job.batch_size,
        )
        # A redelivered split sends every chunk again: duplicates are counted once (segq.jobs).
        for index, (start, end) in enumerate(chunks):
            _send(job.for_chunk(index, start, end), SEGMENT_CHUNK, f"{job.job_id}-chunk{index:05d}")
        split_s = time.perf_counter() - t0
        rt.store.update(job.job_id, split_s=round(split_s, 6))
        return {"job_id": job.job_id, "frames": info.frames, "chunks": len(chunks), "split_s": round(split_s, 4)}

    return guarded(self, rt, job.job_id, obj.uri, work)


@app.task(name=SEGMENT_CHUNK, **TASK_OPTIONS)
def segment_chunk(self: Task, **payload) -> dict:
    rt, job, obj, skipped = _follow_up(payload)
    if skipped:
        return skipped

    def work() -> dict:
        t0 = time.perf_counter()
        model = rt.model(job.model)
        info = _info(rt, job.job_id)
        reader = S3Reader(rt.storage, obj, block_size=256 * 1024)
        dtype = render.label_map_dtype(model.max_label_value)
        labels, segments, inference_s = [], [], 0.0
        with tempfile.TemporaryDirectory(prefix="segq-chunk-") as tmp:
            part = Path(tmp) / "part.mp4"
            encoder = video.PartEncoder(part, info.fps)
            batch: list[np.ndarray] = []

            def flush() -> None:
                nonlocal inference_s
                timed = predict(model, [Image.fromarray(f) for f in batch], job.task)
                inference_s += timed.seconds
                per_frame_fps = len(batch) / timed.seconds if timed.seconds > 0 else 0.0
                for rgb, pred in zip(batch, timed.predictions):
                    frame = render.overlay(rgb, pred, model.labels)
                    if job.annotate_fps:
                        video.annotate_fps(frame, per_frame_fps)
                    encoder.write(frame)
                    labels.append(pred.label_map.astype(dtype))
                    segments.append([
                        {"id": s.id, "label_id": s.label_id, "label": model.labels.name_of(s.label_id),
                         "score": s.score, "area": s.area, "bbox": list(s.bbox)}
                        for s in pred.segments
                    ])
                batch.clear()

            for rgb in video.decode_range(reader, info, job.start, job.end):
                batch.append(rgb)
                if len(batch) == job.batch_size:
                    flush()
            if batch:
                flush()
            frames = encoder.close()
            rt.storage.put_bytes(layout.part_key(job.job_id, job.chunk), part.read_bytes(), "video/mp4")
        archive = io.BytesIO()
        np.savez_compressed(
            archive, labels=np.stack(labels), frames=np.arange(job.start, job.end),
            segments=np.array(json.dumps(segments)),
        )
        rt.storage.put_bytes(
            layout.output_key(job.job_id, layout.chunk_labels_name(job.chunk)), archive.getvalue(), "application/x-npz"
        )
        chunk_info = {
            "chunk": job.chunk, "start": job.start, "end": job.end, "frames": frames,
            "inference_s": round(inference_s, 6), "fps": round(frames / inference_s, 3) if inference_s else None,
            "total_s": round(time.perf_counter() - t0, 6), "worker": rt.hostname, "device": rt.spec.label,
            "read_bytes": reader.bytes_fetched, "finished_at": time.time(),
        }
        outcome = rt.store.chunk_done(job.job_id, job.chunk, frames, inference_s, chunk_info)
        if outcome in (START_ASSEMBLY, RESEND_ASSEMBLY):
            _send(job.for_chunk(-1, 0, 0), ASSEMBLE_VIDEO, f"{job.job_id}-assemble")
            rt.store.update(job.job_id, assembly_sent=1)
        return {"job_id": job.job_id, **chunk_info, "outcome": outcome}

    return guarded(self, rt, job.job_id, obj.uri, work)


@app.task(name=ASSEMBLE_VIDEO, **TASK_OPTIONS)
def assemble_video(self: Task, **payload) -> dict:
    rt, job, obj, skipped = _follow_up(payload)
    if skipped:
        return skipped

    def work() -> dict:
        t0 = time.perf_counter()
        rt.store.r.hincrby(keys.job(job.job_id), "assemblies", 1)  # runs of assembly, for `segq status`
        record = rt.store.get(job.job_id)
        info = _info(rt, job.job_id)
        chunks = video.plan_chunks(info.frames, job.chunk_frames)
        with tempfile.TemporaryDirectory(prefix="segq-assemble-") as tmp:
            parts = []
            for index in range(len(chunks)):
                parts.append(rt.storage.download(layout.part_key(job.job_id, index), Path(tmp) / f"{index:05d}.mp4"))
            out = Path(tmp) / layout.OVERLAY_VIDEO
            audio = S3Reader(rt.storage, obj) if info.audio else None
            written = video.assemble(parts, info.fps, out, audio)
            if written != info.frames:
                raise RuntimeError(f"assembled {written} frames, expected {info.frames}")
            rt.storage.put_file(out, layout.output_key(job.job_id, layout.OVERLAY_VIDEO), "video/mp4")
        finished = time.time()
        infos = rt.store.chunk_infos(job.job_id)
        inference_s = sum(c["inference_s"] for c in infos.values())
        wall = finished - (record.started_at or finished)
        metrics = {
            "inference_s": round(inference_s, 6),
            "fps": round(info.frames / inference_s, 3) if inference_s else None,
            "e2e_fps": round(info.frames / wall, 3) if wall > 0 else None,
            "total_s": round(wall, 6),
            "split_s": record.split_s,
            "assemble_s": round(time.perf_counter() - t0, 6),
        }
        doc = {
            "job_id": job.job_id, "task": job.task, "model": job.model,
            "checkpoint": rt.model(job.model).checkpoint, "processor": rt.model(job.model).processor_name,
            "input": obj.uri, "probe": info.summary(),
            "chunk_frames": job.chunk_frames, "batch_size": job.batch_size,
            "chunks": [infos[i] for i in sorted(infos)], "metrics": metrics,
            "label_archives": [layout.output_key(job.job_id, layout.chunk_labels_name(i)) for i in range(len(chunks))],
        }
        rt.storage.put_bytes(layout.output_key(job.job_id, layout.VIDEO_JSON), json.dumps(doc, indent=1).encode(),
                             "application/json")
        outputs = [layout.output_key(job.job_id, layout.OVERLAY_VIDEO), layout.output_key(job.job_id, layout.VIDEO_JSON)]
        outputs += doc["label_archives"]
        rt.store.finish(
            job.job_id, outputs=outputs, checkpoint=doc["checkpoint"], frames=info.frames,
            **{k: v for k, v in metrics.items() if k != "split_s"},
        )
        rt.count("jobs_done")
        for index in range(len(chunks)):  # the parts were intermediate
            rt.storage.delete(layout.part_key(job.job_id, index))
        return {"job_id": job.job_id, "state": "done", "frames": written, **metrics}

    return guarded(self, rt, job.job_id, obj.uri, work)
