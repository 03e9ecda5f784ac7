"""The contract both sides import: settings, payloads, keys, layout, the job record."""

from __future__ import annotations

import ssl

import pytest

from segq import defaults, keys, layout
from segq.broker import celery_config
from segq.errors import ConfigError, UnknownModel, UnknownTask
from segq.jobs import JobRecord
from segq.protocol import (
    PayloadError, ShardJob, VideoJob, image_id, model_queue, new_job_id, new_namespace, parse_image_id, parse_task_id,
    shard_task_id,
)
from segq.settings import Settings


def test_settings_defaults_are_the_articles_checkpoints():
    s = Settings.from_env({})
    assert s.models["ade-semantic"] == "facebook/mask2former-swin-large-ade-semantic"
    assert s.resolve_model("panoptic", None) == "coco-panoptic"
    assert s.redis_url == defaults.REDIS_URL and s.s3_endpoint_url is None


def test_settings_read_every_variable():
    s = Settings.from_env({
        "SEGQ_REDIS_URL": "rediss://:secret@redis.internal:6380/2",
        "SEGQ_S3_ENDPOINT_URL": "http://minio:9000",
        "SEGQ_S3_BUCKET": "seg",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "SEGQ_MODELS": "ade=/models/ade,pan=facebook/mask2former-swin-tiny-coco-panoptic",
        "SEGQ_TASK_MODELS": "semantic=ade,panoptic=pan",
        "SEGQ_MAX_IMAGE_PIXELS": "1_000_000",
        "SEGQ_TASK_RETRIES": "0",
    })
    assert s.s3_bucket == "seg" and s.s3_region == "eu-west-1" and s.s3_endpoint_url == "http://minio:9000"
    assert dict(s.models) == {"ade": "/models/ade", "pan": "facebook/mask2former-swin-tiny-coco-panoptic"}
    assert s.resolve_model("semantic", None) == "ade" and s.max_image_pixels == 1_000_000 and s.task_retries == 0
    conf = celery_config(s)
    assert conf["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}  # rediss:// verifies certificates


@pytest.mark.parametrize("env, message", [
    ({"SEGQ_REDIS_URL": "http://x"}, "SEGQ_REDIS_URL"),
    ({"SEGQ_MODELS": "justaname"}, "SEGQ_MODELS: expected name=value"),
    ({"SEGQ_MAX_IMAGE_PIXELS": "lots"}, "SEGQ_MAX_IMAGE_PIXELS: expected a whole number"),
    ({"SEGQ_TASK_MODELS": "depth=x"}, "unknown task 'depth'"),
])
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_unknown_task_and_model_are_clear_errors():
    s = Settings.from_env({})
    with pytest.raises(UnknownTask, match="choose one of semantic, instance, panoptic"):
        s.resolve_model("depth", None)
    with pytest.raises(UnknownModel, match="the fleet serves ade-semantic, coco-instance, coco-panoptic"):
        s.resolve_model("semantic", "sam")


def test_celery_config_is_json_only_and_safe_for_long_gpu_tasks():
    conf = celery_config(Settings.from_env({"SEGQ_VISIBILITY_TIMEOUT": "7200"}))
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1 and conf["worker_send_task_events"]
    assert conf["broker_transport_options"]["visibility_timeout"] == 7200
    # no result backend: the job record holds what a result would, at no Redis cost per task
    assert conf["task_ignore_result"] and "result_backend" not in conf


def test_payload_round_trip_and_validation():
    job = VideoJob(job_id="0123456789abcdef", task="instance", model="coco-instance", input_bucket="b", input_key="k")
    assert VideoJob.from_message(job.to_message()) == job
    with pytest.raises(PayloadError, match="unknown task"):
        VideoJob.from_message({**job.to_message(), "task": "depth"})
    with pytest.raises(PayloadError, match="missing input_key"):
        VideoJob.from_message({k: v for k, v in job.to_message().items() if k != "input_key"})
    with pytest.raises(PayloadError, match="unknown fields pixels"):
        VideoJob.from_message({**job.to_message(), "pixels": "..."})
    with pytest.raises(PayloadError, match="version '2' is not supported"):
        VideoJob.from_message({**job.to_message(), "version": 2})
    with pytest.raises(PayloadError, match="invalid model name"):
        model_queue("../etc")
    shard = ShardJob(batch="photos-v1", shard="000012", task="semantic", model="ade-semantic")
    assert ShardJob.from_message(shard.to_message()) == shard and shard.index == 12
    assert shard.task_id == "shard:photos-v1:000012" == shard_task_id("photos-v1", 12)
    with pytest.raises(PayloadError, match="shard must be 6 to 8 digits"):
        ShardJob.from_message({**shard.to_message(), "shard": "12"})
    with pytest.raises(PayloadError, match="invalid batch name"):
        ShardJob.from_message({**shard.to_message(), "batch": "../x"})
    with pytest.raises(PayloadError, match="missing batch"):
        ShardJob.from_message({k: v for k, v in shard.to_message().items() if k != "batch"})


def test_an_image_id_says_where_the_image_is_and_never_reads_as_a_video_job_id():
    ns = new_namespace()
    assert len(ns) == 7 and ns[0] in "89abcdef"
    job_id = image_id(ns, 300, 17)
    ref = parse_image_id(job_id)
    assert len(job_id) == 16 and (ref.namespace, ref.shard, ref.position) == (ns, 300, 17)
    assert all(new_job_id()[0] in "01234567" and parse_image_id(new_job_id()) is None for _ in range(200))
    assert parse_image_id("not an id") is None and parse_image_id(ns + "000001fff") is None  # position > 1023
    with pytest.raises(ValueError):
        image_id(ns, 0, 1024)
    ref = parse_task_id("shard:a-1-00002:000345")
    assert (ref.is_shard, ref.batch, ref.shard, ref.job_id) == (True, "a-1-00002", 345, "")
    assert parse_task_id("0123456789abcdef-r2-chunk00003").chunk == 3


def test_keys_and_layout():
    assert keys.job("abc") == "segq:job:abc" and keys.worker("w@h") == "segq:worker:w@h"
    assert layout.input_key("j1", ".JPG") == "inputs/j1/input.jpg"
    assert layout.input_key("j1", ".weird/../ext") == "inputs/j1/input"  # never a path from the user
    assert layout.output_names("panoptic")[-2:] == [layout.PANOPTIC_PNG, layout.PANOPTIC_JSON]


def test_job_record_round_trips_through_a_redis_hash():
    rec = JobRecord(id="0123456789abcdef", kind="video", task="semantic", model="m", input="s3://b/k",
                    created_at=1.5, fps=3.25, frames=30, batch="b-1", annotate_fps=True, state="done", chunks_total=2,
                    stages={"decode": 0.25, "forward": 1.5}, cpu={"decode": 0.5, "render": 0.125})
    fields = rec.to_hash()
    assert (fields["t_forward"], fields["c_decode"], fields["c_render"]) == ("1.5", "0.5", "0.125")
    back = JobRecord.from_hash(fields)
    assert back == rec
    assert back.outputs == [f"outputs/0123456789abcdef/{n}" for n in (layout.OVERLAY_VIDEO, layout.VIDEO_JSON)] + [
        f"outputs/0123456789abcdef/labels/chunk-0000{i}.npz" for i in range(2)]
    assert rec.request().to_message()["batch"] == "b-1"
    image = JobRecord(id="8123456789abcdef", kind="image", task="semantic", model="m", input="s3://b/k", state="done")
    assert image.outputs == [f"outputs/8123456789abcdef/{n}" for n in layout.output_names("semantic")]
