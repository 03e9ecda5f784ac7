"""The trained offline checkpoints (package data) load through the worker's code and segment.

No servers: ``make_all_tiny(root)`` writes them as fp32 folders, ``workers.model.models.load``
loads them as a worker does, and the worker's ``Segmenter`` segments held-out scenes of
``bench/scenes.py`` (seeds the training never drew). The floors sit below what
``python -m bench.quality`` measured on 50 scenes (docs/offline-models.md), so that they catch a
broken, untrained or random checkpoint rather than noise; the random ones, on the same scenes,
score near zero (the last test).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("transformers")

from bench import scenes  # noqa: E402
from bench.quality import PanopticScore, SemanticScore  # noqa: E402
from workers.model import device  # noqa: E402
from workers.model.checkpoints import TINY_MODELS, make_all_tiny, tiny_config, trained_data  # noqa: E402
from workers.model.models import load  # noqa: E402
from workers.model.segmenter import Segmenter  # noqa: E402

#: Held-out scenes of this test (bench.quality uses HELDOUT_SEEDS.start + 1000 on).
SEEDS = [scenes.HELDOUT_SEEDS.start + 100 + i for i in range(4)]
SIZE = (640, 426)
SEMANTIC_MIOU_FLOOR = 0.45  # measured on these 4 scenes: 0.63 (bench.quality, 50 scenes: 0.624)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return make_all_tiny(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def held_out():
    return [scenes.scene(s, SIZE) for s in SEEDS]


def predict(folder: str, name: str, images: list, task: str) -> list:
    model = load(name, folder, device.select("fp32"))
    return Segmenter(model).predict([Image.fromarray(im) for im in images], task).predictions


def miou(pairs) -> tuple[float, dict]:
    """Semantic mIoU (ADE20K ids) over the classes present, and the IoU per class: bench.quality's score."""
    score = SemanticScore("ade20k")
    for sc, pred in pairs:
        score.add(sc, pred)
    return score.miou(), score.iou()


def test_packaged_weights_are_fp16_tiny_config_and_written_out_as_fp32(trained):
    from safetensors import safe_open

    for name, label_set in TINY_MODELS.items():
        data = trained_data(name)
        with safe_open(str(data / "model.safetensors"), "pt") as f:
            assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}
        assert len((data / "model.safetensors").read_bytes()) < 2_000_000
        training = json.loads((data / "training.json").read_text())
        assert training["script"] == "scripts/train_tiny.py" and training["steps"] > 0
        folder = trained[name]
        assert folder.endswith(f"tiny-{name}")
        with safe_open(f"{folder}/model.safetensors", "pt") as f:
            assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float32"}
        config = json.loads(open(f"{folder}/config.json").read())
        want = tiny_config(label_set).to_dict()
        for key in ("num_queries", "hidden_dim", "decoder_layers"):
            assert config[key] == want[key]
        assert config["id2label"] == {str(k): v for k, v in want["id2label"].items()}
        assert config["backbone_config"]["embed_dim"] == 24 and config["backbone_config"]["depths"] == [1, 1, 1, 1]
        pre = json.loads(open(f"{folder}/preprocessor_config.json").read())
        assert pre["do_reduce_labels"] == (label_set == "ade20k")
        assert pre["size"] == {"shortest_edge": 256, "longest_edge": 512}
        assert "synthetic" in open(f"{folder}/README.md").read()


def test_trained_semantic_model_segments_held_out_scenes(trained, held_out):
    preds = predict(trained["ade-semantic"], "ade-semantic", [sc.image for sc in held_out], "semantic")
    value, ious = miou([(sc, p.label_map) for sc, p in zip(held_out, preds)])
    assert value >= SEMANTIC_MIOU_FLOOR, (value, ious)
    for big in ("sky", "road", "building"):
        assert ious[big] > 0.5, ious


def thing_precision(pairs, lut) -> float:
    """Of the pixels in predicted person and car segments, the share that are a person or a car
    (the same class) in the truth."""
    hit = total = 0
    for sc, p in pairs:
        for s in p.segments:
            for c in scenes.THINGS:
                if s.label_id == lut[c]:
                    m = p.label_map == s.id
                    total += np.count_nonzero(m)
                    hit += np.count_nonzero(m & (sc.classes == c))
    assert total > 0, "no person or car segment at all"
    return hit / total


