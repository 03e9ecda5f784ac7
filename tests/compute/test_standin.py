"""The stand-in model (workers.model.standin): what it does in place of a device, and what it
refuses. It is what bench.control and bench.cpuside measure the worker's CPU side and control
plane with, so its preprocessing must be the real one and its device-side work none."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segq.errors import ConfigError
from workers.model.standin import Options, StandIn
from workers.model.stage import ModelStage


def test_options_parse_and_bad_ones_are_named():
    o = Options.parse("standin:wait_ms=2.5:labels=coco-panoptic:blend=cpu:processor=/m/a:b=c")
    assert (o.wait_ms, o.labels, o.blend, o.processor) == (2.5, "coco-panoptic", "cpu", "/m/a:b=c")
    assert Options.parse("standin:") == Options()
    for bad, says in (("standin:wait_ms=x", "wait_ms must be a number"), ("standin:labels=voc", "labels must be"),
                      ("standin:blend=gpu", "blend must be"), ("standin:depth=1", "unknown option 'depth'")):
        with pytest.raises(ConfigError, match=says):
            Options.parse(bad)


def test_options_survive_as_one_model_of_segq_models():
    """``SEGQ_MODELS`` separates models with commas: a stand-in's options must not."""
    from segq.settings import Settings

    value = "ade-semantic=/m/tiny,gpu=standin:wait_ms=1:labels=ade20k:processor=/m/p"
    models = Settings.from_env({"SEGQ_MODELS": value}).models
    assert models == {"ade-semantic": "/m/tiny", "gpu": "standin:wait_ms=1:labels=ade20k:processor=/m/p"}
    assert Options.parse(models["gpu"]) == Options(wait_ms=1.0, labels="ade20k", processor="/m/p")


def test_a_pass_waits_on_the_stage_and_gives_a_fixed_prediction_blended_as_on_a_device(tmp_path):
    from transformers import Mask2FormerImageProcessor

    Mask2FormerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    stage = ModelStage()
    try:
        model = StandIn("gpu", f"standin:wait_ms=20:labels=coco-panoptic:processor={tmp_path}", stage)
        frame = np.random.default_rng(0).integers(0, 255, (48, 80, 3), np.uint8)
        result = model.predict([Image.fromarray(frame)], "panoptic")
        [pred] = result.predictions
        assert pred.label_map.shape == (48, 80) and len(pred.segments) == 4
        assert sum(s.area for s in pred.segments) == 48 * 80  # bands, one segment each, covering it
        assert np.array_equal(pred.overlay, frame)  # "blended on the device": no CPU work here
        assert result.times.forward_s >= 0.019  # the device's wait, on the stage's thread
        assert result.times.preprocess_s > 0 and result.times.preprocess_cpu_s > 0  # the real processor ran
        assert model.model.processor_name.startswith("Mask2FormerImageProcessor")  # the pil backend
        again = model.predict([frame], "panoptic").predictions[0]
        assert np.array_equal(again.label_map, pred.label_map) and again.segments == pred.segments
        again.segments[0].area = -1  # a caller's changes stay its own
        assert model.predict([frame], "panoptic").predictions[0].segments[0].area > 0
        cpu_blend = StandIn("gpu", "standin:wait_ms=0:blend=cpu", stage)
        assert cpu_blend.predict([frame], "semantic").predictions[0].overlay is None  # the CPU blends later
    finally:
        stage.close()
