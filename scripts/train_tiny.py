"""Train the three offline Mask2Former checkpoints on procedural street scenes, on the CPU.

    python scripts/train_tiny.py                       # writes workers/model/data/tiny/<model>/ (package data)
    python scripts/train_tiny.py --out /tmp/tiny --work /tmp/tiny-work   # elsewhere: the package data untouched
    python scripts/train_tiny.py --resume /tmp/tiny-work/trunk-phase3.pt --resume-phase 3   # phases 4-5 only

The architecture is exactly ``workers.model.checkpoints.tiny_config(label_set)`` (Swin embed 24,
depths 1-1-1-1, 24 queries, hidden 32) with the label sets and image processors of the random
checkpoints. Scenes come from ``bench/scenes.py`` (training seeds only, never held-out ones).

One trunk is trained once, as the ``coco-panoptic`` model, with a Mask2Former set loss made
cheap enough for two CPU cores:

- queries 0-5 are *stuff* queries with a fixed assignment (sky, building, window, tree, road,
  sidewalk: the class if it is present, "no object" if not); queries 6-23 are matched to the
  person and car instances by the Hungarian algorithm on every decoder layer (class probability,
  mask cross-entropy and dice, as Mask2Former's matcher);
- class cross-entropy (weight 2, "no object" 0.1), mask binary cross-entropy (5) and dice (5) on
  whole masks at the mask features' 1/4 resolution (no point sampling: at 96 x 64 it is cheap);
- and a per-pixel cross-entropy on the *semantic output itself*: Mask2Former's semantic
  inference, ``sum_q softmax(class_q) * sigmoid(mask_q)`` over our 8 classes, against the
  ground truth's class fractions at 1/4 resolution (weight 2). This is what makes a model of this
  size learn in minutes rather than hours.

After three phases of that (see ``PHASES``), phase 4 adds De Brabandere et al.'s discriminative
loss on the mask features (:func:`discriminative_loss`): a thing query's mask is the dot product
of its embedding with those features, so where two cars' pixels have the same features no query
can cover one without the other (measured: a linear query fitted to each held-out instance alone
on the phase-3 features covered 27 % of the cars and 3 % of the persons with IoU > 0.5).

The checkpoints come from that trunk without more training of it: ``ade-semantic`` copies the
class head's rows by class name (semantic inference uses only the class probabilities and
masks); ``coco-panoptic`` and ``coco-instance`` refit only rows of the class head (person, car,
"no object") on the frozen trunk's last-layer query features, a thing query keeping its matched
instance's class only where its mask covers it (:func:`query_features`), stuff queries as their
class (panoptic) or "no object" (instance).

Weights are written as fp16 safetensors with ``config.json``, ``preprocessor_config.json`` and
``training.json`` (steps, seconds, losses, the held-out check); ``segq models tiny`` writes
fp32 copies. Seeded (torch, numpy, scene seeds); results depend a little on the thread count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench import scenes  # noqa: E402

OUT = ROOT / "workers" / "model" / "data" / "tiny"
SEED = 20240601
SIZES = ((384, 256), (448, 256), (320, 256), (512, 256))
SIZE_WEIGHTS = (0.45, 0.25, 0.15, 0.15)
MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # the image processor's normalisation
STD = np.array([0.229, 0.224, 0.225], np.float32)
STUFF = [c for c in range(len(scenes.CLASSES)) if c not in scenes.THINGS]
N_STUFF = len(STUFF)
N_QUERIES = 24  # tiny_config's
#: Per-class weights of the per-pixel loss (our classes' order): the small things count more.
DENSE_WEIGHTS = (1.0, 1.0, 1.5, 1.0, 1.0, 1.2, 3.0, 1.5)
W_CLASS, W_NULL, W_BCE, W_DICE, W_DENSE = 2.0, 0.1, 5.0, 5.0, 2.0
DELTA_V, DELTA_D = 0.3, 1.0  # phase 4: the discriminative loss's margins (pull within, push between instances)
SPATIAL = 8.0  # phase 2: weight of the anchor distance in the things' matching cost


def _draw(args):
    seed, size = args
    sc = scenes.scene(seed, size)
    inst = sc.instances.astype(np.int16)
    things = sorted(sc.instance_class.items())
    return sc.image, sc.classes, inst, things


def make_scenes(n: int, first_seed: int, rng: np.random.Generator, procs: int) -> list[tuple]:
    sizes = rng.choice(len(SIZES), size=n, p=SIZE_WEIGHTS)
    jobs = [(first_seed + i, SIZES[int(k)]) for i, k in enumerate(sizes)]
    assert all(j[0] in scenes.TRAIN_SEEDS for j in jobs) or first_seed in scenes.HELDOUT_SEEDS
    if procs > 1:
        with Pool(procs) as pool:
            return pool.map(_draw, jobs, chunksize=16)
    return [_draw(j) for j in jobs]


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def pixels(images: list[np.ndarray]):
    import torch

    x = (np.stack(images).astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def pool4(a: np.ndarray) -> np.ndarray:
    """Mean over 4 x 4 blocks of a (..., H, W) array (H and W multiples of 4)."""
    h, w = a.shape[-2:]
    return a.reshape(*a.shape[:-2], h // 4, 4, w // 4, 4).mean(axis=(-3, -1))


def item_targets(item, flip: bool):
    """Targets of one scene at 1/4 resolution: class fractions (8, h, w), valid weight (h, w)
    (0 where a too-small thing makes the pixel void for instance losses), thing masks (k, h, w)
    and their classes (our indexes)."""
    _, classes, inst, things = item
    if flip:
        classes, inst = classes[:, ::-1], inst[:, ::-1]
    onehot = (classes[None] == np.arange(len(scenes.CLASSES))[:, None, None]).astype(np.float32)
    frac = pool4(onehot)
    valid = 1.0 - pool4((inst < 0).astype(np.float32))
    tm, tc = [], []
    for i, c in things:
        m = inst == i
        if m.sum() >= 16:
            tm.append(pool4(m.astype(np.float32)))
            tc.append(c)
    tm = np.stack(tm) if tm else np.zeros((0,) + frac.shape[1:], np.float32)
    return frac, valid, tm, np.array(tc, np.int64)


def batches(data: list[tuple], batch: int, rng: np.random.Generator):
    """Endless batches of same-size scenes, shuffled, with flips and JPEG re-encoding."""
    by_size: dict[tuple, list[int]] = {}
    for i, item in enumerate(data):
        by_size.setdefault(item[0].shape[:2], []).append(i)
    keys = sorted(by_size)
    weights = np.array([len(by_size[k]) for k in keys], np.float64)
    weights /= weights.sum()
    while True:
        k = keys[int(rng.choice(len(keys), p=weights))]
        idx = rng.choice(by_size[k], size=min(batch, len(by_size[k])), replace=False)
        yield [(data[int(i)], bool(rng.random() < 0.5), int(rng.integers(50, 96)) if rng.random() < 0.5 else 0)
               for i in idx]


def step_inputs(items):
    import torch

    images, tgts = [], []
    for item, flip, quality in items:
        img = item[0][:, ::-1] if flip else item[0]
        img = jpeg(np.ascontiguousarray(img), quality) if quality else np.ascontiguousarray(img)
        images.append(img)
        frac, valid, tm, tc = item_targets(item, flip)
        tgts.append((torch.from_numpy(frac), torch.from_numpy(valid), torch.from_numpy(tm), torch.from_numpy(tc)))
    return pixels(images), tgts


def stuff_present(frac) -> list[tuple[int, int]]:
    """The stuff queries' fixed assignment in one image: (query, our class) for each stuff class
    present in its class fractions ``frac`` (8, h, w); the other stuff queries are "no object"."""
    present = frac.flatten(1).sum(1) > 0
    return [(j, c) for j, c in enumerate(STUFF) if present[c]]


def _dice_bce_cost(logits, targets, valid):
    """(Q, K) matching costs: mean BCE and dice between Q mask logits and K soft targets."""
    import torch
    import torch.nn.functional as F

    q = logits.flatten(1)
    t = targets.flatten(1)
    v = valid.flatten()
    pos = F.binary_cross_entropy_with_logits(q, torch.ones_like(q), reduction="none") * v
    neg = F.binary_cross_entropy_with_logits(q, torch.zeros_like(q), reduction="none") * v
    n = v.sum().clamp(min=1)
    bce = (pos @ t.T + neg @ (1 - t).T) / n
    p = q.sigmoid() * v
    dice = 1 - (2 * p @ t.T + 1) / (p.sum(1)[:, None] + t.sum(1)[None] + 1)
    return bce, dice


def anchors():
    """(18, 2) normalised (x, y) anchor points of the thing queries in phase 2: a 6 x 3 grid."""
    import torch

    n = N_QUERIES - N_STUFF
    cols, rows = 6, n // 6
    return torch.tensor([((i + 0.5) / cols, (j + 0.5) / rows) for j in range(rows) for i in range(cols)])


def centres(tm):
    """(k, 2) normalised (x, y) centres of mass of k soft masks (k, h, w)."""
    import torch

    h, w = tm.shape[-2:]
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    area = tm.sum((1, 2)).clamp(min=1e-6)
    return torch.stack([(tm.sum(1) * xs).sum(1) / area, (tm.sum(2) * ys).sum(1) / area], 1)


def match_things(cls_logits, mask_logits, tm, tc, valid, pan, spatial: float = 0.0):
    """Hungarian matching of one image's thing queries to its instances ``tm`` (k, h, w) of our
    classes ``tc``: (query indexes among the thing queries, instance indexes). The cost is
    Mask2Former's (class probability, mask cross-entropy and dice), plus ``spatial`` times the
    distance of an instance's centre to a query's anchor."""
    import torch
    from scipy.optimize import linear_sum_assignment

    with torch.no_grad():
        prob = cls_logits[N_STUFF:].softmax(-1)[:, [int(pan[int(c)]) for c in tc]]
        bce, dice = _dice_bce_cost(mask_logits[N_STUFF:], tm, valid)
        cost = -W_CLASS * prob + W_BCE * bce + W_DICE * dice
        if spatial:
            cost = cost + spatial * torch.cdist(anchors(), centres(tm))
    return linear_sum_assignment(cost.numpy())


def layer_loss(cls_logits, mask_logits, tgts, luts, spatial: float = 0.0):
    """The set loss of one decoder layer's outputs for a batch (see the module docstring);
    ``spatial`` > 0 (phase 2) adds the distance of an instance's centre to a thing query's anchor
    to the matching cost, and balances the things' mask cross-entropy between object and background."""
    import torch
    import torch.nn.functional as F

    pan = luts["coco_panoptic"]
    null = cls_logits.shape[-1] - 1
    ce_w = torch.ones(cls_logits.shape[-1])
    ce_w[null] = W_NULL
    total_cls, total_bce, total_dice, n_masks = 0.0, 0.0, 0.0, 0
    h, w = mask_logits.shape[-2:]
    for b, (frac, valid, tm, tc) in enumerate(tgts):
        frac, valid = frac[:, :h, :w], valid[:h, :w]
        tm = tm[:, :h, :w]
        ml = mask_logits[b]
        target_cls = torch.full((ml.shape[0],), null, dtype=torch.long)
        pairs_q, pairs_t = [], []
        for j, c in stuff_present(frac):
            target_cls[j] = int(pan[c])
            pairs_q.append(j)
            pairs_t.append(frac[c])
        if len(tc):
            qi, ti = match_things(cls_logits[b], ml, tm, tc, valid, pan, spatial)
            for q, t in zip(qi, ti):
                target_cls[N_STUFF + q] = int(pan[int(tc[t])])
                pairs_q.append(N_STUFF + int(q))
                pairs_t.append(tm[t])
        total_cls = total_cls + F.cross_entropy(cls_logits[b], target_cls, weight=ce_w)
        if pairs_q:
            pl = ml[pairs_q].flatten(1)
            pt = torch.stack(pairs_t).flatten(1)
            v = valid.flatten()[None]
            # stuff targets are the whole class; things are void where a too-small thing is
            vv = torch.where(torch.tensor([q < N_STUFF for q in pairs_q])[:, None], torch.ones_like(v), v)
            raw = F.binary_cross_entropy_with_logits(pl, pt, reduction="none") * vv
            bce = raw.sum(1) / vv.sum(1).clamp(min=1)
            if spatial:  # object and background pixels weigh half each, for the things
                fg = (raw * pt).sum(1) / (pt * vv).sum(1).clamp(min=1e-3)
                bg = (raw * (1 - pt)).sum(1) / ((1 - pt) * vv).sum(1).clamp(min=1e-3)
                thing = torch.tensor([q >= N_STUFF for q in pairs_q])
                bce = torch.where(thing, 0.5 * (fg + bg), bce)
            p = pl.sigmoid() * vv
            dice = 1 - (2 * (p * pt).sum(1) + 1) / (p.sum(1) + (pt * vv).sum(1) + 1)
            total_bce = total_bce + bce.sum()
            total_dice = total_dice + dice.sum()
            n_masks += len(pairs_q)
    n_masks = max(n_masks, 1)
    return (W_CLASS * total_cls / len(tgts) + W_BCE * total_bce / n_masks + W_DICE * total_dice / n_masks)


