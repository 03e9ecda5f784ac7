"""The procedural street scenes of bench/scenes.py: deterministic, every class, consistent truth.

numpy and Pillow only (no torch). The trained offline checkpoints and bench.quality rely on
these properties: the same seed draws the same scene, the ground truth matches what is drawn
(things' instance ids, stuff regions, the label sets' ids by name), training and held-out seeds
do not overlap, and a clip's frames move.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench import scenes
from workers.media import labels


def test_same_seed_same_scene_other_seed_other_scene():
    a, b = scenes.scene(123, (320, 224)), scenes.scene(123, (320, 224))
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.classes, b.classes)
    assert np.array_equal(a.instances, b.instances)
    assert a.instance_class == b.instance_class
    c = scenes.scene(124, (320, 224))
    assert not np.array_equal(a.image, c.image)


def test_shapes_and_dtypes_follow_the_size():
    sc = scenes.scene(7, (300, 200))
    assert sc.image.shape == (200, 300, 3) and sc.image.dtype == np.uint8
    assert sc.classes.shape == (200, 300) and sc.classes.dtype == np.uint8
    assert sc.instances.shape == (200, 300)
    assert sc.size == (300, 200)
    assert int(sc.classes.max()) < len(scenes.CLASSES)


def test_seed_ranges_are_disjoint_and_the_demo_seed_is_held_out():
    tr, ho = scenes.TRAIN_SEEDS, scenes.HELDOUT_SEEDS
    assert tr.stop <= ho.start or ho.stop <= tr.start
    assert scenes.DEMO_SEED in ho


def test_every_class_appears_over_a_few_scenes_and_most_in_each():
    seen = np.zeros(len(scenes.CLASSES), int)
    for seed in range(scenes.HELDOUT_SEEDS.start, scenes.HELDOUT_SEEDS.start + 12):
        present = scenes.scene(seed, (256, 176)).present()
        assert {scenes.SKY, scenes.ROAD, scenes.SIDEWALK} <= set(present) or len(present) >= 4
        seen[present] += 1
    assert (seen > 0).all(), dict(zip(scenes.CLASSES, seen))
    assert seen[scenes.PERSON] >= 4 and seen[scenes.CAR] >= 4


def test_label_ids_are_found_by_name_in_each_label_set():
    for label_set, names in scenes.LABEL_NAMES.items():
        ls = labels.load(label_set)
        lut = scenes.label_lut(label_set)
        for c, ours in enumerate(scenes.CLASSES):
            if ours in names:
                assert ls.names[lut[c]] == names[ours]
            else:
                assert lut[c] == scenes.VOID
    pan = labels.load("coco_panoptic")
    lut = scenes.label_lut("coco_panoptic")
    assert [pan.isthing[lut[c]] for c in range(len(scenes.CLASSES))] == [c in scenes.THINGS for c in range(len(scenes.CLASSES))]
    assert labels.load("ade20k").names[scenes.label_lut("ade20k")[scenes.WINDOW]] == "windowpane"


@pytest.mark.parametrize("seed", [scenes.HELDOUT_SEEDS.start + i for i in range(4)])
def test_ground_truth_is_consistent(seed):
    sc = scenes.scene(seed, (320, 224))
    inst, cls = sc.instances, sc.classes
    things = np.isin(cls, scenes.THINGS)
    # every thing pixel belongs to an instance (or is void: too small), no stuff pixel does
    assert (inst[~things] == 0).all()
    assert (inst[things] != 0).all()
    for i, c in sc.instance_class.items():
        m = inst == i
        assert m.sum() >= scenes.MIN_INSTANCE_FRACTION * cls.size
        assert (cls[m] == c).all()
    assert set(np.unique(inst[inst > 0])) == set(sc.instance_class)
    # semantic maps: the same regions in every label set, void only where a class is missing
    for label_set in scenes.LABEL_SETS:
        sem = sc.semantic(label_set)
        lut = scenes.label_lut(label_set)
        assert np.array_equal(sem, lut[cls])
    assert (sc.semantic("ade20k") != scenes.VOID).all()
    assert (sc.semantic("coco_panoptic") != scenes.VOID).all()
    assert np.array_equal(sc.semantic("coco_instance") != scenes.VOID, things)
    # panoptic: segments partition the non-void pixels, one per stuff class and per instance
    ids, segs = sc.panoptic("coco_panoptic")
    assert np.array_equal(ids == 0, inst < 0)
    assert sorted(s["id"] for s in segs) == sorted(int(i) for i in np.unique(ids[ids > 0]))
    stuff = [s for s in segs if not s["isthing"]]
    assert len({s["label_id"] for s in stuff}) == len(stuff)
    assert sum(s["isthing"] for s in segs) == len(sc.instance_class)
    sem = sc.semantic("coco_panoptic")
    for s in segs:
        assert (sem[ids == s["id"]] == s["label_id"]).all()
    ids_i, segs_i = sc.panoptic("coco_instance")
    assert all(s["isthing"] for s in segs_i) and len(segs_i) == len(sc.instance_class)


def test_colours_do_not_give_the_class_away():
    """Across scenes a class takes many colours, and classes share colours: a model must use shape
    and context. (Mean colour of a class per scene, spread over 16 scenes.)"""
    means = {c: [] for c in (scenes.SKY, scenes.BUILDING, scenes.ROAD, scenes.CAR)}
    for seed in range(16):
        sc = scenes.scene(seed, (192, 128))
        for c in means:
            m = sc.classes == c
            if m.sum() > 50:
                means[c].append(sc.image[m].mean(0))
    for c, ms in means.items():
        assert len(ms) >= 5
        assert np.ptp(np.array(ms), axis=0).max() > 60, scenes.CLASSES[c]
    # a grey road and a grey building (or sky) exist somewhere in these scenes
    road = np.array(means[scenes.ROAD])
    other = np.array(means[scenes.BUILDING] + means[scenes.SKY])
    dist = np.linalg.norm(road[:, None] - other[None], axis=-1)
    assert dist.min() < 30


def test_a_clip_moves_and_keeps_instance_ids():
    seed = scenes.HELDOUT_SEEDS.start + 2000
    frames = scenes.clip(seed, 6, (256, 176))
    assert len(frames) == 6
    assert all(f.image.shape == (176, 256, 3) for f in frames)
    first = scenes.scene(seed, (256, 176))
    assert np.array_equal(frames[0].image, first.image)  # frame 0 of a clip is the scene
    assert not np.array_equal(frames[0].classes, frames[-1].classes)  # things moved
    ids0, ids5 = set(frames[0].instance_class), set(frames[-1].instance_class)
    assert ids0 & ids5, "no thing stays in view over 6 frames"
    for i in ids0 & ids5:
        assert frames[0].instance_class[i] == frames[-1].instance_class[i]
    again = scenes.clip(seed, 6, (256, 176))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, again))
