"""Settings: one typed object, every variable defined once as a field."""

from __future__ import annotations

from pathlib import Path

import pytest

from segq.errors import ConfigError
from segq.settings import Settings, markdown_table, variables

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_table_is_the_one_generated_from_the_fields():
    assert markdown_table() in (ROOT / "README.md").read_text()


def test_every_field_has_its_own_variable_and_documentation():
    names = [v.name for v in variables()]
    assert len(names) == len(set(names))
    assert all(n.startswith("SEGQ_") and v.doc for n, v in zip(names, variables()))
    assert {"SEGQ_WORKER_MODELS", "SEGQ_WORKER_THREADS", "SEGQ_PRECISION", "SEGQ_IMAGE_PROCESSOR"} <= set(names)


def test_values_are_parsed_into_their_types():
    s = Settings.from_env({
        "SEGQ_MODELS": "a=/m/a, b=org/b", "SEGQ_TASK_MODELS": "semantic=a", "SEGQ_MAX_INPUT_BYTES": "1_000",
        "SEGQ_WORKER_MODELS": "a, b", "SEGQ_WORKER_THREADS": "2", "SEGQ_PRECISION": "BF16",
        "SEGQ_IMAGE_PROCESSOR": "torchvision", "SEGQ_FLOWER_URL": "http://f:5555/", "AWS_REGION": "eu-west-1",
    })
    assert s.models == {"a": "/m/a", "b": "org/b"} and s.task_models["semantic"] == "a"
    assert s.task_models["panoptic"] == "coco-panoptic"  # the others keep their defaults
    assert (s.max_input_bytes, s.worker_threads, s.precision) == (1000, 2, "bf16")
    assert s.worker_models == ("a", "b") and s.served_models() == ["a", "b"]
    assert (s.image_processor, s.flower_url, s.s3_region) == ("torchvision", "http://f:5555", "eu-west-1")


def test_defaults_serve_each_task_model_with_the_pil_processor():
    s = Settings.from_env({})
    assert s.served_models() == ["ade-semantic", "coco-instance", "coco-panoptic"]
    assert s.image_processor == "pil" and s.precision == "auto"


@pytest.mark.parametrize("raw, mode", [
    ("off", "off"), ("default", "default"), (" Reduce-Overhead ", "reduce-overhead"), ("max-autotune", "max-autotune"),
])
def test_compile_is_off_unless_a_torch_compile_mode_is_asked_for(raw, mode):
    assert Settings.from_env({}).compile == "off"
    assert Settings.from_env({"SEGQ_COMPILE": raw}).compile == mode
    [var] = [v for v in variables() if v.name == "SEGQ_COMPILE"]
    assert var.side == "worker" and var.default == "`off`"


@pytest.mark.parametrize("env, message", [
    ({"SEGQ_MAX_IMAGE_PIXELS": "lots"}, "SEGQ_MAX_IMAGE_PIXELS: expected a whole number"),
    ({"SEGQ_MAX_IMAGE_PIXELS": "0"}, "SEGQ_MAX_IMAGE_PIXELS: must be at least 1"),
    ({"SEGQ_PRECISION": "fp8"}, "SEGQ_PRECISION: expected one of auto, fp32, fp16, bf16"),
    ({"SEGQ_IMAGE_PROCESSOR": "opencv"}, "SEGQ_IMAGE_PROCESSOR: expected one of pil, torchvision"),
    ({"SEGQ_COMPILE": "on"}, "SEGQ_COMPILE: expected one of off, default, reduce-overhead, max-autotune"),
    ({"SEGQ_MODELS": "justaname"}, "SEGQ_MODELS: expected name=value pairs"),
    ({"SEGQ_TASK_MODELS": "depth=a"}, "SEGQ_TASK_MODELS: unknown task 'depth'"),
    ({"SEGQ_S3_ENDPOINT_URL": "ftp://x"}, "SEGQ_S3_ENDPOINT_URL: expected an http(s) URL"),
])
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(env)


def test_a_bad_redis_url_error_does_not_echo_the_url_and_its_password():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SEGQ_REDIS_URL": "http://:hunter2@redis:6379/0"})
    assert "hunter2" not in str(info.value)