def semantic_output(cls_logits, mask_logits, rows):
    """Mask2Former's semantic inference over our classes: (B, 8, h, w), unnormalised."""
    import torch

    probs = cls_logits.softmax(-1)[..., rows]
    return torch.einsum("bqc,bqhw->bchw", probs, mask_logits.sigmoid())


def dense_loss(cls_logits, mask_logits, tgts, rows, class_weights):
    import torch

    seg = semantic_output(cls_logits, mask_logits, rows)
    h, w = seg.shape[-2:]
    frac = torch.stack([t[0][:, :h, :w] for t in tgts])
    logp = torch.log(seg / seg.sum(1, keepdim=True).clamp(min=1e-6) + 1e-6)
    return -(frac * logp * class_weights[None, :, None, None]).sum(1).mean()


def discriminative_loss(features, tgts):
    """De Brabandere et al.'s discriminative loss on the mask features (B, C, h, w), over the thing
    instances of each image: every pixel of an instance is pulled to within ``DELTA_V`` of its
    instance's mean feature, and the means of two instances are pushed ``2 * DELTA_D`` apart. A
    thing query's mask is the dot product of its embedding with these features: where two persons'
    pixels have the same features no query can cover one without the other."""
    import torch

    h, w = features.shape[-2:]
    total, n = 0.0, 0
    for b, (_, _, tm, _) in enumerate(tgts):
        masks = tm[:, :h, :w] > 0.5
        masks = masks[masks.flatten(1).any(1)]
        if len(masks) == 0:
            continue
        f = features[b].flatten(1)  # (C, h*w)
        m = masks.flatten(1).float()  # (k, h*w)
        mu = (m @ f.T) / m.sum(1, keepdim=True)  # (k, C)
        dist = torch.cdist(mu, f.T)  # (k, h*w)
        var = ((dist - DELTA_V).clamp(min=0) ** 2 * m).sum(1) / m.sum(1)
        loss = var.mean()
        if len(mu) > 1:
            apart = torch.cdist(mu, mu)
            off = ~torch.eye(len(mu), dtype=torch.bool)
            loss = loss + ((2 * DELTA_D - apart[off]).clamp(min=0) ** 2).mean()
        total, n = total + loss, n + 1
    return total / n if n else features.sum() * 0.0


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.03 + 0.97 * 0.5 * (1 + math.cos(math.pi * t)))


