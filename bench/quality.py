"""Quality of the offline checkpoints, measured through the worker's outputs on held-out scenes.

    python -m bench.quality                      # the trained checkpoints (segq models tiny)
    python -m bench.quality --kind random        # the random ones (--random), as a baseline
    python -m bench.quality --scenes 20 --no-video

A real Redis, SeaweedFS S3 and one real CPU worker (``bench.common``); held-out scenes from
``bench/scenes.py`` (seeds from ``HELDOUT_SEEDS``, several sizes and aspect ratios, PNG) are
submitted through ``producer.client.Client`` once per task, and the downloaded ``labels.png``,
``panoptic.png`` and ``segments.json`` are scored against the generator's ground truth:

- semantic (``ade-semantic``): IoU of each of our 8 classes over all scenes (pixels summed over
  the dataset), mIoU over the classes present in the ground truth; also pixel accuracy;
- panoptic (``coco-panoptic``): PQ, SQ, RQ (Kirillov et al.: a predicted and a ground-truth
  segment of one category match when their IoU > 0.5; void pixels, i.e. things too small to
  count, are left out of the IoUs, and predictions mostly inside void are not false positives),
  for all categories, things and stuff; and the recall of person and car instances (how many
  came out as a segment of their own);
- instance (``coco-instance``): mask AP at IoU 0.5 per class (COCO's 101-point interpolation;
  detections ranked by their ``segments.json`` score; the worker's instance label map gives each
  pixel to one instance, so overlapping detections are scored as written), and the mean IoU of
  the matched instances.

Video: a held-out clip (``scenes.clip``) encoded as H.264 is submitted as a semantic and a
panoptic video job; the label archives (``outputs/<job>/labels/chunk-NNNNN.npz``) are scored
frame by frame, and compared with (a) the clip's raw frames submitted as image jobs (scores should
be close: H.264 changes the pixels a little) and (b) the frames decoded from the MP4 (as the
worker decodes them) submitted as image jobs, whose label maps should agree with the video's.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from bench import scenes
from bench.common import servers, start_workers, stop_workers, table

#: Sizes (width, height) of the held-out scenes: other aspect ratios than most training scenes.
SIZES = ((640, 426), (512, 384), (480, 320), (640, 360), (400, 400), (600, 450))
#: The first held-out seed the bench uses (the tests and the demo use others of the range).
FIRST_SEED = scenes.HELDOUT_SEEDS.start + 1000
CLIP_SEED = scenes.HELDOUT_SEEDS.start + 2000


# ------------------------------------------------------------------------------------------
# metrics (plain numpy, on ground truth from bench.scenes)

class SemanticScore:
    def __init__(self, label_set: str = "ade20k"):
        self.lut = scenes.label_lut(label_set)
        self.inter = np.zeros(len(scenes.CLASSES))
        self.union = np.zeros(len(scenes.CLASSES))
        self.correct = 0
        self.total = 0

    def add(self, sc: scenes.Scene, pred: np.ndarray) -> None:
        for c in range(len(scenes.CLASSES)):
            if self.lut[c] == scenes.VOID:
                continue
            g, p = sc.classes == c, pred == self.lut[c]
            self.inter[c] += np.count_nonzero(g & p)
            self.union[c] += np.count_nonzero(g | p) if g.any() else 0
        gt = self.lut[sc.classes]
        valid = gt != scenes.VOID
        self.correct += int(np.count_nonzero((pred == gt) & valid))
        self.total += int(np.count_nonzero(valid))

    def iou(self) -> dict[str, float]:
        return {scenes.CLASSES[c]: float(self.inter[c] / self.union[c]) for c in range(len(scenes.CLASSES))
                if self.union[c] > 0}

    def miou(self) -> float:
        ious = list(self.iou().values())
        return float(np.mean(ious)) if ious else float("nan")

    def accuracy(self) -> float:
        return self.correct / max(1, self.total)


def semantic_of_panoptic(ids: np.ndarray, segments: dict[int, int]) -> np.ndarray:
    """Class map of a panoptic segment-id map (``segments``: id -> label id); 255 = no segment."""
    lut = np.full(int(ids.max()) + 1 if ids.size else 1, scenes.VOID, np.int32)
    for sid, label in segments.items():
        if sid < len(lut):
            lut[sid] = label
    return lut[ids]


class PanopticScore:
    """PQ over categories (standard definition), with ground-truth void pixels ignored."""

    def __init__(self, label_set: str = "coco_panoptic"):
        from workers.media import labels

        self.ls = labels.load(label_set)
        self.label_set = label_set
        self.tp: dict[int, int] = {}
        self.fp: dict[int, int] = {}
        self.fn: dict[int, int] = {}
        self.iou_sum: dict[int, float] = {}
        self.things_gt = {"person": 0, "car": 0}
        self.things_found = {"person": 0, "car": 0}

    def add(self, sc: scenes.Scene, pred_ids: np.ndarray, pred_segments: dict[int, int]) -> None:
        gt_ids, gt_segs = sc.panoptic(self.label_set)
        void = sc.instances < 0
        gt_label = {s["id"]: s["label_id"] for s in gt_segs}
        gt_area = {s["id"]: int(np.count_nonzero(gt_ids == s["id"])) for s in gt_segs}
        pred_label = dict(pred_segments)
        k = int(max(pred_ids.max(initial=0), max(pred_label, default=0))) + 1
        full_area = np.bincount(pred_ids.ravel(), minlength=k)
        in_void = np.bincount(pred_ids[void].ravel(), minlength=k)
        pred_ids = np.where(void, 0, pred_ids)  # void pixels are out of every IoU
        pred_area = np.bincount(pred_ids.ravel(), minlength=k)
        pairs = np.bincount((gt_ids.astype(np.int64) * k + pred_ids).ravel(), minlength=(int(gt_ids.max()) + 1) * k)
        pairs = pairs.reshape(-1, k)
        matched_gt, matched_pred = set(), set()
        for g in gt_label:
            for p in np.flatnonzero(pairs[g]):
                p = int(p)
                if p == 0 or pred_label.get(p) != gt_label[g]:
                    continue
                inter = pairs[g, p]
                union = gt_area[g] + pred_area[p] - inter
                if union and inter / union > 0.5:
                    c = gt_label[g]
                    self.tp[c] = self.tp.get(c, 0) + 1
                    self.iou_sum[c] = self.iou_sum.get(c, 0.0) + inter / union
                    matched_gt.add(g)
                    matched_pred.add(p)
        for g, c in gt_label.items():
            if g not in matched_gt:
                self.fn[c] = self.fn.get(c, 0) + 1
            name = self.ls.names[c]
            if name in self.things_gt:
                self.things_gt[name] += 1
                self.things_found[name] += int(g in matched_gt)
        for p, c in pred_label.items():
            if p in matched_pred or p >= k or full_area[p] == 0:
                continue
            if in_void[p] > 0.5 * full_area[p]:
                continue  # mostly a thing too small to count: not a false positive
            self.fp[c] = self.fp.get(c, 0) + 1

    def pq(self, which: str = "all") -> tuple[float, float, float, int]:
        cats = set(self.tp) | set(self.fp) | set(self.fn)
        isthing = self.ls.isthing
        if which == "things":
            cats = {c for c in cats if isthing[c]}
        elif which == "stuff":
            cats = {c for c in cats if not isthing[c]}
        pqs, sqs, rqs = [], [], []
        for c in cats:
            tp, fp, fn = self.tp.get(c, 0), self.fp.get(c, 0), self.fn.get(c, 0)
            if tp + fp + fn == 0:
                continue
            sq = self.iou_sum.get(c, 0.0) / tp if tp else 0.0
            rq = tp / (tp + 0.5 * fp + 0.5 * fn)
            pqs.append(sq * rq)
            sqs.append(sq)
            rqs.append(rq)
        if not pqs:
            return float("nan"), float("nan"), float("nan"), 0
        return float(np.mean(pqs)), float(np.mean(sqs)), float(np.mean(rqs)), len(pqs)

    def per_class(self) -> dict[str, tuple[float, int, int, int]]:
        out = {}
        for c in sorted(set(self.tp) | set(self.fp) | set(self.fn)):
            tp, fp, fn = self.tp.get(c, 0), self.fp.get(c, 0), self.fn.get(c, 0)
            sq = self.iou_sum.get(c, 0.0) / tp if tp else 0.0
            out[self.ls.names[c]] = (sq * tp / (tp + 0.5 * fp + 0.5 * fn), tp, fp, fn)
        return out


class InstanceScore:
    """Mask AP at IoU 0.5 for person and car (COCO 101-point interpolation), and mean IoU of matches."""

    def __init__(self, label_set: str = "coco_instance"):
        self.lut = scenes.label_lut(label_set)
        self.dets: dict[int, list[tuple[float, bool, float]]] = {scenes.PERSON: [], scenes.CAR: []}
        self.gt_count = {scenes.PERSON: 0, scenes.CAR: 0}

    def add(self, sc: scenes.Scene, pred_ids: np.ndarray, segments: list[dict]) -> None:
        void = sc.instances < 0
        gts = sc.things()
        for c in self.gt_count:
            label = int(self.lut[c])
            mine = {i: m for i, (cc, m) in gts.items() if cc == c}
            self.gt_count[c] += len(mine)
            preds = sorted((s for s in segments if s["label_id"] == label), key=lambda s: -(s["score"] or 0))
            used = set()
            for s in preds:
                pm = pred_ids == s["id"]
                area = np.count_nonzero(pm)
                in_void = np.count_nonzero(pm & void)
                pm &= ~void
                best, best_iou = None, 0.5
                for g, gm in mine.items():
                    if g in used:
                        continue
                    inter = np.count_nonzero(pm & gm)
                    if not inter:
                        continue
                    iou = inter / np.count_nonzero(pm | gm)
                    if iou > best_iou:
                        best, best_iou = g, iou
                if best is None and area and in_void / area > 0.5:
                    continue  # a detection of a thing too small to count: ignored, as COCO's crowd
                if best is not None:
                    used.add(best)
                self.dets[c].append((float(s["score"] or 0), best is not None, best_iou if best is not None else 0.0))

    def ap50(self, c: int) -> float:
        dets = sorted(self.dets[c], key=lambda d: -d[0])
        n = self.gt_count[c]
        if n == 0:
            return float("nan")
        tp = np.cumsum([d[1] for d in dets]) if dets else np.zeros(0)
        fp = np.cumsum([not d[1] for d in dets]) if dets else np.zeros(0)
        recall = tp / n
        precision = tp / np.maximum(tp + fp, 1)
        for i in range(len(precision) - 2, -1, -1):
            precision[i] = max(precision[i], precision[i + 1])
        ap = 0.0
        for r in np.linspace(0, 1, 101):
            k = np.searchsorted(recall, r, side="left")
            ap += precision[k] if k < len(precision) else 0.0
        return ap / 101

    def matched_iou(self, c: int) -> float:
        ious = [d[2] for d in self.dets[c] if d[1]]
        return float(np.mean(ious)) if ious else float("nan")

    def recall(self, c: int) -> float:
        return sum(d[1] for d in self.dets[c]) / max(1, self.gt_count[c])


# ------------------------------------------------------------------------------------------
# the run

def read_outputs(folder: Path, task: str) -> tuple[np.ndarray, dict]:
    doc = json.loads((folder / "segments.json").read_text())
    labels = np.asarray(Image.open(folder / "labels.png")).astype(np.int32)
    if task == "panoptic":
        rgb = np.asarray(Image.open(folder / "panoptic.png").convert("RGB")).astype(np.int32)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        assert np.array_equal(ids, labels), "panoptic.png and labels.png disagree"
        return ids, doc
    return labels, doc


def read_video_labels(folder: Path) -> tuple[dict[int, np.ndarray], dict[int, list]]:
    maps, segs = {}, {}
    for f in sorted((folder / "labels").glob("chunk-*.npz")):
        with np.load(f) as z:
            frames = z["frames"]
            seg = json.loads(str(z["segments"]))
            for i, fi in enumerate(frames):
                maps[int(fi)] = z["labels"][i].astype(np.int32)
                segs[int(fi)] = seg[i]
    return maps, segs


def run_jobs(client, paths: list[Path], task: str, out: Path, **video) -> list[Path]:
    """Submit ``paths`` (one batch), wait, download; the output folders in the order of ``paths``."""
    jobs = client.submit([str(p) for p in paths], task=task, **video)
    by_name = {Path(j.source).name: j for j in jobs}
    assert sorted(by_name) == sorted(p.name for p in paths), (sorted(by_name)[:3], [p.name for p in paths][:3])
    records = client.wait([j.id for j in jobs], timeout=3600, poll=0.2)
    by_id = {r.id: r for r in records}
    folders = []
    for p in paths:
        rec = by_id[by_name[p.name].id]
        assert rec.state == "done", f"{task} job {rec.id} on {p}: {rec.state} {rec.error}"
        client.download(rec.id, out)
        folders.append(out / rec.id)
    return folders


def score_images(sem_dirs, pan_dirs, ins_dirs, truth) -> dict:
    sem, sem_pan, pan, ins = SemanticScore(), SemanticScore("coco_panoptic"), PanopticScore(), InstanceScore()
    for sc, d in zip(truth, sem_dirs):
        sem.add(sc, read_outputs(d, "semantic")[0])
    for sc, d in zip(truth, pan_dirs or []):
        ids, doc = read_outputs(d, "panoptic")
        segs = {s["id"]: s["label_id"] for s in doc["segments"]}
        pan.add(sc, ids, segs)
        sem_pan.add(sc, semantic_of_panoptic(ids, segs))
    for sc, d in zip(truth, ins_dirs or []):
        ids, doc = read_outputs(d, "instance")
        ins.add(sc, ids, doc["segments"])
    return {"semantic": sem, "semantic_from_panoptic": sem_pan, "panoptic": pan, "instance": ins}


def save_png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=["trained", "random"], default="trained")
    ap.add_argument("--scenes", type=int, default=50)
    ap.add_argument("--clip-frames", type=int, default=48)
    ap.add_argument("--no-video", action="store_true")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--keep", type=Path, help="keep inputs and outputs in this folder")
    ap.add_argument("--json", type=Path, help="write the figures as JSON here")
    ap.add_argument("--overlays", type=Path,
                    help="also segment the demo image (producer/data/demo-street.jpg) per task and copy the "
                         "worker's overlay.jpg here as demo-<task>.jpg (docs/img)")
    args = ap.parse_args()

    from workers.model.checkpoints import make_all_tiny
    from workers.media.video import PartEncoder, decode_range, probe

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="segq-quality-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        models = make_all_tiny(root / "models", random=args.kind == "random")
        seeds = [FIRST_SEED + i for i in range(args.scenes)]
        truth = [scenes.scene(s, SIZES[i % len(SIZES)]) for i, s in enumerate(seeds)]
        inputs = [save_png(root / "inputs" / f"scene-{s}.png", sc.image) for s, sc in zip(seeds, truth)]
        if not args.no_video:
            frames = scenes.clip(CLIP_SEED, args.clip_frames, (480, 320))
            clip_path = root / "inputs" / "clip.mp4"
            enc = PartEncoder(clip_path, Fraction(24), gop=16)
            for fr in frames:
                enc.write(fr.image)
            enc.close()
            raw_paths = [save_png(root / "inputs" / "clip-raw" / f"{i:03d}.png", fr.image) for i, fr in enumerate(frames)]
            with open(clip_path, "rb") as fh:
                info = probe(fh, 10_000, 10_000_000)
            with open(clip_path, "rb") as fh:
                decoded = list(decode_range(fh, info, 0, info.frames))
            dec_paths = [save_png(root / "inputs" / "clip-decoded" / f"{i:03d}.png", im) for i, im in enumerate(decoded)]
        with servers(root) as env:
            env["SEGQ_MODELS"] = ",".join(f"{k}={v}" for k, v in models.items())
            os.environ.update(env)
            from producer.client import Client
            from segq.settings import Settings

            workers = start_workers(root, env, 1, threads=args.threads)
            try:
                client = Client(Settings.from_env())
                out = root / "outputs"
                t0 = time.perf_counter()
                dirs = {t: run_jobs(client, inputs, t, out) for t in ("semantic", "panoptic", "instance")}
                t_images = time.perf_counter() - t0
                if args.overlays:
                    import shutil

                    demo = Path(__file__).resolve().parents[1] / "producer" / "data" / "demo-street.jpg"
                    args.overlays.mkdir(parents=True, exist_ok=True)
                    for task in ("semantic", "panoptic", "instance"):
                        [d] = run_jobs(client, [demo], task, out)
                        shutil.copyfile(d / "overlay.jpg", args.overlays / f"demo-{task}.jpg")
                        print(f"{args.overlays / f'demo-{task}.jpg'}")
                video = {}
                if not args.no_video:
                    for task in ("semantic", "panoptic"):
                        [vdir] = run_jobs(client, [clip_path], task, out, chunk_frames=16, batch_size=4)
                        video[task] = {"video": read_video_labels(vdir),
                                       "raw": run_jobs(client, raw_paths, task, out),
                                       "decoded": run_jobs(client, dec_paths, task, out)}
            finally:
                stop_workers(workers)
        figures = report(args, truth, dirs, video, frames if not args.no_video else None, t_images)
    print(f"\nbench time {time.perf_counter() - started:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


def report(args, truth, dirs, video, frames, t_images) -> dict:
    s = score_images(dirs["semantic"], dirs["panoptic"], dirs["instance"], truth)
    sem, pan, ins, sem_pan = s["semantic"], s["panoptic"], s["instance"], s["semantic_from_panoptic"]
    figures: dict = {"kind": args.kind, "scenes": len(truth), "sizes": [list(x) for x in SIZES],
                     "seeds": [truth[0].seed, truth[-1].seed]}
    print(f"\n{args.kind} checkpoints, {len(truth)} held-out scenes (seeds {truth[0].seed}..{truth[-1].seed}, sizes "
          f"{', '.join(f'{w}x{h}' for w, h in SIZES)}), through one CPU worker: {3 * len(truth)} image jobs in {t_images:.0f}s\n")
    iou, iou_pan = sem.iou(), sem_pan.iou()
    rows = [(c, f"{iou[c]:.3f}" if c in iou else "-", f"{iou_pan[c]:.3f}" if c in iou_pan else "-") for c in scenes.CLASSES]
    rows.append(("mIoU (classes present)", f"{sem.miou():.3f}", f"{sem_pan.miou():.3f}"))
    rows.append(("pixel accuracy", f"{sem.accuracy():.3f}", f"{sem_pan.accuracy():.3f}"))
    print(table(rows, ("class", "IoU ade-semantic", "IoU coco-panoptic (as classes)")))
    figures["semantic"] = {"iou": iou, "miou": sem.miou(), "pixel_accuracy": sem.accuracy()}
    figures["panoptic_as_semantic"] = {"iou": iou_pan, "miou": sem_pan.miou()}
    print()
    rows = []
    figures["panoptic"] = {}
    for which in ("all", "things", "stuff"):
        pq, sq, rq, n = pan.pq(which)
        rows.append((which, f"{pq:.3f}", f"{sq:.3f}", f"{rq:.3f}", n))
        figures["panoptic"][which] = {"pq": pq, "sq": sq, "rq": rq, "categories": n}
    print(table(rows, ("coco-panoptic", "PQ", "SQ", "RQ", "categories")))
    rows = [(name, f"{v[0]:.3f}", v[1], v[2], v[3]) for name, v in pan.per_class().items()]
    print()
    print(table(rows, ("category", "PQ", "TP", "FP", "FN")))
    figures["panoptic"]["per_class"] = {k: {"pq": v[0], "tp": v[1], "fp": v[2], "fn": v[3]} for k, v in pan.per_class().items()}
    print()
    rows = []
    figures["things_found"] = {}
    for name in ("person", "car"):
        n, f = pan.things_gt[name], pan.things_found[name]
        rows.append((name, n, f, f"{f / max(1, n):.2f}"))
        figures["things_found"][name] = {"gt": n, "found": f}
    print(table(rows, ("instances (panoptic)", "ground truth", "own segment, IoU>0.5", "recall")))
    print()
    rows = []
    figures["instance"] = {}
    for c in (scenes.PERSON, scenes.CAR):
        name = scenes.CLASSES[c]
        rows.append((name, ins.gt_count[c], f"{ins.ap50(c):.3f}", f"{ins.recall(c):.2f}", f"{ins.matched_iou(c):.3f}"))
        figures["instance"][name] = {"gt": ins.gt_count[c], "ap50": ins.ap50(c), "recall50": ins.recall(c),
                                     "matched_iou": ins.matched_iou(c)}
    print(table(rows, ("coco-instance", "ground truth", "mask AP50", "recall@0.5", "mean IoU of matches")))
    if video:
        print(f"\nvideo: clip seed {CLIP_SEED}, {len(frames)} frames 480x320, H.264 (crf 20), chunks of 16, batch 4\n")
        rows = []
        figures["video"] = {}
        for task, v in video.items():
            maps, segs = v["video"]
            assert sorted(maps) == list(range(len(frames))), f"video labels cover frames {sorted(maps)[:5]}..."
            dec = [read_outputs(d, task) for d in v["decoded"]]
            raw = [read_outputs(d, task) for d in v["raw"]]
            agree = np.mean([np.mean(maps[i] == dec[i][0]) for i in range(len(frames))])
            if task == "semantic":
                sv, sr, sd = SemanticScore(), SemanticScore(), SemanticScore()
                for i, fr in enumerate(frames):
                    sv.add(fr, maps[i])
                    sr.add(fr, raw[i][0])
                    sd.add(fr, dec[i][0])
                vals = (sv.miou(), sr.miou(), sd.miou())
                metric = "mIoU"
            else:
                pv, pr, pd = PanopticScore(), PanopticScore(), PanopticScore()
                for i, fr in enumerate(frames):
                    pv.add(fr, maps[i], {s["id"]: s["label_id"] for s in segs[i]})
                    pr.add(fr, raw[i][0], {s["id"]: s["label_id"] for s in raw[i][1]["segments"]})
                    pd.add(fr, dec[i][0], {s["id"]: s["label_id"] for s in dec[i][1]["segments"]})
                vals = (pv.pq()[0], pr.pq()[0], pd.pq()[0])
                metric = "PQ"
            rows.append((task, metric, f"{vals[0]:.3f}", f"{vals[1]:.3f}", f"{vals[2]:.3f}", f"{100 * agree:.2f}%"))
            figures["video"][task] = {"metric": metric, "video": vals[0], "raw_frames_as_images": vals[1],
                                      "decoded_frames_as_images": vals[2], "label_agreement_video_vs_decoded": float(agree)}
        print(table(rows, ("video job", "metric", "video job", "raw frames as images", "decoded frames as images",
                           "pixels equal, video vs decoded images")))
    return figures


if __name__ == "__main__":
    main()
