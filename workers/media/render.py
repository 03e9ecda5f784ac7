"""Rendering and encoding of a prediction: overlay, label map, segments JSON, COCO panoptic.

The overlay has the article's look: the dataset palette, blended as
``cv2.addWeighted(image, 0.2, colors, 1.0, 0)``; pixels that no segment covers keep the photo.
Colours come from a lookup table indexed by the label map (``color_table``), one vectorised pass
per image (the article loops over every class).

Two implementations of the blend give the same bytes: ``overlay`` (numpy lookup +
``cv2.addWeighted``, the CPU path) and ``overlay_tensor`` (torch, on any device: a CUDA worker
blends there, beside the label map, and copies back only the uint8 overlay; see
``workers.model.segmenter.Segmenter.blend``). This module imports torch only inside
``overlay_tensor``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Callable

import cv2
import numpy as np

from segq import defaults, layout
from workers.media.prediction import Prediction, Segment
from workers.media.labels import LabelSet


def color_table(pred: Prediction, labels: LabelSet) -> tuple[np.ndarray, bool]:
    """RGB colour of every label-map value, and whether value 0 means "no segment"."""
    if pred.task == "semantic":
        k = max(len(labels), int(pred.label_map.max()) + 1)
        lut = np.zeros((k, 3), dtype=np.uint8)
        lut[: len(labels)] = labels.colors
        return lut, False
    k = max([s.id for s in pred.segments], default=0) + 1
    lut = np.zeros((k, 3), dtype=np.uint8)
    seen: dict[int, int] = {}
    for s in pred.segments:
        base = labels.colors[s.label_id % len(labels)].astype(np.int16)
        n = seen.get(s.label_id, 0)
        seen[s.label_id] = n + 1
        if n:  # later instances of a class: a deterministic nearby shade, so instances stay apart
            rng = np.random.default_rng(s.label_id * 1000 + n)
            base = base + rng.integers(-50, 51, size=3)
        lut[s.id] = np.clip(base, 0, 255).astype(np.uint8)
    return lut, True


#: Pixels blended per step by ``overlay`` (its temporaries are a few times this in bytes, not the
#: whole picture's: a 40 MP overlay in one step would hold half a gigabyte of them).
OVERLAY_BAND_PIXELS = 1 << 20


def overlay(image: np.ndarray, pred: Prediction, labels: LabelSet) -> np.ndarray:
    """RGB uint8 image (H, W, 3) with the segmentation blended over it, in bands of rows."""
    lut, zero_is_empty = color_table(pred, labels)
    h, w = pred.label_map.shape
    out = np.empty((h, w, 3), np.uint8)
    band = max(1, OVERLAY_BAND_PIXELS // max(w, 1))
    for r0 in range(0, h, band):
        rows = slice(r0, r0 + band)
        labels_ = pred.label_map[rows]
        colors = np.take(lut, labels_, axis=0)  # (several times faster than lut[label_map])
        cv2.addWeighted(image[rows], defaults.OVERLAY_IMAGE_WEIGHT, colors, defaults.OVERLAY_SEGMENT_WEIGHT, 0,
                        dst=out[rows])
        if zero_is_empty:  # the photo where no segment is: a masked copy (faster than boolean indexing)
            cv2.copyTo(image[rows], (labels_ == 0).view(np.uint8), out[rows])
    return out


def blend_weights() -> tuple[float, float, float]:
    """(alpha, beta, gamma) of the overlay blend as the float32 values ``cv2.addWeighted`` uses on
    8-bit images (it converts its double arguments to float), as Python floats."""
    return tuple(float(np.float32(w)) for w in
                 (defaults.OVERLAY_IMAGE_WEIGHT, defaults.OVERLAY_SEGMENT_WEIGHT, 0.0))  # type: ignore[return-value]


def overlay_tensor(image, label_map, lut, zero_is_empty: bool):
    """``overlay`` in torch, on the tensors' device: the same bytes as the CPU path.

    ``image``: RGB uint8 (H, W, 3); ``label_map``: integer (H, W) (int32 or int64), values below
    ``len(lut)``; ``lut``: uint8 (K, 3), ``color_table``'s; ``zero_is_empty``: pixels with
    label 0 keep the photo (instance, panoptic). All on one device. Returns uint8 (H, W, 3).

    Exactness. On 8-bit images OpenCV (4.x and 5.x, ``arithm.simd.hpp``) converts the weights to
    float32 and computes, per channel, ``fma(a, alpha, fma(b, beta, gamma))`` in float32 (a fused
    multiply-add, one rounding each, where the CPU has FMA; a multiply and an add without it, and
    in the scalar tail of a row when the compiler does not contract), then rounds half to even
    and saturates to 0..255. Here each FMA is done in float64 and rounded once to float32: the
    product of a uint8 and a float32 is exact in float64, and so is the sum for weights of
    ordinary magnitude (segq's: 0.2, 1.0, 0), so the float32 result is the FMA's. The inner
    ``fma(b, beta, gamma)`` depends only on the colour and is computed once per table entry.
    With segq's weights the result is bit-identical to ``cv2.addWeighted`` for all 256 x 256
    (image, colour) value pairs, and with or without FMA (a*0.2 + b is never within float error
    of a .5 tie): ``tests/compute/test_device_blend.py`` checks every pair and whole frames.
    (For arbitrary weights OpenCV's own scalar tail and its vector path can differ by 1 on rare
    ties; this function follows the vector path.)
    """
    import torch

    alpha, beta, gamma = blend_weights()
    inner = (lut.to(torch.float64) * beta + gamma).to(torch.float32).to(torch.float64)  # (K, 3)
    h, w = label_map.shape
    colors = inner.index_select(0, label_map.reshape(-1)).view(h, w, 3)
    blended = image.to(torch.float64).mul_(alpha).add_(colors).to(torch.float32)
    del colors
    out = blended.round_().clamp_(0, 255).to(torch.uint8)
    if zero_is_empty:
        out = torch.where((label_map == 0).unsqueeze(-1), image, out)
    return out


def label_map_dtype(max_value: int) -> np.dtype:
    """8-bit PNG when every possible id fits, else 16-bit (the same for every job of a model)."""
    return np.dtype(np.uint8) if max_value <= 255 else np.dtype(np.uint16)


def encode_png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def encode_jpeg(rgb: np.ndarray, quality: int = defaults.OVERLAY_JPEG_QUALITY) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def label_map_png(pred: Prediction, max_value: int) -> bytes:
    return encode_png(pred.label_map.astype(label_map_dtype(max_value)))


def segment_entry(s: Segment, task: str, labels: LabelSet) -> dict:
    """One segment as ``segments.json`` and the video label archives list it."""
    entry = asdict(s)
    entry["bbox"] = list(s.bbox)
    entry["label"] = labels.name_of(s.label_id)
    if task == "semantic":
        entry.pop("was_fused")
    if labels.isthing is not None and s.label_id < len(labels):
        entry["isthing"] = labels.isthing[s.label_id]
    return entry


def segments_document(pred: Prediction, labels: LabelSet, *, job_id: str, model: str, checkpoint: str, max_value: int,
                      processor: str = "", postprocess: str = "") -> dict:
    h, w = pred.label_map.shape
    encoding = (
        "class id of each pixel"
        if pred.task == "semantic"
        else "segment id of each pixel; 0 = no segment; see segments[].id"
    )
    segments = [segment_entry(s, pred.task, labels) for s in pred.segments]
    return {
        "job_id": job_id,
        "task": pred.task,
        "model": model,
        "checkpoint": checkpoint,
        "processor": processor,
        "postprocess": postprocess,
        "label_set": labels.name,
        "width": w,
        "height": h,
        "label_map": {
            "file": layout.LABELS,
            "encoding": encoding,
            "dtype": label_map_dtype(max_value).name,
        },
        "segments": segments,
    }


def coco_panoptic_json(pred: Prediction, labels: LabelSet, *, job_id: str) -> dict:
    """The COCO panoptic annotation JSON of ``coco_panoptic``'s PNG."""
    h, w = pred.label_map.shape
    segments_info = [
        {
            "id": s.id,
            "category_id": labels.category_id(s.label_id),
            "iscrowd": 0,
            "bbox": list(s.bbox),
            "area": s.area,
            "score": s.score,
        }
        for s in pred.segments
        if s.area > 0
    ]
    categories = [
        {
            "id": labels.category_id(i),
            "name": name,
            "isthing": int(labels.isthing[i]) if labels.isthing is not None else 1,
            "color": labels.colors[i].tolist(),
        }
        for i, name in enumerate(labels.names)
    ]
    return {
        "images": [{"id": job_id, "width": w, "height": h, "file_name": "input"}],
        "annotations": [{"image_id": job_id, "file_name": layout.PANOPTIC_PNG, "segments_info": segments_info}],
        "categories": categories,
    }


def coco_panoptic_png(pred: Prediction) -> bytes:
    """The COCO panoptic PNG of a panoptic map: RGB with id = R + 256 G + 256^2 B."""
    h, w = pred.label_map.shape
    # The little-endian bytes of a (non-negative, < 2^24) id are R, G, B (and a zero): the map's
    # bytes are an RGBA image, which OpenCV turns into its B, G, R order in one vectorised pass
    # (a strided numpy copy of the same bytes took 50 times as long at 1080p).
    ids = np.ascontiguousarray(pred.label_map.astype("<u4", copy=False))
    return encode_png(cv2.cvtColor(ids.view(np.uint8).reshape(h, w, 4), cv2.COLOR_RGBA2BGR))


def coco_panoptic(pred: Prediction, labels: LabelSet, *, job_id: str) -> tuple[bytes, dict]:
    """COCO panoptic format: RGB PNG with id = R + 256 G + 256^2 B, and its annotation JSON."""
    return coco_panoptic_png(pred), coco_panoptic_json(pred, labels, job_id=job_id)


def output_parts(
    image: np.ndarray, pred: Prediction, labels: LabelSet, *, job_id: str, model: str, checkpoint: str, max_value: int,
    processor: str = "", postprocess: str = "",
) -> dict[str, tuple[Callable[[], bytes], str]]:
    """Every output file of an image job, not yet encoded: name -> (a function that returns its
    bytes, content type). Each function is independent of the others (OpenCV's encoders release
    the GIL), so a caller may run them in threads. The overlay is ``pred.overlay`` when it was
    blended on the device (``workers.model.segmenter.Segmenter.blend``), else ``overlay`` makes it."""

    def overlay_jpeg() -> bytes:
        return encode_jpeg(pred.overlay if pred.overlay is not None else overlay(image, pred, labels))

    def segments_json() -> bytes:
        doc = segments_document(pred, labels, job_id=job_id, model=model, checkpoint=checkpoint, max_value=max_value,
                                processor=processor, postprocess=postprocess)
        return json.dumps(doc, indent=1).encode()

    parts: dict[str, tuple[Callable[[], bytes], str]] = {
        layout.OVERLAY: (overlay_jpeg, "image/jpeg"),
        layout.LABELS: (lambda: label_map_png(pred, max_value), "image/png"),
        layout.SEGMENTS: (segments_json, "application/json"),
    }
    if pred.task == "panoptic":
        parts[layout.PANOPTIC_PNG] = (lambda: coco_panoptic_png(pred), "image/png")
        parts[layout.PANOPTIC_JSON] = (lambda: json.dumps(coco_panoptic_json(pred, labels, job_id=job_id),
                                                          indent=1).encode(), "application/json")
    return parts


def image_outputs(
    image: np.ndarray, pred: Prediction, labels: LabelSet, *, job_id: str, model: str, checkpoint: str, max_value: int,
    processor: str = "", postprocess: str = "",
) -> dict[str, tuple[bytes, str]]:
    """Every output file of an image job, encoded one after another: name -> (bytes, content
    type) (``output_parts``)."""
    parts = output_parts(image, pred, labels, job_id=job_id, model=model, checkpoint=checkpoint, max_value=max_value,
                         processor=processor, postprocess=postprocess)
    return {name: (make(), content_type) for name, (make, content_type) in parts.items()}