def quick_check(model, data, rows) -> tuple[float, float]:
    """On held-out scenes, at 1/4 resolution: the semantic mIoU over the classes present, and the
    fraction of persons and cars that some thing query's mask (sigmoid > 0.5) covers with IoU > 0.5."""
    import torch

    model.eval()
    inter = np.zeros(len(scenes.CLASSES))
    union = np.zeros(len(scenes.CLASSES))
    found = total = 0
    with torch.no_grad():
        for item in data:
            out = model(pixel_values=pixels([item[0]]))
            seg = semantic_output(out.class_queries_logits, out.masks_queries_logits, rows)[0]
            pred = seg.argmax(0).numpy()
            gt = item[1][2::4, 2::4][: pred.shape[0], : pred.shape[1]]
            for c in range(len(scenes.CLASSES)):
                p, g = pred == c, gt == c
                inter[c] += (p & g).sum()
                union[c] += (p | g).sum()
            masks = out.masks_queries_logits[0, N_STUFF:] > 0
            _, _, tm, _ = item_targets(item, False)
            h, w = masks.shape[-2:]
            for t in torch.from_numpy(tm)[:, :h, :w] > 0.5:
                i = (masks & t).flatten(1).sum(1).float()
                u = (masks | t).flatten(1).sum(1).float().clamp(min=1)
                found += int((i / u).max() > 0.5)
                total += 1
    model.train()
    seen = union > 0
    return float((inter[seen] / union[seen]).mean()), found / max(1, total)


