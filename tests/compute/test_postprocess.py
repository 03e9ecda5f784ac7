"""Fast post-processing (workers/model/postprocess/) against transformers' own, on CPU.

Real shapes: 200 queries, mask logits 96 x 96; 150 classes (ADE20K) for semantic, 80 (COCO)
for instance, 133 (COCO panoptic, stuff = 80..132) for panoptic. Structured outputs (regions with
one confident query each, duplicated queries for exact ties, queries sharing a stuff class to
exercise fusing) and plain noise; target sizes up and down, odd ones included. Noise-like
outputs (mask logits varying at the source-pixel scale: ``synthetic.pixel_noise`` and the random
tiny checkpoints' real outputs) exercise the dense band path; its parts are checked against torch
bit for bit.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("transformers")

from transformers import Mask2FormerImageProcessorPil  # noqa: E402

from workers.model import postprocess  # noqa: E402
from workers.model.postprocess import bounds, fullsize, geometry, tasks  # noqa: E402
from workers.testing import synthetic  # noqa: E402
from workers.testing.equivalence import assert_equivalent, compare, segments_match  # noqa: E402

STUFF = set(range(80, 133))
SIZES = [(479, 641), (37, 53), (200, 90)]
PROC = Mask2FormerImageProcessorPil()


def _outputs(cls, masks):
    return SimpleNamespace(class_queries_logits=cls, masks_queries_logits=masks)


def _panoptic_data(seed: int, duplicates: int = 0):
    """Structured COCO-panoptic-like outputs where three confident queries share stuff class 100."""
    cls, masks = synthetic.structured(seed, 133, duplicates=duplicates)
    probs = cls[0].softmax(-1)
    _, inverse, counts = torch.unique(masks[0].flatten(1), dim=0, return_inverse=True, return_counts=True)
    twins = set((counts[inverse] > 1).nonzero()[:, 0].tolist())
    conf = [q for q in (probs[:, :-1].max(-1).values > 0.9).nonzero()[:, 0].tolist() if q not in twins][-3:]
    # (not a duplicated query: permuting its logits changes its softmax by an ulp, and a pair of
    # masks one ulp apart everywhere is a near-tie over a whole region)
    conf = torch.tensor(conf)
    for q in conf.tolist():
        best = int(probs[q, :-1].argmax())
        cls[0, q, [best, 100]] = cls[0, q, [100, best]]
    return cls, masks


def _check_semantic(cls, masks, size):
    ref = PROC.post_process_semantic_segmentation(_outputs(cls, masks), target_sizes=[size])[0]
    got = postprocess.semantic(cls, masks, size)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    return assert_equivalent("semantic", cls, masks, size, ref, got)


def _check_instance(cls, masks, size):
    ref = PROC.post_process_instance_segmentation(
        _outputs(cls, masks), threshold=0.5, mask_threshold=0.5, overlap_mask_area_threshold=0.8, target_sizes=[size]
    )[0]
    got = postprocess.instance(cls, masks, size, threshold=0.5, mask_threshold=0.5, overlap_mask_area_threshold=0.8)
    assert got["segmentation"].dtype == ref["segmentation"].dtype
    segments_match(ref["segments_info"], got["segments_info"])
    c = assert_equivalent(
        "instance", cls, masks, size, ref["segmentation"], got["segmentation"],
        reference_segments=ref["segments_info"], candidate_segments=got["segments_info"],
    )
    return c, ref


def _check_panoptic(cls, masks, size):
    ref = PROC.post_process_panoptic_segmentation(
        _outputs(cls, masks), threshold=0.5, mask_threshold=0.5, overlap_mask_area_threshold=0.8,
        label_ids_to_fuse=STUFF, target_sizes=[size],
    )[0]
    got = postprocess.panoptic(cls, masks, size, label_ids_to_fuse=STUFF)
    assert got["segmentation"].dtype == ref["segmentation"].dtype
    segments_match(ref["segments_info"], got["segments_info"])
    c = assert_equivalent(
        "panoptic", cls, masks, size, ref["segmentation"], got["segmentation"], label_ids_to_fuse=STUFF,
        reference_segments=ref["segments_info"], candidate_segments=got["segments_info"],
    )
    return c, ref


@pytest.mark.parametrize("size", [(1080, 1920)] + SIZES)
def test_semantic_structured(size):
    cls, masks = synthetic.structured(11, 150)
    c = _check_semantic(cls, masks, size)
    print(c)


@pytest.mark.parametrize("size", [(200, 90), (37, 53)])
def test_semantic_noise(size):
    cls, masks = synthetic.noise(12, 150)
    print(_check_semantic(cls, masks, size))


def _paths_taken(monkeypatch) -> list[str]:
    """Which path each ``postprocess.semantic`` / ``panoptic`` call took: source-cell bounds
    ("sparse") or dense bands."""
    taken: list[str] = []
    decided = bounds._decided_grid

    def spy(*args):
        res = decided(*args)
        taken.append("dense" if res is None else "sparse")
        return res

    monkeypatch.setattr(tasks, "_decided_grid", spy)
    return taken


def test_semantic_paths(monkeypatch):
    # model-like outputs are settled mostly by the source-cell bounds; noise falls back to bands
    taken = _paths_taken(monkeypatch)
    _check_semantic(*synthetic.structured(13, 150), (479, 641))
    _check_semantic(*synthetic.noise(14, 150), (479, 641))
    assert taken == ["sparse", "dense"]


@pytest.mark.parametrize("size", [(1080, 1920), (479, 641), (37, 53)])
def test_semantic_non_square_masks(monkeypatch, size):
    # a 16:9 frame resized to a shortest edge of 384 gives 96 x 171 mask logits; 64 x 48 and
    # 128 x 128 too (non-integer and downscaling ratios to the 384 grid)
    taken = _paths_taken(monkeypatch)
    for seed, shape in [(15, (96, 171)), (16, (64, 48)), (17, (128, 128))]:
        cls, masks = synthetic.structured(seed, 150)
        masks = torch.nn.functional.interpolate(masks, size=shape, mode="bilinear", align_corners=False)
        print(_check_semantic(cls, masks, size))
    assert taken == ["sparse"] * 3


@pytest.mark.parametrize("shape", [(96, 96), (96, 171)])
def test_semantic_cell_bounds_hold(shape):
    # every source cell that the bounds settle has that class as the arg-max of transformers'
    # own 384 x 384 class scores at every grid point in it, and most cells of a model-like
    # output are settled
    cls, masks = synthetic.structured(18, 150, regions=40)
    masks = torch.nn.functional.interpolate(masks, size=shape, mode="bilinear", align_corners=False)
    probs = cls[0].softmax(-1)[:, :-1]
    m384 = torch.nn.functional.interpolate(masks, size=(384, 384), mode="bilinear", align_corners=False)[0]
    exact = torch.einsum("qc,qhw->chw", probs, m384.sigmoid()).max(0).indices  # (384, 384)
    cells = bounds.settled_cells(probs.t().contiguous(), masks[0])
    ry0 = geometry.axis_weights(shape[0], 384, "cpu")[0]
    cx0 = geometry.axis_weights(shape[1], 384, "cpu")[0]
    per_point = cells[ry0][:, cx0]  # each grid point's source cell's settled class
    settled = per_point >= 0
    assert settled.float().mean() > 0.6
    assert torch.equal(per_point[settled], exact[settled])


@pytest.mark.parametrize("size", SIZES)
def test_instance_structured(size):
    cls, masks = synthetic.structured(21, 80)
    c, ref = _check_instance(cls, masks, size)
    print(c)
    assert len(ref["segments_info"]) >= 10
    # a duplicated query paints the same mask twice: the later id wins, as in transformers
    labels = [s["label_id"] for s in ref["segments_info"]]
    assert len(labels) > len(set(labels))


def test_instance_noise():
    cls, masks = synthetic.noise(22, 80)
    print(_check_instance(cls, masks, (200, 90))[0])


@pytest.mark.parametrize("size", [(1080, 1920)] + SIZES)
def test_panoptic_structured(size):
    cls, masks = _panoptic_data(31)
    c, ref = _check_panoptic(cls, masks, size)
    print(c)
    segs = ref["segments_info"]
    assert len(segs) >= 10
    fused = [s for s in segs if s["was_fused"] and s["label_id"] == 100]
    assert len(fused) >= 2 and len({s["id"] for s in fused}) == 1  # fused stuff segments share an id


def test_panoptic_paths(monkeypatch):
    # structured outputs: the arg-max from source-cell bounds and the threshold counts from
    # source windows; noise: dense bands; a source grid taller than the 384 grid: the counts
    # from the bands (a pixel draws on more than 3 source rows)
    taken = _paths_taken(monkeypatch)
    windows = []
    counts = bounds._window_counts
    monkeypatch.setattr(tasks, "_window_counts", lambda *a: windows.append(counts(*a)) or windows[-1])
    _check_panoptic(*_panoptic_data(33), (479, 641))
    cls, masks = synthetic.noise(34, 133)
    cls[0, :40, :-1] *= 3  # some confident queries, so that segments are kept
    _check_panoptic(cls, masks, (479, 641))
    cls, masks = _panoptic_data(35)
    tall = torch.nn.functional.interpolate(masks, size=(400, 48), mode="bilinear", align_corners=False)
    _check_panoptic(cls, tall, (200, 90))
    assert taken == ["sparse", "dense", "sparse"]
    assert [w is not None for w in windows] == [True, False]


@pytest.mark.parametrize("size", [(1080, 1920), (37, 53)])
def test_panoptic_non_square_masks(size):
    cls, masks = _panoptic_data(36)
    masks = torch.nn.functional.interpolate(masks, size=(96, 171), mode="bilinear", align_corners=False)
    print(_check_panoptic(cls, masks, size)[0])


def test_panoptic_exact_duplicate_queries():
    # Two queries with identical logits tie exactly; transformers' CPU bilinear kernel is not
    # bit-consistent across channels (some channels of one call round differently), so its
    # arg-max breaks such ties by an ulp, region-wide. Those pixels must all be near-ties; the
    # 1e-4 budget is not asserted here.
    cls, masks = _panoptic_data(31, duplicates=2)
    for size in [(37, 53), (200, 90)]:
        ref = PROC.post_process_panoptic_segmentation(
            _outputs(cls, masks), label_ids_to_fuse=STUFF, target_sizes=[size]
        )[0]
        got = postprocess.panoptic(cls, masks, size, label_ids_to_fuse=STUFF)
        c = compare(
            "panoptic", cls, masks, size, ref["segmentation"], got["segmentation"],
            reference_segments=ref["segments_info"], candidate_segments=got["segments_info"],
        )
        print(c)
        assert c.other == 0


def test_panoptic_drops_overlapped_segments():
    # queries whose masks are mostly covered by others fail the overlap-area test
    cls, masks = _panoptic_data(32)
    m = masks.clone()
    kept = (cls[0].softmax(-1).max(-1).values > 0.5) & (cls[0].softmax(-1).argmax(-1) != 133)
    q = kept.nonzero()[:, 0]
    m[0, q[1]] = torch.maximum(m[0, q[0]], m[0, q[1]]) - 0.5  # q1 lies under q0 mostly
    c, ref = _check_panoptic(cls, m, (200, 90))
    print(c)
    assert len(ref["segments_info"]) < len(q)  # some kept query failed the overlap-area test
    ids = [s["id"] for s in ref["segments_info"] if not s["was_fused"]]
    print("ids", [s["id"] for s in ref["segments_info"]])


def test_panoptic_nothing_kept():
    cls, masks = synthetic.noise(33, 133)
    cls[..., -1] += 20  # every query predicts "no object"
    ref = PROC.post_process_panoptic_segmentation(_outputs(cls, masks), label_ids_to_fuse=STUFF, target_sizes=[(37, 53)])[0]
    got = postprocess.panoptic(cls, masks, (37, 53), label_ids_to_fuse=STUFF)
    assert got["segments_info"] == ref["segments_info"] == []
    assert got["segmentation"].dtype == ref["segmentation"].dtype and torch.equal(got["segmentation"], ref["segmentation"])


def test_batch_dimension_and_leading_one():
    cls, masks = synthetic.structured(41, 150)
    a = postprocess.semantic(cls, masks, (37, 53))
    b = postprocess.semantic(cls[0], masks[0], (37, 53))
    assert torch.equal(a, b)


def test_equivalence_fails_on_a_wrong_map():
    cls, masks = synthetic.structured(51, 150)
    size = (200, 90)
    ref = PROC.post_process_semantic_segmentation(_outputs(cls, masks), target_sizes=[size])[0]
    wrong = ref.clone()
    wrong[50:60, 20:40] = (wrong[50:60, 20:40] + 1) % 150
    c = compare("semantic", cls, masks, size, ref, wrong)
    assert c.differing == 200 and c.other == 200
    with pytest.raises(AssertionError, match="not equivalent"):
        assert_equivalent("semantic", cls, masks, size, ref, wrong)
    # and for ids: a segment id swapped is not a near-tie either
    cls, masks = synthetic.structured(52, 80)
    out = PROC.post_process_instance_segmentation(_outputs(cls, masks), target_sizes=[size])[0]
    seg = out["segmentation"].clone()
    seg[seg == 1] = 2
    with pytest.raises(AssertionError, match="not equivalent"):
        assert_equivalent("instance", cls, masks, size, out["segmentation"], seg)


def test_count_above_exact():
    # thresholded areas: whole cells above, straddling cells evaluated per pixel
    g = torch.Generator().manual_seed(61)
    grid = torch.nn.functional.interpolate(torch.randn(1, 5, 12, 12, generator=g), size=(384, 384), mode="bicubic")[0].sigmoid()
    scale = torch.tensor([0.9, 0.7, 1.0, 0.55, 0.8])
    for size in [(200, 90), (37, 53)]:
        geo = geometry._Geometry(384, 384, *size, "cpu")
        got = fullsize.count_above(lambda r0, r1: grid[:, r0:r1], 5, geo, scale, 0.5)
        full = torch.nn.functional.interpolate(grid[None], size=size, mode="bilinear", align_corners=False)[0]
        want = (full * scale.view(-1, 1, 1) >= 0.5).flatten(1).sum(1)
        assert torch.equal(got, want), (size, got, want)


@pytest.mark.parametrize("shape", [(96, 96), (96, 171), (200, 100)])
def test_window_counts_bound_the_exact_areas(shape):
    # panoptic's thresholded areas from source windows: surely <= exact <= surely + possibly,
    # against transformers' own arithmetic (384 resize, sigmoid, resize to the target, x score)
    g = torch.Generator().manual_seed(62)
    masks = 8 * torch.nn.functional.interpolate(torch.randn(1, 6, 9, 9, generator=g), size=shape, mode="bicubic")[0]
    scale = torch.tensor([0.9, 0.7, 1.0, 0.55, 0.8, 0.51])
    for size in [(1080, 1920), (479, 641), (37, 53)]:
        geo = geometry._Geometry(384, 384, *size, "cpu")
        sure, possible = bounds._window_counts(masks, scale, 0.5, geo)
        grid = torch.nn.functional.interpolate(masks[None], size=(384, 384), mode="bilinear", align_corners=False)
        full = torch.nn.functional.interpolate(grid.sigmoid(), size=size, mode="bilinear", align_corners=False)[0]
        exact = (full * scale.view(-1, 1, 1) >= 0.5).flatten(1).sum(1)
        assert (sure <= exact).all() and (exact <= sure + possible).all(), (size, sure, possible, exact)
        assert (possible < exact.clamp(min=1)).all()  # the bounds are tight enough to decide most ratios


def test_panoptic_overlap_ratio_at_the_threshold(monkeypatch):
    # an overlap threshold just under one segment's ratio: the area bounds straddle it, so the
    # exact count of its thresholded area decides (and must decide as transformers does)
    cls, masks = _panoptic_data(71)
    m = masks.clone()
    kept = ((cls[0].softmax(-1).max(-1).values > 0.5) & (cls[0].softmax(-1).argmax(-1) != 133)).nonzero()[:, 0]
    m[0, kept[1]] = torch.maximum(m[0, kept[0]] - 1.0, m[0, kept[1]])  # q1 partly under q0
    size = (200, 90)
    probs = torch.nn.functional.interpolate(m, size=(384, 384), mode="bilinear", align_corners=False)[0].sigmoid()[kept]
    scores = cls[0].softmax(-1).max(-1).values[kept]
    full = torch.nn.functional.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0] * scores.view(-1, 1, 1)
    area = torch.bincount(full.argmax(0).flatten(), minlength=len(kept))
    orig = (full >= 0.5).flatten(1).sum(1)
    ratio = (area / orig.clamp(min=1)).tolist()
    partial = [r for r in ratio if 0.3 < r < 0.99]
    assert partial
    calls = []
    real = fullsize.count_above
    monkeypatch.setattr(tasks, "count_above", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    for th in (partial[0] - 1e-7, partial[0] + 1e-7):
        ref = PROC.post_process_panoptic_segmentation(
            _outputs(cls, m), overlap_mask_area_threshold=th, label_ids_to_fuse=STUFF, target_sizes=[size]
        )[0]
        got = postprocess.panoptic(cls, m, size, overlap_mask_area_threshold=th, label_ids_to_fuse=STUFF)
        segments_match(ref["segments_info"], got["segments_info"])
        assert_equivalent("panoptic", cls, m, size, ref["segmentation"], got["segmentation"])
    assert calls, "the exact count was not needed: the test does not cover it"


@pytest.mark.parametrize("side", [96, 48, 128, 100])
def test_grid_rows_bit_identical(side):
    # bands of the 384 x 384 resize from a crop of the input (power-of-two ratios) or the full plane
    x = torch.randn(3, side, side, generator=torch.Generator().manual_seed(side))
    full = torch.nn.functional.interpolate(x[None], size=(384, 384), mode="bilinear", align_corners=False)[0]
    for r0 in range(0, 384, 29):
        for r1 in (r0 + 1, r0 + 33, 384):
            r1 = min(r1, 384)
            assert torch.equal(geometry.grid_rows(x, r0, r1), full[:, r0:r1]), (r0, r1)


def test_other_mask_resolution():
    # mask logits that are not 96 x 96 (a 100 x 100 grid: no crop, one full 384 resize)
    cls, masks = synthetic.structured(81, 150, size=100)
    _check_semantic(cls, masks, (200, 90))
    cls, masks = _panoptic_data(82)
    small = torch.nn.functional.interpolate(masks, size=(100, 100), mode="bilinear", align_corners=False)
    _check_panoptic(cls, small, (37, 53))


def test_equivalence_flags_a_dropped_segment():
    # a candidate that drops a segment (not at any near-tie) renumbers the later ids: unexplained
    cls, masks = _panoptic_data(91)
    size = (37, 53)
    ref = PROC.post_process_panoptic_segmentation(_outputs(cls, masks), label_ids_to_fuse=STUFF, target_sizes=[size])[0]
    segs = [s for s in ref["segments_info"] if not s["was_fused"]]
    victim = segs[len(segs) // 2]
    cand_map = ref["segmentation"].clone()
    cand_map[cand_map == victim["id"]] = 0
    cand_segs = [s for s in ref["segments_info"] if s is not victim]
    c = compare(
        "panoptic", cls, masks, size, ref["segmentation"], cand_map,
        reference_segments=ref["segments_info"], candidate_segments=cand_segs,
    )
    assert c.differing > 0 and c.other == c.differing, c
    assert any("not at a near-tie" in n for n in c.notes)


# --- noise-like outputs: the dense band path ------------------------------------------------
#
# Mask logits that vary at the source-pixel scale (a random-weight model's, or
# ``synthetic.pixel_noise``) leave boundaries everywhere: the source-cell bounds settle almost
# nothing and the 384 x 384 grid is computed in bands, the pixels of cells whose corners disagree
# evaluated for a few candidate channels each.

NOISE_SHAPES = {
    "200q-96x96": (200, (96, 96)),  # the full-size model's shape
    "200q-96x176": (200, (96, 176)),  # the full-size model on a 16:9 frame
    "24q-64x120": (24, (64, 120)),  # the random tiny checkpoint on a 16:9 frame
    "24q-20x20": (24, (20, 20)),  # a small mask grid
}


@pytest.mark.parametrize("shape,size", [
    ("200q-96x96", (1080, 1920)), ("24q-64x120", (1080, 1920)), ("200q-96x96", (479, 641)),
    ("200q-96x176", (479, 641)), ("24q-64x120", (479, 641)), ("24q-20x20", (200, 90)), ("200q-96x96", (37, 53)),
])
def test_semantic_noise_like(monkeypatch, shape, size):
    taken = _paths_taken(monkeypatch)
    q, grid = NOISE_SHAPES[shape]
    cls, masks = synthetic.pixel_noise(101, 150, num_queries=q, size=grid)
    print(_check_semantic(cls, masks, size))
    if grid[0] * grid[1] > 1000:  # (a small grid takes either path: its sparse points are few)
        assert taken == ["dense"]


@pytest.mark.parametrize("shape,size", [
    ("200q-96x96", (1080, 1920)), ("24q-64x120", (1080, 1920)), ("200q-96x96", (479, 641)),
    ("200q-96x176", (479, 641)), ("24q-20x20", (200, 90)),
])
def test_panoptic_noise_like(monkeypatch, shape, size):
    taken = _paths_taken(monkeypatch)
    q, grid = NOISE_SHAPES[shape]
    cls, masks = synthetic.pixel_noise(103, 133, num_queries=q, size=grid)
    c, ref = _check_panoptic(cls, masks, size)
    print(c, len(ref["segments_info"]), "segments")
    if grid[0] * grid[1] > 1000:
        assert taken == ["dense"]


def test_panoptic_noise_like_keeps_segments():
    # noise-like masks where some confident queries are raised over a strip and lowered
    # elsewhere, so that their segments pass the overlap test while the rest stays noise-like
    cls, masks = synthetic.pixel_noise(104, 133, num_queries=60, size=(64, 120))
    conf = (cls[0].softmax(-1)[:, :-1].max(-1).values > 0.9).nonzero()[:, 0][:6]
    for k, q in enumerate(conf.tolist()):
        masks[0, q] -= 20.0
        masks[0, q, :, 20 * k : 20 * k + 16] += 40.0
    c, ref = _check_panoptic(cls, masks, (1080, 1920))
    print(c, ref["segments_info"])
    assert len(ref["segments_info"]) >= 3


@pytest.mark.parametrize("shape,size", [("200q-96x96", (1080, 1920)), ("24q-64x120", (479, 641)), ("24q-20x20", (37, 53))])
def test_instance_noise_like(shape, size):
    q, grid = NOISE_SHAPES[shape]
    cls, masks = synthetic.pixel_noise(102, 80, num_queries=q, size=grid)
    c, ref = _check_instance(cls, masks, size)
    print(c, len(ref["segments_info"]), "segments")
    assert len(ref["segments_info"]) >= 10


def _model_outputs(folders: dict, image) -> dict:
    """label set -> (class logits, mask logits) of the real checkpoints ``folders`` (name -> folder) on ``image``."""
    from transformers import Mask2FormerForUniversalSegmentation

    from workers.model.checkpoints import TINY_MODELS

    out = {}
    for name, folder in folders.items():
        model = Mask2FormerForUniversalSegmentation.from_pretrained(folder).eval()
        proc = Mask2FormerImageProcessorPil.from_pretrained(folder)
        with torch.no_grad():
            o = model(**proc(images=image, return_tensors="pt"))
        out[TINY_MODELS[name]] = (o.class_queries_logits, o.masks_queries_logits)
    return out


def _check_all(outputs: dict) -> None:
    print(_check_semantic(*outputs["ade20k"], (1080, 1920)))
    print(_check_panoptic(*outputs["coco_panoptic"], (1080, 1920))[0])
    print(_check_instance(*outputs["coco_instance"], (1080, 1920))[0])


@pytest.fixture(scope="module")
def tiny_outputs(tmp_path_factory):
    """The random tiny checkpoints' real outputs on a random 1080p frame (24 queries, 64 x 120)."""
    import numpy as np

    from workers.model import checkpoints

    image = np.random.default_rng(5).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    return _model_outputs(checkpoints.make_all_tiny(tmp_path_factory.mktemp("random"), random=True), image)


