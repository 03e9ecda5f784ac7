"""A mixed batch of jobs spread over the fleet, and who took which part."""

from __future__ import annotations

from support.media import photo, video


def chunk_workers(client, job_id: str) -> set[str]:
    return {c["worker"] for c in client.store.chunk_infos(job_id).values()}


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