def train_phase(model, args, data, held, luts, *, phase: int, steps: int, schedule: int, lr: float, warmup: int,
                spatial: float, dense_weight: float, seed: int, disc_weight: float = 0.0) -> tuple[list, float]:
    """One phase of AdamW steps (warm-up, cosine decay over ``schedule`` steps, of which the first
    ``steps`` run; gradient norm clipped at 1). Saves the trunk to ``--work`` at every check."""
    import torch

    model.train()
    rows = [int(r) for r in luts["coco_panoptic"]]
    class_weights = torch.tensor(DENSE_WEIGHTS)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or "embed" in n or "position" in n else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr)
    it = batches(data, args.batch, np.random.default_rng(seed))
    log = []
    started = time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, schedule, lr, warmup)
        x, tgts = step_inputs(next(it))
        out = model(pixel_values=x, output_auxiliary_logits=True)
        layers = [(a["class_queries_logits"], a["masks_queries_logits"]) for a in out.auxiliary_logits]
        layers.append((out.class_queries_logits, out.masks_queries_logits))
        set_loss = sum(layer_loss(c, m, tgts, luts, spatial) for c, m in layers) / len(layers)
        dense = sum(dense_loss(c, m, tgts, rows, class_weights) for c, m in layers) / len(layers)
        loss = set_loss + dense_weight * dense
        disc = discriminative_loss(out.pixel_decoder_last_hidden_state, tgts) if disc_weight else torch.zeros(())
        loss = loss + disc_weight * disc
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            entry = {"phase": phase, "step": step, "loss": round(loss.item(), 4), "set": round(set_loss.item(), 4),
                     "dense": round(dense.item(), 4), "disc": round(disc.item(), 4), "s": round(time.perf_counter() - started, 1)}
            if step % args.eval_every == 0 or step == steps - 1:
                miou, things = quick_check(model, held, rows)
                entry["miou"], entry["things"] = round(miou, 4), round(things, 4)
                torch.save(model.state_dict(), args.work / f"trunk-phase{phase}.pt")
            log.append(entry)
            print(json.dumps(entry), flush=True)
    return log, time.perf_counter() - started