def test_trained_panoptic_model_segments_stuff_and_puts_things_on_things(trained, held_out):
    # Measured on these 4 scenes: 13 of 19 stuff regions matched (IoU > 0.5), 94 % of the thing
    # segments' pixels on things of their class, 3 of the 12 cars a segment of their own (the
    # checkpoints before the discriminative loss: 1). Persons as segments of their own: the aim
    # is not met (docs/offline-models.md), so no floor for them here.
    lut = scenes.label_lut("coco_panoptic")
    hit = total = 0
    pairs = []
    own = PanopticScore()
    for sc in held_out:
        [p] = predict(trained["coco-panoptic"], "coco-panoptic", [sc.image], "panoptic")
        pairs.append((sc, p))
        own.add(sc, p.label_map.astype(np.int32), {s.id: s.label_id for s in p.segments})
        for c in range(len(scenes.CLASSES)):
            g = sc.classes == c
            if c in scenes.THINGS or not g.any():
                continue
            total += 1
            ious = [np.count_nonzero(g & (p.label_map == s.id)) / np.count_nonzero(g | (p.label_map == s.id))
                    for s in p.segments if s.label_id == lut[c]]
            hit += max(ious, default=0.0) > 0.5
    assert hit / total >= 0.5, (hit, total)
    assert thing_precision(pairs, lut) >= 0.6
    assert own.things_gt["car"] == 12 and own.things_found["car"] >= 2, own.things_found


def test_trained_instance_model_finds_persons_and_cars_and_nothing_else(trained, held_out):
    # Measured: 83 % of the detections' pixels on persons or cars of their class.
    lut = scenes.label_lut("coco_instance")
    pairs = []
    for sc in held_out:
        [p] = predict(trained["coco-instance"], "coco-instance", [sc.image], "instance")
        assert {s.label_id for s in p.segments} <= {int(lut[scenes.PERSON]), int(lut[scenes.CAR])}
        pairs.append((sc, p))
    assert thing_precision(pairs, lut) >= 0.6


def test_random_checkpoints_stay_available_and_do_not_segment(tmp_path, held_out):
    paths = make_all_tiny(tmp_path, random=True)
    assert sorted(paths) == sorted(TINY_MODELS)
    for name, folder in paths.items():
        assert folder.endswith(f"tiny-random-{name}")
        assert "Random-initialised" in open(f"{folder}/README.md").read()
    preds = predict(paths["ade-semantic"], "ade-semantic", [sc.image for sc in held_out], "semantic")
    value, _ = miou([(sc, p.label_map) for sc, p in zip(held_out, preds)])
    assert value < 0.15


def test_an_older_random_folder_under_the_trained_name_is_rewritten(tmp_path):
    from workers.model.checkpoints import make_tiny

    make_tiny("ade20k", tmp_path / "tiny-ade-semantic")  # what `segq models tiny` wrote before
    paths = make_all_tiny(tmp_path)
    assert (tmp_path / "tiny-ade-semantic" / "training.json").is_file()
    assert "synthetic" in open(f"{paths['ade-semantic']}/README.md").read()


def test_segq_models_tiny_writes_trained_ones_and_random_ones_on_request(tmp_path):
    from click.testing import CliRunner

    from workers.host.cli import models_tiny

    result = CliRunner().invoke(models_tiny, [str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert {k: v.rsplit("/", 1)[-1] for k, v in json.loads(result.stdout).items()} == {k: f"tiny-{k}" for k in TINY_MODELS}
    result = CliRunner().invoke(models_tiny, [str(tmp_path), "--json", "--random"])
    assert result.exit_code == 0, result.output
    assert {k: v.rsplit("/", 1)[-1] for k, v in json.loads(result.stdout).items()} == \
        {k: f"tiny-random-{k}" for k in TINY_MODELS}
    assert "Writing model shards" not in result.output  # transformers' progress bars stay quiet