def test_tiny_random_model_outputs(monkeypatch, tiny_outputs):
    taken = _paths_taken(monkeypatch)
    _check_all(tiny_outputs)
    assert taken == ["dense", "dense"]


@pytest.fixture(scope="module")
def trained_outputs(tmp_path_factory):
    """The trained tiny checkpoints' (package data) real outputs on the demo street drawn at
    1920x1080 (``bench.scenes.DEMO_SEED``, a held-out seed): region-like outputs of a model that
    segments."""
    from bench import scenes
    from workers.model import checkpoints

    image = scenes.scene(scenes.DEMO_SEED, (1920, 1080)).image
    return _model_outputs(checkpoints.make_all_tiny(tmp_path_factory.mktemp("trained")), image)


def test_trained_model_outputs_take_the_fast_path(monkeypatch, trained_outputs):
    taken = _paths_taken(monkeypatch)
    _check_all(trained_outputs)
    assert taken == ["sparse", "sparse"]


def test_noise_like_exact_ties():
    # duplicated queries and classes tie exactly; the first index must win, as in transformers
    cls, masks = synthetic.pixel_noise(105, 150, num_queries=24, size=(64, 120))
    masks[0, 5] = masks[0, 3]
    cls[0, 5] = cls[0, 3]
    cls[0, :, 7] = cls[0, :, 2]  # classes 2 and 7 score the same everywhere
    c = _check_semantic(cls, masks, (479, 641))
    print(c)
    ref = PROC.post_process_semantic_segmentation(_outputs(cls, masks), target_sizes=[(479, 641)])[0]
    assert not (ref == 7).any()  # (the reference never picks the later of two tied classes)