#: The phases of the shipped trunk: steps run, the cosine schedule's length, peak learning rate,
#: weight of the anchor distance in the things' matching (0: Mask2Former's costs only), weight of
#: the per-pixel loss on the semantic output. Phases 1 and 2 stop part-way through their schedules
#: (where the shipped run's checks were taken).
PHASES = (
    {"steps": 1501, "schedule": 2500, "lr": 8e-4, "spatial": 0.0, "dense": W_DENSE},
    {"steps": 751, "schedule": 1500, "lr": 5e-4, "spatial": SPATIAL, "dense": W_DENSE},
    {"steps": 1000, "schedule": 1000, "lr": 3e-4, "spatial": SPATIAL, "dense": 0.25},
    {"steps": 1500, "schedule": 1500, "lr": 5e-4, "spatial": SPATIAL, "dense": 0.25, "disc": 5.0},
    {"steps": 1000, "schedule": 1000, "lr": 2e-4, "spatial": SPATIAL, "dense": 0.25, "disc": 5.0},
)


def train_trunk(args, data, held, luts):
    """Phase 1: matching by class and mask costs (Mask2Former's), from random weights, with the
    per-pixel loss on the semantic output. Phase 2: each thing query's anchor (a 6 x 3 grid) joins
    the matching cost and the things' mask cross-entropy is balanced between object and
    background, so that thing queries learn where to look (as SOLO assigns objects by location).
    Phase 3: the same with the per-pixel loss turned down, which otherwise pulls thing queries
    towards covering every car or person at once (a semantic mask) rather than one. Phases 4
    and 5: the same plus the discriminative loss on the mask features (weight 5), at a higher
    and then a lower learning rate."""
    import torch

    from workers.model.checkpoints import tiny_config
    from transformers import Mask2FormerForUniversalSegmentation

    torch.manual_seed(SEED)
    model = Mask2FormerForUniversalSegmentation(tiny_config("coco_panoptic"))
    log, seconds, first = [], 0.0, 1
    if args.resume:
        first = args.resume_phase + 1
        if args.resume.is_dir():  # a checkpoint folder (the package data): its weights, fp16 -> fp32
            model.load_state_dict(Mask2FormerForUniversalSegmentation.from_pretrained(
                args.resume, torch_dtype=torch.float32).state_dict())
            prev = json.loads((args.resume / "training.json").read_text())
            log, seconds = [prev["final"]], prev["seconds"]
        else:
            model.load_state_dict(torch.load(args.resume))
            doc = args.resume.with_suffix(".json")
            if doc.exists():
                prev = json.loads(doc.read_text())
                log, seconds = prev["log"], prev["seconds"]
        print(f"phases 1-{args.resume_phase} from {args.resume}", flush=True)
    for k, ph in enumerate(PHASES, 1):
        if k < first:
            continue
        entries, took = train_phase(model, args, data, held, luts, phase=k, steps=ph["steps"], schedule=ph["schedule"],
                                    lr=ph["lr"], warmup=args.warmup if k == 1 else 50, spatial=ph["spatial"],
                                    dense_weight=ph["dense"], seed=SEED + k - 1, disc_weight=ph.get("disc", 0.0))
        log, seconds = log + entries, seconds + took
        (args.work / f"trunk-phase{k}.json").write_text(json.dumps({"log": log, "seconds": seconds}))
    return model, log, seconds


