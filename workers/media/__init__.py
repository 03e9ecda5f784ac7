"""Bytes in and out of a worker; no model, no torch at import (``render.overlay_tensor`` imports
torch when called).

- ``decode``  safe image decoding (limits before decoding, EXIF orientation, RGB)
- ``video``   PyAV: probe, plan chunks, decode exact frame ranges, encode parts, assemble
- ``render``  overlays, label maps, segments JSON, COCO panoptic PNG
- ``prediction``  what segmenting an image gives: label map, segments with area and box
- ``labels``  class names and palettes (ADE20K, COCO panoptic, COCO instance; ``data/*.json``)
"""
