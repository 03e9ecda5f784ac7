"""Synthetic Mask2Former outputs with the real shapes, for tests and benchmarks of post-processing.

Pure noise logits give almost no confident segment, so ``structured`` builds outputs that look
like a model's: the image is split into regions (a Voronoi layout at the mask resolution), each
region has one confident query whose mask logits are a blurred indicator of it (positive inside,
negative outside) with smooth noise, and the other queries predict the null class with weak
blobby masks. ``duplicates`` pairs of queries are exact copies (same class logits and masks), which
makes exact ties that the arg-max must break by index as transformers does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _smooth_noise(g: torch.Generator, n: int, size: int, cells: int) -> torch.Tensor:
    low = torch.randn(n, 1, cells, cells, generator=g)
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)[:, 0]


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = x[:, None]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return x[:, 0]


def structured(
    seed: int,
    num_classes: int,
    num_queries: int = 200,
    size: int = 96,
    regions: int = 30,
    duplicates: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(class_queries_logits (1, Q, C+1), masks_queries_logits (1, Q, size, size)), float32."""
    g = torch.Generator().manual_seed(seed)
    Q, C = num_queries, num_classes
    regions = min(regions, Q)
    # Voronoi layout
    seeds = torch.rand(regions, 2, generator=g) * size
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    d = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    layout = d.argmin(0)
    ind = (layout[None] == torch.arange(regions)[:, None, None]).float()
    masks = torch.empty(Q, size, size)
    region_q = torch.randperm(Q, generator=g)[:regions]
    masks[region_q] = 14.0 * (_blur(ind, 1.5) - 0.5) + 1.5 * _smooth_noise(g, regions, size, 8)
    others = torch.ones(Q, dtype=torch.bool)
    others[region_q] = False
    no = int(others.sum())
    masks[others] = 6.0 * _smooth_noise(g, no, size, 6) - 4.0
    cls = torch.randn(Q, C + 1, generator=g)
    cls[:, C] += 5.0  # most queries: no object
    labels = torch.randint(0, C, (regions,), generator=g)
    conf = 5.0 + 6.0 * torch.rand(regions, generator=g)
    cls[region_q, C] -= 8.0
    cls[region_q, labels] += conf
    # a few queries that are confident about a second class too, so the instance top-k picks
    # several (class, query) pairs of one query
    two = region_q[: max(1, regions // 6)]
    cls[two, (labels[: two.numel()] + 1) % C] += conf[: two.numel()]
    for i in range(min(duplicates, regions // 2)):
        a, b = int(region_q[2 * i]), int(region_q[2 * i + 1])
        lo, hi = min(a, b), max(a, b)
        masks[hi] = masks[lo]
        cls[hi] = cls[lo]
    return cls[None].contiguous(), masks[None].contiguous()


def noise(seed: int, num_classes: int, num_queries: int = 200, size: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain random logits (few confident segments, boundaries everywhere)."""
    g = torch.Generator().manual_seed(seed)
    cls = torch.randn(1, num_queries, num_classes + 1, generator=g) * 3
    masks = torch.randn(1, num_queries, size, size, generator=g) * 4
    return cls, masks


def pixel_noise(
    seed: int,
    num_classes: int,
    num_queries: int = 200,
    size: int | tuple[int, int] = 96,
    confident: int = 40,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise-like outputs that still keep segments: mask logits that vary at the source-pixel
    scale (i.i.d. per source pixel, like a random-weight model's: boundaries everywhere at the
    384 x 384 grid and at full size), and ``confident`` queries whose best class is confident
    enough (probability > 0.5) for instance and panoptic post-processing to keep them.
    ``size``: the mask grid, an int (square) or (height, width)."""
    g = torch.Generator().manual_seed(seed)
    h, w = (size, size) if isinstance(size, int) else size
    cls = torch.randn(1, num_queries, num_classes + 1, generator=g) * 3
    conf = torch.randperm(num_queries, generator=g)[: min(confident, num_queries)]
    best = torch.randint(0, num_classes, (conf.numel(),), generator=g)
    cls[0, conf, best] += 12.0
    masks = torch.randn(1, num_queries, h, w, generator=g) * 4
    return cls.contiguous(), masks.contiguous()