def with_trunk(trunk, label_set: str, rows: dict[int, int]):
    """A ``label_set`` model with the trunk's weights; its class head copies the trunk's rows
    ``rows`` (its id -> the trunk's id) and "no object"; every other class gets a logit that
    never wins (-30)."""
    import torch

    from workers.model.checkpoints import tiny_config
    from transformers import Mask2FormerForUniversalSegmentation

    model = Mask2FormerForUniversalSegmentation(tiny_config(label_set)).eval()
    own = ("class_predictor.", "criterion.")
    state = {k: v for k, v in trunk.state_dict().items() if not k.startswith(own)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(own) for k in missing), (missing, unexpected)
    src, dst = trunk.class_predictor, model.class_predictor
    with torch.no_grad():
        dst.weight.zero_()
        dst.bias.fill_(-30.0)
        for mine, theirs in {**rows, -1: -1}.items():
            dst.weight[mine] = src.weight[theirs]
            dst.bias[mine] = src.bias[theirs]
    return model


def semantic_model(trunk, luts):
    """``ade-semantic``: the trunk with its class head's rows moved to the ADE20K ids of the same
    classes."""
    return with_trunk(trunk, "ade20k", {int(luts["ade20k"][c]): int(luts["coco_panoptic"][c])
                                        for c in range(len(scenes.CLASSES))})


