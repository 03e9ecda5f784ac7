"""The contract both sides import: settings, payloads, keys, layout, the job record."""

from __future__ import annotations

import ssl

import pytest

from segq import defaults, keys, layout
from segq.broker import celery_config
from segq.errors import ConfigError, UnknownModel, UnknownTask
from segq.jobs import JobRecord
from segq.protocol import ImageJob, PayloadError, model_queue
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
    job = ImageJob(job_id="0123456789abcdef", task="instance", model="coco-instance", input_bucket="b", input_key="k")
    assert ImageJob.from_message(job.to_message()) == job
    with pytest.raises(PayloadError, match="unknown task"):
        ImageJob.from_message({**job.to_message(), "task": "depth"})
    with pytest.raises(PayloadError, match="missing input_key"):
        ImageJob.from_message({k: v for k, v in job.to_message().items() if k != "input_key"})
    with pytest.raises(PayloadError, match="unknown fields pixels"):
        ImageJob.from_message({**job.to_message(), "pixels": "..."})
    with pytest.raises(PayloadError, match="version '2' is not supported"):
        ImageJob.from_message({**job.to_message(), "version": 2})
    with pytest.raises(PayloadError, match="invalid model name"):
        model_queue("../etc")


def test_keys_and_layout():
    assert keys.job("abc") == "segq:job:abc" and keys.worker("w@h") == "segq:worker:w@h"
    assert layout.input_key("j1", ".JPG") == "inputs/j1/input.jpg"
    assert layout.input_key("j1", ".weird/../ext") == "inputs/j1/input"  # never a path from the user
    assert layout.output_names("panoptic")[-2:] == [layout.PANOPTIC_PNG, layout.PANOPTIC_JSON]


def test_job_record_round_trips_through_a_redis_hash():
    rec = JobRecord(id="0123456789abcdef", kind="image", task="semantic", model="m", input="s3://b/k",
                    created_at=1.5, fps=3.25, frames=1, batch="b-1", annotate_fps=True, state="done")
    back = JobRecord.from_hash(rec.to_hash())
    assert back == rec
    assert back.outputs == [f"outputs/0123456789abcdef/{n}" for n in layout.output_names("semantic")]
    assert rec.request().to_message()["batch"] == "b-1"