# --- the dense path's parts, against torch ----------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 8, 24])
@pytest.mark.parametrize("size", [(1080, 1920), (479, 641)])
def test_eval_blocks_bit_identical(n, size):
    # every pixel block of every cell, evaluated in torch's order, against F.interpolate
    grid = torch.rand(n, 384, 384, generator=torch.Generator().manual_seed(n))
    ref = torch.nn.functional.interpolate(grid[None], size=size, mode="bilinear", align_corners=False)[0]
    geo = geometry._Geometry(384, 384, *size, "cpu")
    rb, cb = geo.rows, geo.cols
    vi = torch.arange(rb.cell.numel()).repeat_interleave(cb.cell.numel())
    vj = torch.arange(cb.cell.numel()).repeat(rb.cell.numel())
    ci, cj = rb.cell[vi], cb.cell[vj]
    corners = geometry._corner_points(ci, cj, 384, geo)  # (blocks, 4) grid points
    for c in range(n):
        vals = geometry._eval_blocks(geo, vi, vj, grid[c].reshape(-1)[corners])  # (pixels, blocks)
        got = torch.full((size[0] * size[1] + 1,), float("nan"))
        idx = (rb.off[vi][:, :, None] + cb.off[vj][:, None, :]).clamp_(max=size[0] * size[1])
        got.index_put_((idx.reshape(-1),), vals.t().reshape(-1))
        assert torch.equal(got[:-1].view(size), ref[c]), c