#: A thing query's class is refitted to its matched instance's class only where its mask covers
#: that instance (IoU above this, at 1/4 resolution); every other thing query is "no object".
REFIT_MIN_IOU = 0.5


def query_features(trunk, data, luts):
    """Per training scene: the trunk's last-layer query features (Q, hidden) and each query's
    target among our classes (-1: "no object"). Stuff queries keep their fixed assignment (the
    class if present); a thing query takes the class of the instance the Hungarian matching of
    training gives it only where its mask (logit > 0) covers that instance with IoU above
    ``REFIT_MIN_IOU``: its class probability then says how good its mask is, which is what the
    panoptic and instance post-processing rank and threshold."""
    import torch

    pan = luts["coco_panoptic"]
    feats, targets = [], []
    trunk.eval()
    seen = []  # the class head's input on each call: the last call is the last decoder layer's
    hook = trunk.class_predictor.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    with torch.no_grad():
        for item in data:
            seen.clear()
            out = trunk(pixel_values=pixels([item[0]]))
            f = seen[-1][0]
            cls = out.class_queries_logits[0]
            assert torch.allclose(trunk.class_predictor(f), cls, atol=1e-5)
            masks = out.masks_queries_logits[0]
            frac, valid, tm, tc = (torch.from_numpy(a) for a in item_targets(item, False))
            h, w = masks.shape[-2:]
            frac, valid, tm = frac[:, :h, :w], valid[:h, :w], tm[:, :h, :w]
            t = torch.full((masks.shape[0],), -1, dtype=torch.long)
            for j, c in stuff_present(frac):
                t[j] = c
            if len(tc):
                qi, ti = match_things(cls, masks, tm, tc, valid, pan)
                for q, j in zip(qi, ti):
                    m, g = masks[N_STUFF + q] > 0, tm[j] > 0.5
                    iou = (m & g).sum() / (m | g).sum().clamp(min=1)
                    if iou > REFIT_MIN_IOU:
                        t[N_STUFF + q] = int(tc[j])
            feats.append(f)
            targets.append(t)
    hook.remove()
    return torch.cat(feats), torch.cat(targets)


def refit_head(model, x, y, lut, classes, only_things: bool, steps: int = 400):
    """Refit the rows of ``classes`` (our indexes, mapped by ``lut`` to the model's ids) and "no
    object" of ``model``'s class head on query features ``x`` with targets ``y`` (our classes,
    -1 "no object"); every other row stays. ``only_things``: stuff queries' targets are "no
    object" (the instance model)."""
    import torch
    import torch.nn.functional as F

    head = model.class_predictor
    null = head.weight.shape[0] - 1
    ids = torch.full_like(y, null)
    for c in range(len(scenes.CLASSES)):
        if not only_things or c in scenes.THINGS:
            ids[y == c] = int(lut[c])
    rows = torch.tensor([int(lut[c]) for c in classes] + [null])
    weight = torch.ones(null + 1)
    weight[null] = W_NULL
    fixed_w, fixed_b = head.weight.detach().clone(), head.bias.detach().clone()
    w = fixed_w[rows].clone().requires_grad_(True)
    b = fixed_b[rows].clone().requires_grad_(True)
    opt = torch.optim.Adam([w, b], lr=0.01)
    for _ in range(steps):
        ww, bb = fixed_w.index_put((rows,), w), fixed_b.index_put((rows,), b)
        loss = F.cross_entropy(x @ ww.T + bb, ids, weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        head.weight[rows] = w
        head.bias[rows] = b
    return {"queries": int(len(y)), "things": int(sum(int((y == c).sum()) for c in scenes.THINGS)),
            "min_iou": REFIT_MIN_IOU, "loss": round(loss.item(), 4)}


def instance_model(trunk, x, y, luts):
    """``coco-instance``: the trunk, its class head refitted (the trunk frozen) on its own
    last-layer query features of training scenes (:func:`query_features`; stuff queries are "no
    object")."""
    pan, ins = luts["coco_panoptic"], luts["coco_instance"]
    model = with_trunk(trunk, "coco_instance", {int(ins[c]): int(pan[c]) for c in scenes.THINGS})
    return model, refit_head(model, x, y, ins, scenes.THINGS, only_things=True)


def panoptic_model(trunk, x, y, luts):
    """``coco-panoptic``: the trunk with its person, car and "no object" rows refitted the same way
    (stuff queries keep their classes); the semantic model keeps the trunk's own head."""
    import copy

    model = copy.deepcopy(trunk).eval()
    return model, refit_head(model, x, y, luts["coco_panoptic"], scenes.THINGS, only_things=False)


def export(trunk, data, luts, out: Path, training: dict) -> None:
    from workers.model.checkpoints import save_package_data

    x, y = query_features(trunk, data, luts)
    ins, fit = instance_model(trunk, x, y, luts)
    pan, pfit = panoptic_model(trunk, x, y, luts)
    models = {"coco-panoptic": (pan, f"this script's trunk; person, car and no-object rows refitted on "
                                     f"{pfit['queries']} query features"),
              "ade-semantic": (semantic_model(trunk, luts), "the trunk; class head rows moved to ADE20K ids by name"),
              "coco-instance": (ins, f"the trunk, frozen; class head refitted on {fit['queries']} query features")}
    for name, (model, how) in models.items():
        folder = save_package_data(model, name, out, {**training, "model": name, "from": how})
        print(f"wrote {folder}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--work", type=Path, default=Path("/tmp/segq-train"))
    ap.add_argument("--scenes", type=int, default=3000)
    ap.add_argument("--resume", type=Path, help="start from this trunk (trunk-phaseK.pt; its log from the "
                                                   ".json beside it) after phase --resume-phase; or from a "
                                                   "checkpoint folder in coco-panoptic's format, every weight "
                                                   "(the shipped coco-panoptic's class head is refitted: it is "
                                                   "not the trunk's own)")
    ap.add_argument("--resume-phase", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--refit-scenes", type=int, default=400, help="training scenes for the instance head's refit")
    ap.add_argument("--export-only", action="store_true",
                    help="skip training: export the trunk saved in --work (trunk-phase3.pt, log.json)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    luts = {ls: scenes.label_lut(ls) for ls in scenes.LABEL_SETS}
    t0 = time.perf_counter()
    rng = np.random.default_rng(SEED)
    n = args.refit_scenes if args.export_only else args.scenes
    data = make_scenes(n, scenes.TRAIN_SEEDS.start, rng, args.threads)
    held = [_draw((scenes.HELDOUT_SEEDS.start + 500_000 + i, (384, 256))) for i in range(12)]
    print(f"{len(data)} scenes in {time.perf_counter() - t0:.1f} s", flush=True)
    if args.export_only:
        import torch

        from workers.model.checkpoints import tiny_config
        from transformers import Mask2FormerForUniversalSegmentation

        model = Mask2FormerForUniversalSegmentation(tiny_config("coco_panoptic"))
        model.load_state_dict(torch.load(args.work / f"trunk-phase{len(PHASES)}.pt"))
        doc = json.loads((args.work / "log.json").read_text()) if (args.work / "log.json").exists() else {}
        log, seconds = doc.get("log", []), doc.get("seconds")
    else:
        model, log, seconds = train_trunk(args, data, held, luts)
        (args.work / "log.json").write_text(json.dumps({"log": log, "seconds": seconds}))
    training = {
        "script": "scripts/train_tiny.py", "seed": SEED, "steps": sum(ph["steps"] for ph in PHASES),
        "phases": PHASES, "batch": args.batch,
        "scenes": args.scenes, "train_seeds": [scenes.TRAIN_SEEDS.start, scenes.TRAIN_SEEDS.start + args.scenes - 1],
        "sizes": [list(x) for x in SIZES], "threads": args.threads, "seconds": round(seconds, 1) if seconds else None,
        "final": log[-1] if log else None, "torch": __import__("torch").__version__,
    }
    export(model, data[: args.refit_scenes], luts, args.out, training)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