@pytest.mark.parametrize("q,h,w", [(200, 96, 96), (200, 96, 176), (24, 64, 120), (8, 100, 100), (3, 96, 96), (24, 400, 48)])
def test_grid_source_cl_bit_identical(q, h, w):
    # channels-last rows of the 384 x 384 resize (two-pass where torch's own order is checked,
    # F.interpolate's rows otherwise) are transformers' intermediates bit for bit
    x = 20 * torch.randn(q, h, w, generator=torch.Generator().manual_seed(q + h))
    full = torch.nn.functional.interpolate(x[None], size=(384, 384), mode="bilinear", align_corners=False)[0]
    rows = geometry.grid_source_cl(x)
    for r0, r1 in [(0, 33), (32, 65), (351, 384), (100, 101)]:
        assert torch.equal(rows(r0, r1).permute(2, 0, 1), full[:, r0:r1]), (r0, r1)


def test_argmax0_first_index():
    g = torch.Generator().manual_seed(7)
    v = torch.rand(150, 33, 384, generator=g)
    v[:, 0, 0] = 0.25  # every channel ties
    v[9, 0, 1] = v[4, 0, 1] = 2.0  # two tie for the best
    v[4, 0, 2] = 2.0
    v[9, 0, 2] = torch.nextafter(torch.tensor(2.0), torch.tensor(3.0))  # equal up to the low 8 bits
    v[:, 1] = 0.0
    assert torch.equal(geometry._argmax0(v), v.max(0).indices)
    assert geometry._argmax0(v)[0, :3].tolist() == [0, 4, 9]
    w = torch.rand(300, 5, 7, generator=g)  # more channels than the packed form holds
    assert torch.equal(geometry._argmax0(w), w.max(0).indices)


def test_nonzero_matches_torch():
    g = torch.Generator().manual_seed(8)
    for shape in [(150, 33, 384), (7, 1001), (3,), (5000,)]:
        m = torch.rand(shape, generator=g) < 0.03
        assert torch.equal(geometry._nonzero(m), m.reshape(-1).nonzero()[:, 0])
        sub = m.reshape(-1)[3:]  # a view whose storage does not start at a word
        assert torch.equal(geometry._nonzero(sub), sub.nonzero()[:, 0])
