"""Fast post-processing of Mask2Former outputs, equivalent to transformers' own.

``semantic``, ``instance`` and ``panoptic`` reproduce, for ONE image, what
``Mask2FormerImageProcessor.post_process_{semantic,instance,panoptic}_segmentation`` return with
``target_sizes=[(H, W)]`` (same dtypes, same segment ids, same ``segments_info``), without ever
building a (classes or queries) x H x W tensor. They run on the device of their inputs.

What transformers computes (transformers 5.x, ``image_processing_mask2former.py``):

- every task first resizes the mask logits (Q, h, w) to 384 x 384 (bilinear, align_corners=False);
- semantic: S = einsum(softmax(class)[:, :-1], sigmoid(mask384)) (C, 384, 384), resized bilinearly
  to (H, W), arg-max over classes (first index on ties);
- instance: top-Q (``sorted=False``) of the (Q*C) class probabilities; per entry the binary mask
  ``mask384 > 0``, the score class-prob x mean sigmoid inside the mask; masks resized to (H, W)
  with *nearest*; entries are painted in top-k order (later ones overwrite) into a float32 map
  initialised to -1 when ``score >= threshold`` and the resized mask is not empty; ids 0, 1, 2...;
- panoptic: queries whose best class (null included) is not null and whose probability is
  ``> threshold``; their sigmoid masks (384 x 384) resized bilinearly to (H, W), times the score;
  arg-max over queries; a query becomes a segment when its arg-max area is > 0 and the ratio of
  that area to its own area ``prob x score >= mask_threshold`` is > ``overlap``; ids count up from
  1, a fused (stuff) class reuses its first id *and resets the counter to it* (so later ids can
  repeat earlier ones, a transformers quirk kept here); an int32 map, 0 where nothing won; with no
  query kept at all, a float32 map of -1.

How it avoids the full-resolution tensors (and most of the work):

- the 384 x 384 grid. Model-like outputs (regions): semantic does not compute the class
  scores everywhere (the product alone, 150 classes x 200 queries x 384^2, costs more than the
  rest): a resized mask logit lies between the four source values around it, the sigmoid is
  increasing and class probabilities are >= 0, so inside one source cell every class's score
  lies between the class-query products of the sigmoid of the smallest and of the largest
  corner (two small matrix products on the source grid). Where one class's lower bound beats
  every other's upper bound (with a 1e-4 margin), that class wins at every grid point of the
  cell (``settled_cells``); exact scores are computed only at the corners of the 384-cells that
  this does not settle (``_decided_grid``). Panoptic's arg-max over the kept queries'
  ``score x sigmoid(mask)`` is settled the same way, and its thresholded areas are bounded from
  source windows (``_window_counts``): a pixel's value lies between the extremes of the
  2-3 x 2-3 source values its grid corners draw on.
  Noise-like outputs (mask logits that vary at the source-pixel scale, as a random-weight
  model's: those bounds settle almost nothing; decided first on a sample of one source cell in
  9, where over 35 % unsettled means dense), and source grids larger than a quarter of the
  384 grid: the grid is computed in bands of 32 rows (the "dense" path): the mask logits
  resized in two passes, channels-last (``_SeparableGrid``, where ``_separable_exact``
  confirms torch's order for the shape: about twice as fast as ``F.interpolate``, and no full
  384 x 384 plane per query; else ``F.interpolate``'s rows), the sigmoid, and for
  semantic the class x query product per band (classes x queries by the band's queries x
  points, read from the channels-last band; one product for the whole grid at once was about
  2.5x slower here);
- full size, both paths (``resized_argmax``): a bilinear value is a convex combination of its
  cell's four corners, and the difference of two bilinear interpolants is the interpolant of the
  differences, so where the same channel wins at the four corners of a grid cell it wins at
  every pixel of the cell: those pixels are filled by indexing. In the other cells
  (``_candidates``) a channel can win at a pixel only if, for every corner's winner, it reaches
  that winner's value (within a relative margin 1e-5) at some corner; a superset is found with
  one vectorised comparison per band (each grid point against the smallest threshold that the
  cells around it set), then the exact test per (cell, channel) pair. Only those pairs are
  evaluated, at the pixels of their cell (``_eval_blocks``: pixel blocks of up to kr x kc, 3 x 5
  at 1080p; an edge cell, which also holds the pixels whose source index is clamped, has two),
  and the best per pixel taken with (value bits, channel) integer keys (``_segment_max``).
  With pixel-scale boundaries about half the cells need this, with 2-4 candidates each;
- thresholded areas (panoptic ``original_area``) on the dense path: cells whose corners are all
  clearly above the threshold are counted whole, the pixels of cells that straddle it give
  bounds; on either path the areas are counted exactly (``count_above``, in a second pass, for
  those queries only) when the overlap-ratio decision differs between the bounds;
- instance needs no bilinear step at full size: nearest resizing is a gather, so masks are
  resized to the 384 grid a few queries at a time (never 1 or 3 at once, see below), their
  scores computed as transformers does, painted on the 384 grid (the largest id covering a
  point is the last painted) and the result gathered once.

Exactness. On the CPU (torch 2.13), the 384 x 384 intermediates are bit-identical to
transformers': the mask logits come from crops of the same ``F.interpolate`` or from
``_SeparableGrid``, whose two passes are torch's own order (each ``fma(a, w0, b * w1)``,
along rows then across; used only after ``_separable_exact`` checked it for the shape), the
class x query product (per band, and at the sparse path's exact points) matched einsum bit for
bit with 1 and 2 threads (another BLAS could sum in another order). The pixel evaluator uses
torch's weights (same source indices and lambdas, the source index computed with a fused
multiply-add as torch's kernel does) and its order for upscaling, checked bit for bit; torch
computes 3 channels, and downscaling, in other orders (an ulp apart at most). So a decision can
only differ where the reference's own decision is a float near-tie (see
``workers/equivalence.py``), and on the CPU, upscaling, it does not differ at all in practice.
On CUDA the same code runs with torch's own resizes and products (TF32 kept out of them, see
``_matmul``): differences at near-ties only.
"""

from __future__ import annotations

import bisect

import torch
import torch.nn.functional as F

GRID = 384  # transformers resizes mask logits to this size before anything else
EPS = 1e-5  # relative margin under which a cell is evaluated pixel by pixel
BAND = 32  # grid rows per band


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with float32 accuracy on any device. On CUDA the worker lets its model's float32
    matrix products use TF32 (``workers.device``: 10-bit mantissas, relative errors near 1e-3), a
    process-wide setting that would also reach these products, where the bounds' 1e-4 margin and
    the near-tie tolerance need float32's own accuracy; so on CUDA they run in float64 and are
    rounded to float32 (at most an ulp from a float32 product, which matters only at a near-tie).
    On the CPU (no TF32) the plain product."""
    if a.is_cuda:
        return (a.double() @ b.double()).float()
    return a @ b


# ---------------------------------------------------------------------------------------------
# Bilinear geometry (torch's align_corners=False source indices and weights)


def axis_weights(n_in: int, n_out: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per output index: the two source indices and their weights, as ``F.interpolate`` computes
    them (scale = float32(in) / out; src = max(scale * (dst + 0.5) - 0.5, 0), fused multiply-add)."""
    if n_in == n_out:
        i = torch.arange(n_out, device=device)
        return i, i, torch.ones(n_out, device=device), torch.zeros(n_out, device=device)
    scale = torch.tensor(n_in, dtype=torch.float32) / n_out
    d = torch.arange(n_out, dtype=torch.float32) + 0.5
    src = (scale.double() * d.double() - 0.5).float()  # exact product, one rounding: an FMA
    src = torch.where(src < 0, torch.zeros_like(src), src)
    i0 = torch.clamp(torch.floor(src).long(), max=n_in - 1)
    l1 = torch.clamp(src - i0.float(), 0, 1)
    i1 = i0 + (i0 < n_in - 1).long()
    l0 = 1.0 - l1
    return i0.to(device), i1.to(device), l0.to(device), l1.to(device)


def nearest_index(n_in: int, n_out: int, device) -> torch.Tensor:
    """Source index of every output index of ``F.interpolate(mode="nearest")``, from torch itself."""
    ramp = torch.arange(n_in, dtype=torch.float32, device=device).view(1, 1, n_in, 1)
    return F.interpolate(ramp, size=(n_out, 1), mode="nearest")[0, 0, :, 0].long()


def grid_rows(logits: torch.Tensor, r0: int, r1: int, size: int = GRID) -> torch.Tensor:
    """Rows [r0, r1) of ``F.interpolate(logits[None], (size, size), bilinear)[0]``, bit-identical.

    With a power-of-two ratio, a crop of the input resized by the same ratio computes the same
    source indices and weights for its inner rows; otherwise the full plane (see ``grid_source``)."""
    n, h, w = logits.shape
    ratio = size // h
    if size % h or ratio < 2 or ratio & (ratio - 1):
        # only a power-of-two ratio gives exact (dyadic) source indices that a crop reproduces
        return F.interpolate(logits[None], size=(size, size), mode="bilinear", align_corners=False)[0, :, r0:r1]
    # output rows whose source index is clamped at a crop edge differ from the full resize:
    # the first and last ratio // 2 of the crop (unless the crop reaches the input's edge)
    half = ratio // 2
    a = max(0, (r0 - half) // ratio)
    b = min(h, -((-(r1 + half)) // ratio))
    out = F.interpolate(logits[None, :, a:b], size=((b - a) * ratio, size), mode="bilinear", align_corners=False)[0]
    return out[:, r0 - a * ratio : r1 - a * ratio]


def grid_source(logits: torch.Tensor):
    """``rows(r0, r1)`` -> rows of the 384 x 384 resize of ``logits``: by crops when the ratio
    allows it, else from one full resize computed once."""
    h = logits.shape[1]
    ratio = GRID // h
    if GRID % h == 0 and ratio >= 2 and not ratio & (ratio - 1):
        return lambda r0, r1: grid_rows(logits, r0, r1)
    full = F.interpolate(logits[None], size=(GRID, GRID), mode="bilinear", align_corners=False)[0]
    return lambda r0, r1: full[:, r0:r1].clone()


class _SeparableGrid:
    """Rows of the 384 x 384 bilinear resize of ``logits`` (Q, h, w), channels-last: (rows, 384, Q).

    Torch's CPU kernel upscales (for any channel count but 3) in two passes, along rows then
    across them, each ``fma(a, w0, b * w1)`` (found by trying the orders; ``_separable_exact``
    checks it for each shape before use): the pass along rows is done once for the source
    (h, 384, Q), the other per band. Channels-last rows are what the class x query product
    reads fastest, and about twice as fast to build as ``F.interpolate``'s channels-first ones."""

    def __init__(self, logits: torch.Tensor):
        q, h, w = logits.shape
        device = logits.device
        self.ry0, self.ry1, self.ryl0, self.ryl1 = axis_weights(h, GRID, device)
        cx0, cx1, cxl0, cxl1 = axis_weights(w, GRID, device)
        x = logits.permute(1, 2, 0).contiguous()  # (h, w, Q)
        self.t = x.index_select(1, cx1).mul_(cxl1[None, :, None]).addcmul_(x.index_select(1, cx0), cxl0[None, :, None])

    def __call__(self, r0: int, r1: int) -> torch.Tensor:
        w1 = self.ryl1[r0:r1, None, None]
        w0 = self.ryl0[r0:r1, None, None]
        return self.t.index_select(0, self.ry1[r0:r1]).mul_(w1).addcmul_(self.t.index_select(0, self.ry0[r0:r1]), w0)


_SEPARABLE_EXACT: dict = {}


def _separable_exact(q: int, h: int, w: int, device) -> bool:
    """Whether ``_SeparableGrid`` reproduces ``F.interpolate`` bit for bit for logits of this shape
    on this device: checked once per shape, on random logits (with at most 16 channels: the
    kernel's order depends on whether there are 3 channels, not on how many more)."""
    if torch.device(device).type != "cpu" or h > GRID or w > GRID:
        return False
    key = (q if q < 16 else 16, h, w)
    if key not in _SEPARABLE_EXACT:
        x = 8 * torch.randn(key, generator=torch.Generator().manual_seed(0))
        ref = F.interpolate(x[None], size=(GRID, GRID), mode="bilinear", align_corners=False)[0]
        _SEPARABLE_EXACT[key] = torch.equal(_SeparableGrid(x)(0, GRID).permute(2, 0, 1), ref)
    return _SEPARABLE_EXACT[key]


def grid_source_cl(logits: torch.Tensor):
    """``rows(r0, r1)`` -> rows [r0, r1) of the 384 x 384 resize of ``logits`` (Q, h, w),
    channels-last (rows, 384, Q), bit-identical to ``F.interpolate``'s."""
    if _separable_exact(*logits.shape, logits.device):
        return _SeparableGrid(logits)
    rows = grid_source(logits)
    return lambda r0, r1: rows(r0, r1).permute(1, 2, 0)


class _Blocks:
    """One axis of a (grid -> target) resize cut into pixel blocks: cell ``i`` holds the pixels
    ``start[i] .. start[i] + count[i] - 1`` (those whose first source index is ``i``), split into
    blocks of at most ``k`` pixels (``k``: the most any inner cell holds; an edge cell, which also
    holds the pixels whose source index is clamped, may need two). Cell ``i``'s blocks are
    ``first[i] .. first[i] + nblocks[i] - 1``; block ``b``'s pixels are ``p[b]`` (``valid`` where
    real), with weights ``w0t``/``w1t`` (k, blocks; 0 on padding) and flat offsets ``off``
    (blocks, k: pixel x ``stride``, or ``dump`` on padding)."""

    def __init__(self, count: torch.Tensor, start: torch.Tensor, l0: torch.Tensor, l1: torch.Tensor, stride: int, dump: int):
        device = count.device
        n = count.numel()
        inner = count[1:-1] if n > 2 else count
        k = max(int(inner.max()) if inner.numel() else 1, 1)
        self.k = k
        self.nblocks = (count + k - 1) // k
        self.first = torch.cumsum(self.nblocks, 0) - self.nblocks
        self.cell = torch.repeat_interleave(torch.arange(n, device=device), self.nblocks)  # (blocks,)
        q = torch.arange(self.cell.numel(), device=device) - self.first[self.cell]
        pstart = start[self.cell] + q * k
        pcount = torch.clamp(count[self.cell] - q * k, max=k)
        r = torch.arange(k, device=device)
        self.valid = r[None, :] < pcount[:, None]
        self.p = torch.where(self.valid, pstart[:, None] + r[None, :], torch.zeros_like(pstart)[:, None])
        zero = torch.zeros((), device=device)
        self.w0t = torch.where(self.valid, l0[self.p], zero).t().contiguous()
        self.w1t = torch.where(self.valid, l1[self.p], zero).t().contiguous()
        self.off = torch.where(self.valid, self.p * stride, torch.full_like(self.p, dump))


class _Geometry:
    """Row and column maps from output pixels to grid cells for one (grid, target) pair, and the
    pixel blocks of the cells (``rows``, ``cols``: ``_Blocks``)."""

    def __init__(self, gh: int, gw: int, H: int, W: int, device):
        self.gh, self.gw, self.H, self.W = gh, gw, H, W
        self.y0, self.y1, self.yl0, self.yl1 = axis_weights(gh, H, device)
        self.x0, self.x1, self.xl0, self.xl1 = axis_weights(gw, W, device)
        # output rows/cols per cell row/col, and where they start (the maps are non-decreasing)
        self.rc = torch.bincount(self.y0, minlength=gh)
        self.cc = torch.bincount(self.x0, minlength=gw)
        self.ys = torch.cumsum(self.rc, 0) - self.rc
        self.xs = torch.cumsum(self.cc, 0) - self.cc
        self.xnext = torch.clamp(torch.arange(gw, device=device) + 1, max=gw - 1)
        self.cellpx = (self.rc[:, None] * self.cc[None, :]).float()  # pixels per cell (< 2^24)
        self.rows = _Blocks(self.rc, self.ys, self.yl0, self.yl1, W, H * W)
        self.cols = _Blocks(self.cc, self.xs, self.xl0, self.xl1, 1, H * W)


def _rows(v: torch.Tensor, ncell: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top and bottom corner rows (dim -2) of the cells whose top row is 0..ncell-1 of band ``v``."""
    top = v[..., :ncell, :]
    if v.shape[-2] > ncell:
        return top, v[..., 1 : ncell + 1, :]
    return top, torch.cat([v[..., 1:ncell, :], v[..., ncell - 1 : ncell, :]], -2)


def _shift(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` shifted by one towards index 0 along ``dim``, the last slice repeated."""
    n = x.shape[dim]
    return torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim) if n > 1 else x


def _corner_points(ci: torch.Tensor, cj: torch.Tensor, rows: int, geo: _Geometry) -> torch.Tensor:
    """(u, 4) point indices into a band of ``rows`` x gw grid points of the corners of cells
    (ci, cj) (band-local rows): top-left, top-right, bottom-left, bottom-right."""
    gw = geo.gw
    ci1 = torch.clamp(ci + 1, max=rows - 1)
    cj1 = geo.xnext[cj]
    return torch.stack([ci * gw + cj, ci * gw + cj1, ci1 * gw + cj, ci1 * gw + cj1], -1)


def _nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Flat indices (ascending) of the true elements of a bool tensor; on the CPU a sparse mask is
    scanned eight bytes at a time (``nonzero`` costs a few ns per element there)."""
    flat = mask.reshape(-1)
    if flat.device.type != "cpu" or flat.numel() < 4096:
        return flat.nonzero()[:, 0]
    pad = (-flat.numel()) % 8
    if pad or flat.storage_offset() % 8:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    words = flat.view(torch.uint8).view(torch.int64).nonzero()[:, 0]
    hit = flat.view(-1, 8).index_select(0, words).nonzero()
    return words[hit[:, 0]] * 8 + hit[:, 1]


def _expand(cell: torch.Tensor, ci: torch.Tensor, cj: torch.Tensor, geo: _Geometry):
    """Per item of cells ``cell`` (indices into (ci, cj), global cell rows and columns), one item
    per pixel block of its cell: (item index, block row, block column, block rank in the cell,
    blocks of the cell), items in order and each item's blocks together."""
    rb, cb = geo.rows, geo.cols
    ncb = cb.nblocks[cj[cell]]
    nb = rb.nblocks[ci[cell]] * ncb
    if bool((nb == 1).all()):
        one = torch.zeros_like(cell)
        return torch.arange(cell.numel(), device=cell.device), rb.first[ci[cell]], cb.first[cj[cell]], one, nb
    item = torch.repeat_interleave(torch.arange(cell.numel(), device=cell.device), nb)
    k = torch.arange(item.numel(), device=cell.device) - (torch.cumsum(nb, 0) - nb)[item]
    c = cell[item]
    return item, rb.first[ci[c]] + k // ncb[item], cb.first[cj[c]] + k % ncb[item], k, nb[item]


def _eval_blocks(geo: _Geometry, vi: torch.Tensor, vj: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """Bilinear values (kr * kc, P) at the pixels of blocks (vi, vj) (pixel-major: pair p's block
    is column p) of channels whose cell corner values are ``corners`` (P, 4: top-left,
    top-right, bottom-left, bottom-right), in the order of torch's CPU kernel for upscaling
    (``F.interpolate`` bilinear, float32, more or fewer than 3 channels; checked bit for bit,
    see ``_separable_exact``): along the row first, ``fma(a, wx0, b * wx1)``, then across rows,
    ``fma(top, wy0, bottom * wy1)``. (Torch computes other cases in other orders: an ulp
    apart at most.) Padding pixels get weight 0."""
    rb, cb = geo.rows, geo.cols
    wy0, wy1 = rb.w0t.index_select(1, vi)[:, None], rb.w1t.index_select(1, vi)[:, None]  # (kr, 1, P)
    wx0, wx1 = cb.w0t.index_select(1, vj), cb.w1t.index_select(1, vj)  # (kc, P)
    a, b, c, d = corners.t().contiguous()
    top = (wx1 * b).addcmul_(wx0, a)
    bot = (wx1 * d).addcmul_(wx0, c)
    val = (wy1 * bot).addcmul_(wy0, top)  # (kr, kc, P)
    return val.view(rb.k * cb.k, -1)


def _argmax0(v: torch.Tensor) -> torch.Tensor:
    """``v.max(0).indices`` (first index on ties) of a non-negative float32 ``v`` (n, ...).

    On the CPU, with at most 256 channels, about a third faster: the low 8 bits of every value
    are replaced by 255 - channel, so that one integer ``amax`` (the bits of non-negative floats
    order as their values) finds the largest value up to those bits and, among those equal,
    the first channel; it is that channel unless a value equal up to 8 bits exceeds it (checked
    against the exact maximum; those points are redone with ``max``)."""
    n = v.shape[0]
    if v.device.type != "cpu" or n > 256 or v.dtype != torch.float32:
        return v.max(0).indices  # (max(0) is faster than argmax on CPU; first index on ties too)
    low = (255 - torch.arange(n, dtype=torch.int32, device=v.device)).view((n,) + (1,) * (v.dim() - 1))
    key = v.view(torch.int32) & 0x7FFFFF00  # (the sign bit, of a -0.0, cleared)
    key |= low
    idx = (255 - (key.amax(0) & 255)).long()
    del key
    miss = v.gather(0, idx[None])[0] != v.amax(0)
    if bool(miss.any()):
        flat = idx.view(-1)
        pts = miss.view(-1).nonzero()[:, 0]
        flat[pts] = v.reshape(n, -1).index_select(1, pts).max(0).indices
    return idx


#: (candidate, block) pairs x pixels per block evaluated at once
PAIR_PIXELS = 1 << 19


def resized_argmax(
    band_fn,
    n: int,
    geo: _Geometry,
    scale: torch.Tensor | None = None,
    threshold: float | None = None,
    out_dtype=torch.int64,
    band: int = BAND,
    index_fn=None,
):
    """Arg-max over ``n`` channels of ``F.interpolate(G, (H, W), bilinear) * scale`` at every
    pixel (first index on ties), where ``band_fn(r0, r1)`` returns rows [r0, r1) of G (n, gh, gw).

    Where the same channel wins at the four corners of a grid cell it wins at every pixel of the
    cell (a difference of two bilinear interpolants is the interpolant of the corner
    differences): those pixels are filled by indexing. In the other cells only a few candidate
    channels are evaluated at the pixels (``_candidates``; ``_Pending`` takes the best).

    With ``threshold``, also bounds on the number of pixels of each channel whose value is
    >= threshold: the pixels of cells clearly above it, and those of cells that straddle it
    (``count_above`` counts those exactly, for the channels where it matters).
    ``index_fn(r0, r1)``, if given, returns the arg-max over channels of rows [r0, r1) of G
    (the caller knows it): G then needs exact values only at the corners of cells whose four
    corners do not share one arg-max.
    Returns (argmax map (H, W), (sure, unsure) (n,) int64 each or None, pixels evaluated)."""
    gh, gw, H, W = geo.gh, geo.gw, geo.H, geo.W
    device = geo.y0.device
    flat = torch.empty(H * W + 1, dtype=out_dtype, device=device)  # the last element: padding's writes
    out = flat[: H * W].view(H, W)
    sure = torch.zeros(n, dtype=torch.float64, device=device)
    unsure = torch.zeros(n, dtype=torch.float64, device=device)
    pending = _Pending(flat, geo)
    for i0 in range(0, gh, band):
        i1 = min(gh, i0 + band)
        ncell = i1 - i0
        g = band_fn(i0, min(gh, i1 + 1)).contiguous()  # (n, rows, gw)
        v = g * scale.view(-1, 1, 1) if scale is not None else g
        ya, yb = int(geo.ys[i0]), int(geo.ys[i1 - 1] + geo.rc[i1 - 1])
        if threshold is not None:
            _count_bounds(v, ncell, i0, geo, threshold, sure, unsure)
        if yb <= ya:
            continue
        if n == 1:
            out[ya:yb] = 0
            continue
        idx = index_fn(i0, min(gh, i1 + 1)) if index_fn is not None else _argmax0(v)  # (rows, gw)
        it, ib = _rows(idx, ncell)
        vert = it == ib  # the left corners agree
        pure = vert & _shift(vert, 1) & (it == _shift(it, 1))
        out[ya:yb] = it.to(out_dtype).index_select(1, geo.x0).index_select(0, geo.y0[ya:yb] - i0)
        found = _candidates(v, idx, ~pure, i0, i1, geo)
        if found is not None:
            blocks, bcount, ch, pv = found
            pv = (g if scale is not None else v).reshape(-1).take(pv)  # unscaled: torch scales after resizing
            pending.add(blocks, bcount, ch, pv, scale)
    pending.flush()
    bounds = (sure.long(), unsure.long()) if threshold is not None else None
    return out, bounds, pending.evaluated


def _candidates(v, idx, bad, i0: int, i1: int, geo: _Geometry):
    """The candidate channels of the pixel blocks of the cells ``bad`` (i1 - i0, gw) of band ``v``
    (n, rows, gw), whose corners' arg-max channels ``idx`` (rows, gw) differ, or None if there
    are no such cells: ((blocks (row, column) ids, candidates per block, candidate channels,
    flat indices into the band of their four corner values (P, 4)), the candidates of a block
    together, in ascending channel order.

    A channel c can win at a pixel of a cell only if, for every corner winner w, c's value
    reaches w's (within a relative margin ``EPS``) at some corner: else w beats it at every pixel
    (by more than any rounding). First a superset, with one vectorised comparison of the band:
    at every grid point, the channels reaching the smallest of the thresholds that the cells
    around it set there (each cell: the values of its corner winner with the best smallest
    corner); a cell's channels are those that reach at one of its corners. Then the exact test
    per (cell, channel) pair."""
    n, rows, gw = v.shape
    ncell = i1 - i0
    npt = rows * gw
    dev = v.device
    bad = bad & (geo.rc[i0:i1, None] > 0) & (geo.cc[None, :] > 0)
    cell = _nonzero(bad)
    u = cell.numel()
    if not u:
        return None
    ci, cj = cell // gw, cell % gw
    corners = _corner_points(ci, cj, rows, geo)  # (u, 4) band points
    winners = idx.reshape(-1)[corners]  # (u, 4): each corner's arg-max
    vf = v.reshape(-1)
    wv = vf.take(winners[:, None, :] * npt + corners[:, :, None])  # (u, corner, winner)
    ref = wv.gather(2, wv.amin(1).argmax(1)[:, None, None].expand(u, 4, 1))[:, :, 0]
    ref = ref * (1 - EPS) - 1e-30  # (u, 4): a candidate reaches it at some corner
    # per grid point, the smallest threshold of the cells around it (cell j's right corner is
    # column j + 1, the last column's itself; likewise rows)
    inf = float("inf")
    tp = torch.full((rows, gw), inf, device=dev)
    m = min(ncell, rows - 1)  # cells whose bottom corners are the next row
    for k in range(4):
        t = torch.full((ncell, gw), inf, device=dev)
        t[ci, cj] = ref[:, k]
        if k % 2:  # right corners
            r = torch.full_like(t, inf)
            r[:, 1:] = t[:, :-1]
            r[:, -1] = torch.minimum(r[:, -1], t[:, -1])
            t = r
        if k < 2:
            torch.minimum(tp[:ncell], t, out=tp[:ncell])
        else:
            torch.minimum(tp[1 : m + 1], t[:m], out=tp[1 : m + 1])
            if m < ncell:
                torch.minimum(tp[rows - 1], t[ncell - 1], out=tp[rows - 1])
    X = ncell * gw
    if 16 * u < X:
        # few such cells (model-like outputs): every channel's values at their corners
        r = v.reshape(n, npt).index_select(1, corners.reshape(-1)).view(n, u, 4) >= ref
        pos = _nonzero(r[..., 0] | r[..., 1] | r[..., 2] | r[..., 3])  # (n, u), channel-major
        del r
        ch, pc = pos // u, pos % u
    else:
        reach = v >= tp  # (n, rows, gw)
        reach = reach | _shift(reach, 2)
        top, bot = _rows(reach, ncell)
        reach = top | bot
        reach &= bad
        pos = _nonzero(reach)  # channel-major
        del reach, top, bot
        ch, cf = pos // X, pos % X
        num = torch.full((X,), -1, dtype=torch.long, device=dev)  # the cells' numbers in ``cell``
        num[cell] = torch.arange(u, device=dev)
        pc = num[cf]
    # the exact test against every corner winner
    pv = ch[:, None] * npt + corners.index_select(0, pc)  # (P, 4) flat indices of the corner values
    x, w = vf.take(pv), (wv * (1 - EPS) - 1e-30).index_select(0, pc)
    beats = None
    for j in range(4):
        r = x >= w[:, :, j]
        r = r[:, 0] | r[:, 1] | r[:, 2] | r[:, 3]
        beats = r if beats is None else beats & r
    del x, w, r
    keep = _nonzero(beats)
    pc, ch, pv = pc.index_select(0, keep), ch.index_select(0, keep), pv.index_select(0, keep)
    # per pixel block of each cell (an edge cell may have two or four); sorted by block, channel
    rb, cb = geo.rows, geo.cols
    ncb = cb.nblocks[cj]
    nbc = rb.nblocks[i0 + ci] * ncb
    brow, bcol = rb.first[i0 + ci], cb.first[cj]
    vr, vc = brow.index_select(0, pc), bcol.index_select(0, pc)
    multi = _nonzero(nbc.index_select(0, pc) > 1)
    if multi.numel():
        pm = pc[multi]
        extra = nbc[pm] - 1
        item = torch.repeat_interleave(torch.arange(pm.numel(), device=dev), extra)
        k = 1 + torch.arange(item.numel(), device=dev) - (torch.cumsum(extra, 0) - extra)[item]
        pe = pm[item]
        vr = torch.cat([vr, brow[pe] + k // ncb[pe]])
        vc = torch.cat([vc, bcol[pe] + k % ncb[pe]])
        ch = torch.cat([ch, ch[multi][item]])
        pv = torch.cat([pv, pv[multi][item]])
    key = (vr * cb.cell.numel() + vc) * n + ch
    key, order = torch.sort(key)
    ch, pv = ch[order], pv[order]
    bkey, bcount = torch.unique_consecutive(key // n, return_counts=True)
    return bkey, bcount, ch, pv


class _Pending:
    """(candidate, block) pairs gathered over bands, resolved in batches: their values at the
    block's pixels in torch's order (``_eval_blocks``) kept as (value bits, channel) keys in one
    buffer, the best per pixel (``_segment_max``), written into ``flat``."""

    def __init__(self, flat: torch.Tensor, geo: _Geometry):
        self.flat, self.geo = flat, geo
        self.px = geo.rows.k * geo.cols.k
        self.limit = max(1, PAIR_PIXELS // self.px)  # pairs per batch
        self.key = None
        self.used = 0
        self.blocks: list = []
        self.evaluated = 0

    def add(self, bkey, bcount, ch, corners, scale):
        nc = self.geo.cols.cell.numel()
        vi, vj = bkey // nc, bkey % nc
        bvi, bvj = torch.repeat_interleave(vi, bcount), torch.repeat_interleave(vj, bcount)
        vals = _eval_blocks(self.geo, bvi, bvj, corners)  # (pixels, pairs)
        if scale is not None:
            vals *= scale[ch]
        p = ch.numel()
        if self.used + p > self.limit:
            self.flush()
        if self.key is None or p > self.key.shape[0]:
            self.key = torch.empty((max(p, self.limit), self.px), dtype=torch.int64, device=vals.device)
        # (value, channel) keys: a value >= +0 orders as its bits; the first channel wins a tie
        key = self.key[self.used : self.used + p]
        key.copy_(vals.view(torch.int32).t())
        key <<= 16
        key |= (0xFFFF - ch)[:, None]
        self.blocks.append((vi, vj, bcount))
        self.used += p

    def flush(self):
        if not self.blocks:
            return
        if len(self.blocks) == 1:
            vi, vj, bcount = self.blocks[0]
        else:
            vi, vj, bcount = (torch.cat([b[k] for b in self.blocks]) for k in range(3))
        key = self.key[: self.used]
        start = torch.cumsum(bcount, 0) - bcount
        best, order = _segment_max(key, start, bcount)
        win = 0xFFFF - (best & 0xFFFF)
        _write(self.flat, win, vi[order], vj[order], self.geo)
        self.evaluated += key.numel()
        self.blocks, self.used = [], 0


def _segment_max(key: torch.Tensor, start: torch.Tensor, count: torch.Tensor):
    """Per block, the largest of its candidates' keys at every pixel: ((blocks, pixels), order of
    the blocks). ``key`` (pairs, pixels); block b's candidates are the pairs ``start[b] ..
    start[b] + count[b] - 1`` (count >= 1). The blocks are sorted by their number of candidates,
    so that the blocks that have an s-th candidate are a prefix: one vectorised maximum per rank."""
    nblock = count.numel()
    csorted, order = torch.sort(count, descending=True)
    st = start[order]
    # blocks with more than s candidates, for s = 0, 1, ...
    more = (nblock - torch.cumsum(torch.bincount(csorted, minlength=int(csorted[0]) + 1), 0))[:-1].tolist()
    best = key.index_select(0, st)
    for s, m in enumerate(more[1:], 1):
        b = best[:m]
        torch.maximum(b, key.index_select(0, st[:m] + s), out=b)
    return best, order


def _write(flat: torch.Tensor, win: torch.Tensor, vi: torch.Tensor, vj: torch.Tensor, geo: _Geometry) -> None:
    """Write pixel blocks ``win`` (u, kr * kc) of blocks (vi, vj) into ``flat`` (H * W + 1: the
    padding pixels all write to the last element)."""
    idx = (geo.rows.off.index_select(0, vi)[:, :, None] + geo.cols.off.index_select(0, vj)[:, None, :]).clamp_(max=geo.H * geo.W)
    flat.index_put_((idx.view(-1),), win.reshape(-1).to(flat.dtype))


def _count_bounds(v, ncell, i0, geo: _Geometry, threshold, sure, unsure=None):
    """Add, per channel, the pixels of cell rows [i0, i0 + ncell) of band ``v`` (n, rows, gw,
    scaled) that are surely >= threshold (all four corners above it) to ``sure``, and those of
    cells that straddle it to ``unsure``; returns the straddling cells (n, ncell, gw) bool."""
    n = v.shape[0]
    # every corner clearly above (AND of the four corners), some corner about above (OR)
    over = v >= threshold * (1 + EPS) + 1e-30
    over &= _shift(over, 2)
    top, bot = _rows(over, ncell)
    above = top & bot
    near = v >= threshold * (1 - EPS) - 1e-30
    near |= _shift(near, 2)
    top, bot = _rows(near, ncell)
    mixed = top | bot
    del over, near, top, bot
    cellpx = geo.cellpx[i0 : i0 + ncell].reshape(-1, 1)
    # sums of integers below 2^24 are exact in float32
    sure += _matmul(above.view(n, -1).float(), cellpx)[:, 0].double()
    mixed &= ~above
    mixed &= geo.cellpx[i0 : i0 + ncell] > 0
    if unsure is not None:
        unsure += _matmul(mixed.view(n, -1).float(), cellpx)[:, 0].double()
    return mixed


def count_above(band_fn, n: int, geo: _Geometry, scale: torch.Tensor | None, threshold: float, band: int = BAND):
    """Exact number of pixels of each of the ``n`` channels of ``band_fn`` (bands (n, rows, gw))
    whose resized value (times ``scale``) is >= threshold: whole cells above it by their
    corners, the pixels of the cells that straddle it evaluated in torch's order."""
    counts = torch.zeros(n, dtype=torch.float64, device=geo.y0.device)
    px = geo.rows.k * geo.cols.k
    for i0 in range(0, geo.gh, band):
        i1 = min(geo.gh, i0 + band)
        g = band_fn(i0, min(geo.gh, i1 + 1)).contiguous()  # (n, rows, gw)
        v = g * scale.view(-1, 1, 1) if scale is not None else g
        mixed = _count_bounds(v, i1 - i0, i0, geo, threshold, counts)
        pos = _nonzero(mixed)
        if not pos.numel():
            continue
        rows, gw = g.shape[1:]
        ncell = i1 - i0
        ch, ci, cj = pos // (ncell * gw), pos // gw % ncell, pos % gw
        item, vi, vj, _, _ = _expand(torch.arange(pos.numel(), device=pos.device), i0 + ci, cj, geo)
        gflat = g.reshape(-1)
        step = max(1, PAIR_PIXELS // px)
        for s in range(0, item.numel(), step):
            it = item[s : s + step]
            k = ch[it]
            corners = _corner_points(ci[it], cj[it], rows, geo) + (k * rows * gw)[:, None]
            vals = _eval_blocks(geo, vi[s : s + step], vj[s : s + step], gflat[corners])  # (pixels, pairs)
            if scale is not None:
                vals *= scale[k]
            valid = (geo.rows.valid[vi[s : s + step]][:, :, None] & geo.cols.valid[vj[s : s + step]][:, None, :]).flatten(1)
            hits = ((vals.t() >= threshold) & valid).sum(1)
            counts += torch.bincount(k, weights=hits.double(), minlength=n)
    return counts.long()


# ---------------------------------------------------------------------------------------------
# The three tasks


def _one(class_queries_logits: torch.Tensor, masks_queries_logits: torch.Tensor):
    cls, masks = class_queries_logits, masks_queries_logits
    if cls.dim() == 3:
        if cls.shape[0] != 1:
            raise ValueError("one image at a time: a leading batch dimension must be 1")
        cls, masks = cls[0], masks[0]
    return cls.float(), masks.float()


@torch.no_grad()
def semantic(class_queries_logits, masks_queries_logits, target_size: tuple[int, int],
             dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """(H, W) class map, as ``post_process_semantic_segmentation(..., target_sizes=[(H, W)])[0]``
    (int64 as there; ``dtype`` writes it as another integer type directly).

    Transformers computes every class's score S_c = sum_q p_qc sigmoid(m_q) on the 384 x 384
    grid (``m_q``: the mask logits resized bilinearly) and then at every pixel. Most of the grid
    is decided from the mask logits' own grid instead (``_decided_grid``): a resized logit lies
    between the four source values around it, the sigmoid is increasing and p >= 0, so within a
    source cell S_c lies between the class-query products of the sigmoid of the smallest and
    of the largest corner; a class whose lower bound beats every other class's upper bound wins
    at every grid point of that cell. S is then computed exactly only at the corners of the
    384-cells that such cells do not settle, and ``resized_argmax`` resolves the pixels. With
    noise-like logits (few cells settled) S is computed on the whole grid in bands (``dense_fn``)."""
    cls, masks = _one(class_queries_logits, masks_queries_logits)
    probs = cls.softmax(-1)[:, :-1]  # (Q, C)
    probs_t = probs.t().contiguous()
    H, W = target_size
    geo = _Geometry(GRID, GRID, H, W, cls.device)

    sparse = _decided_grid(probs_t, masks, geo)
    if sparse is not None:
        index, band_fn = sparse
        label, _, _ = resized_argmax(band_fn, probs.shape[1], geo, out_dtype=dtype, index_fn=index)
        return label

    rows = grid_source_cl(masks)

    def dense_fn(r0, r1):
        m = rows(r0, r1).sigmoid_()  # (rows, 384, Q)
        nrows, gw, q = m.shape
        return _matmul(probs_t, m.reshape(-1, q).t()).view(-1, nrows, gw)

    label, _, _ = resized_argmax(dense_fn, probs.shape[1], geo, out_dtype=dtype)
    return label


#: queries resized at once by ``instance``
INSTANCE_CHUNK = 16
#: relative margin by which a class's lower bound must beat the others' upper bounds in a cell
CELL_MARGIN = 1e-4
#: above this fraction of grid points needing exact scores, the dense band path is used
SPARSE_LIMIT = 0.5
#: the bounds are first tried on every PROBE_STRIDE-th source cell of each axis; above this
#: fraction of unsettled cells there, the dense band path is used at once
PROBE_STRIDE = 3
PROBE_LIMIT = 0.35
#: grid points whose exact class scores are computed at once (memory: queries x this floats)
POINT_CHUNK = 8192


def _corner_extreme(x: torch.Tensor, op) -> torch.Tensor:
    """``op`` (``torch.minimum`` / ``maximum``) of the four corners of every cell of ``x`` (n, h, w):
    cell (i, j) has rows i, min(i + 1, h - 1) and columns j, min(j + 1, w - 1)."""
    a = torch.empty_like(x)
    op(x[..., :-1], x[..., 1:], out=a[..., :-1])
    a[..., -1] = x[..., -1]
    b = torch.empty_like(x)
    op(a[:, :-1], a[:, 1:], out=b[:, :-1])
    b[:, -1] = a[:, -1]
    return b


def settled_cells(probs_t: torch.Tensor | None, masks: torch.Tensor, scale: torch.Tensor | None = None,
                  stride: int = 1) -> torch.Tensor:
    """(h, w) int64: per source cell of ``masks`` (Q, h, w), the channel that wins at every point
    of the cell by the bounds, or -1 where the bounds do not settle it. The channels are
    ``probs_t @ sigmoid(m)`` (semantic: ``probs_t`` (C, Q) class probabilities) or, with
    ``probs_t`` None, ``scale[q] * sigmoid(m_q)`` (panoptic: the kept queries' scores).
    ``stride``: only every stride-th cell of each axis (a sample: (h / stride, w / stride))."""
    q, h, w = masks.shape
    lo = _corner_extreme(masks, torch.minimum)[:, ::stride, ::stride]
    hi = _corner_extreme(masks, torch.maximum)[:, ::stride, ::stride]
    h, w = lo.shape[1:]
    lo, hi = lo.reshape(q, -1).sigmoid_(), hi.reshape(q, -1).sigmoid_()
    if probs_t is not None:
        low = _matmul(probs_t, lo)  # (C, h * w): a lower bound of every class's score in the cell
        del lo
        high = _matmul(probs_t, hi)  # an upper bound
        del hi
    else:
        low, high = lo.mul_(scale[:, None]), hi.mul_(scale[:, None])
    c = low.shape[0]
    # settled: one channel's lower bound beats every other channel's upper bound; the channel
    # with the best lower bound always reaches that bound with its own upper bound (the same
    # sums of larger terms), so a cell is settled when exactly one channel reaches it
    reach = high * (1 + CELL_MARGIN) >= low.amax(0) * (1 - CELL_MARGIN)
    del low, high
    settled = reach.to(torch.int16).sum(0, dtype=torch.int16) == 1
    best = (reach * torch.arange(c, dtype=torch.int16, device=masks.device)[:, None]).amax(0).long()
    return torch.where(settled, best, torch.full_like(best, -1)).view(h, w)


def _window_counts(masks: torch.Tensor, scale: torch.Tensor, threshold: float, geo: _Geometry):
    """Bounds on the number of pixels of each channel ``scale[q] * sigmoid(m_q)`` (bilinear to the
    384 grid, then to the target) that are >= ``threshold``: (surely, possibly) int64 (n,) each,
    from the source grid alone, or None when a pixel draws on more than 3 source rows or columns.

    A pixel is a convex combination of grid points that are convex combinations of source points:
    its value lies between the extremes of the source window that its two grid rows and columns
    draw on (2 or 3 rows by 2 or 3 columns). Pixels are grouped in runs that share a window."""
    n, h, w = masks.shape
    ry0, ry1 = axis_weights(h, geo.gh, masks.device)[:2]
    cx0, cx1 = axis_weights(w, geo.gw, masks.device)[:2]
    ra, rb = ry0[geo.y0], ry1[geo.y1]
    ca, cb = cx0[geo.x0], cx1[geo.x1]
    if int((rb - ra).max()) > 2 or int((cb - ca).max()) > 2:
        return None
    rkey, rcount = torch.unique_consecutive(ra * 3 + (rb - ra), return_counts=True)
    ckey, ccount = torch.unique_consecutive(ca * 3 + (cb - ca), return_counts=True)
    pixels = (ccount[:, None] * rcount[None, :])[..., None]  # (runs of columns, runs of rows, 1)
    x = masks.permute(1, 2, 0)  # (h, w, n): a window's channels together

    def extremes(op):
        # windows of 1, 2 and 3 rows at each row run's first source row, then of columns
        down = _shift(x, 0)
        r1 = op(x, down)
        rows = torch.stack([x, r1, op(r1, _shift(down, 0))])[rkey % 3, rkey // 3]  # (row runs, w, n)
        right = _shift(rows, 1)
        c1 = op(rows, right)
        cols = torch.stack([rows, c1, op(c1, _shift(right, 1))])  # (3, row runs, w, n)
        return cols[ckey % 3, :, ckey // 3]  # (column runs, row runs, n)

    low = extremes(torch.minimum).sigmoid_().mul_(scale)
    above = low >= threshold * (1 + EPS) + 1e-30
    del low
    high = extremes(torch.maximum).sigmoid_().mul_(scale)
    mixed = ~above & (high >= threshold * (1 - EPS) - 1e-30)
    del high
    return (above * pixels).sum((0, 1)), (mixed * pixels).sum((0, 1))


def _decided_grid(probs_t: torch.Tensor | None, masks: torch.Tensor, geo: _Geometry, scale: torch.Tensor | None = None):
    """The channels of ``settled_cells`` on the 384 x 384 grid, computed only where they decide a
    pixel.

    Returns ``(index_fn, band_fn)`` for ``resized_argmax``: the arg-max channel of every grid
    point, and bands of the grid (semantic: class scores; panoptic: the sigmoid masks, which
    ``resized_argmax`` multiplies by ``scale`` as the dense path does) that are exact at every
    corner of a 384-cell (holding pixels) whose arg-max is not settled by source-cell bounds
    (zero elsewhere); or None when the bounds settle too little (noise-like logits) or the
    source grid is larger than the 384 grid (no saving), for the dense path."""
    q, h, w = masks.shape
    c = probs_t.shape[0] if probs_t is not None else q
    if h * w > GRID * GRID // 4:
        return None
    if h * w >= PROBE_STRIDE**2 * 64:
        # a sample of the cells first: when the bounds settle few (noise-like logits, such as a
        # random-weight model's), the dense bands are cheaper than computing them everywhere
        probe = settled_cells(probs_t, masks, scale, stride=PROBE_STRIDE)
        if float((probe < 0).float().mean()) > PROBE_LIMIT:
            return None
    device = masks.device
    ry0, ry1, ryl0, ryl1 = axis_weights(h, GRID, device)
    cx0, cx1, cxl0, cxl1 = axis_weights(w, GRID, device)
    # source cell (i, j): rows i and min(i + 1, h - 1), columns likewise; every grid point with
    # row source i and column source j is a convex combination of its four corners
    cell_class = settled_cells(probs_t, masks, scale)
    # the grid's arg-max where settled, -1 elsewhere; a 384-cell is settled when its four
    # corners are settled to the same class; the corners of the others need exact scores
    grid = cell_class.index_select(0, ry0).index_select(1, cx0)  # (384, 384)
    right, down = _shift(grid, 1), _shift(grid, 0)
    sure = (grid >= 0) & (grid == right) & (grid == down) & (grid == _shift(down, 1))
    open_ = ~sure & (geo.rc[:, None] > 0) & (geo.cc[None, :] > 0)
    need = open_.clone()
    need[:, 1:] |= open_[:, :-1]
    need[1:, :] |= open_[:-1, :]
    need[1:, 1:] |= open_[:-1, :-1]
    points = need.reshape(-1).nonzero()[:, 0]  # ascending
    k = points.numel()
    if k > SPARSE_LIMIT * GRID * GRID:
        return None
    # exact scores at those points: bilinear mask logits (torch's indices and weights), sigmoid,
    # class x query product
    flat = masks.reshape(q, -1).t().contiguous()  # (h * w, Q): a source point's queries together
    scores = torch.empty((c, k), device=device)
    for s in range(0, k, POINT_CHUNK):
        p = points[s : s + POINT_CHUNK]
        r, col = p // GRID, p % GRID
        top, bot = ry0[r] * w, ry1[r] * w
        x0, x1 = cx0[col], cx1[col]
        wx0, wx1 = cxl0[col, None], cxl1[col, None]
        # torch's order (``_SeparableGrid``): along the row, then across rows, fused
        t0 = (flat.index_select(0, top + x1) * wx1).addcmul_(flat.index_select(0, top + x0), wx0)
        t1 = (flat.index_select(0, bot + x1) * wx1).addcmul_(flat.index_select(0, bot + x0), wx0)
        m = (t1.mul_(ryl1[r, None])).addcmul_(t0, ryl0[r, None]).sigmoid_()  # (points, Q)
        del t0, t1
        scores[:, s : s + POINT_CHUNK] = _matmul(probs_t, m.t()) if probs_t is not None else m.t()
    index = grid.view(-1).clone()
    if k:
        index[points] = (scores if probs_t is not None else scores * scale[:, None]).max(0).indices
    index = index.view(GRID, GRID)

    def index_fn(r0, r1):
        return index[r0:r1]

    def band_fn(r0, r1):
        a, b = torch.searchsorted(points, torch.tensor([r0 * GRID, r1 * GRID], device=device)).tolist()
        band = torch.zeros((c, (r1 - r0) * GRID), device=device)
        if b > a:
            band.index_copy_(1, points[a:b] - r0 * GRID, scores[:, a:b])
        return band.view(c, r1 - r0, GRID)

    return index_fn, band_fn


@torch.no_grad()
def instance(
    class_queries_logits,
    masks_queries_logits,
    target_size: tuple[int, int],
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
) -> dict:
    """As ``post_process_instance_segmentation(...)[0]``: float32 map (-1 = none), segments_info.

    (``mask_threshold`` and ``overlap_mask_area_threshold`` are accepted and, as in transformers,
    unused: the binary masks are ``logit > 0``.)"""
    cls, masks = _one(class_queries_logits, masks_queries_logits)
    device = cls.device
    num_queries, num_classes = cls.shape[0], cls.shape[1] - 1
    H, W = target_size
    scores = torch.nn.functional.softmax(cls, dim=-1)[:, :-1]
    scores_per_image, topk = scores.flatten(0, 1).topk(num_queries, sorted=False)
    labels_per_image = (topk % num_classes).tolist()
    queries = torch.div(topk, num_classes, rounding_mode="floor").tolist()
    ridx = nearest_index(GRID, H, device)
    cidx = nearest_index(GRID, W, device)
    rows_u, cols_u = torch.unique(ridx), torch.unique(cidx)
    sp = scores_per_image.tolist()
    # entries that can pass: the score is sp[j] x a mean probability <= 1
    cand = [j for j in range(num_queries) if sp[j] >= threshold]
    uq = sorted({queries[j] for j in cand})
    slot = {q: i for i, q in enumerate(uq)}
    binary = torch.empty((len(uq), GRID, GRID), dtype=torch.bool, device=device)
    mean = torch.empty(len(uq), device=device)
    nonempty = torch.empty(len(uq), dtype=torch.bool, device=device)
    for s in range(0, len(uq), INSTANCE_CHUNK):
        qs = uq[s : s + INSTANCE_CHUNK]
        # never 1 or 3 channels: torch reduces a (1, N) tensor in another order than the rows of
        # (Q, N), and resizes 3 channels in another order than other counts
        pad = qs + qs[:1] * (2 if len(qs) == 1 else 1 if len(qs) == 3 else 0)
        m = F.interpolate(masks[pad][None], size=(GRID, GRID), mode="bilinear", align_corners=False)[0]
        k = len(qs)
        b = binary[s : s + k]
        torch.gt(m[:k], 0, out=b)
        pm = (b if k == len(pad) else m > 0).float()
        # as transformers: sigmoid x (mask as 0./1.), summed, over the mask's area (+ 1e-6)
        ms = m.sigmoid_().mul_(pm).flatten(1).sum(1) / (pm.flatten(1).sum(1) + 1e-6)
        mean[s : s + k] = ms[:k]
        if rows_u.numel() < GRID:
            b = b.index_select(1, rows_u)
        if cols_u.numel() < GRID:
            b = b.index_select(2, cols_u)
        nonempty[s : s + k] = b.flatten(1).any(1)
        del m, pm, b
    segments = []
    last: dict[int, int] = {}  # query -> the id of its last painted entry
    current = 0
    ne = nonempty.tolist()
    for j in cand:
        q = queries[j]
        score = (scores_per_image[j : j + 1] * mean[slot[q] : slot[q] + 1])[0].item()
        if score >= threshold and ne[slot[q]]:
            last[q] = current
            segments.append({"id": current, "label_id": labels_per_image[j], "was_fused": False, "score": round(score, 6)})
            current += 1
    # entries are painted in order, later ones over earlier ones: the last id covering a grid
    # point wins, and ids grow with the order, so it is the largest (per query, its last entry's)
    grid = torch.zeros((GRID, GRID), dtype=torch.int16 if current < 32767 else torch.int32, device=device)
    painted = list(last.items())
    for s in range(0, len(painted), INSTANCE_CHUNK):
        part = painted[s : s + INSTANCE_CHUNK]
        sel = binary[[slot[q] for q, _ in part]]
        ids = torch.tensor([i + 1 for _, i in part], dtype=grid.dtype, device=device)
        torch.maximum(grid, (sel.to(grid.dtype) * ids[:, None, None]).amax(0), out=grid)
    segmentation = grid.index_select(1, cidx).index_select(0, ridx).float().sub_(1)
    return {"segmentation": segmentation, "segments_info": segments}


@torch.no_grad()
def panoptic(
    class_queries_logits,
    masks_queries_logits,
    target_size: tuple[int, int],
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
    label_ids_to_fuse=None,
) -> dict:
    """As ``post_process_panoptic_segmentation(...)[0]``: int32 map (float32 -1 when nothing is
    kept), segments_info with was_fused."""
    cls, masks = _one(class_queries_logits, masks_queries_logits)
    device = cls.device
    fuse = set(label_ids_to_fuse or ())
    H, W = target_size
    num_labels = cls.shape[-1] - 1
    pred_scores, pred_labels = torch.nn.functional.softmax(cls, dim=-1).max(-1)
    keep = pred_labels.ne(num_labels) & (pred_scores > threshold)
    if not bool(keep.any()):
        return {"segmentation": torch.zeros((H, W), device=device) - 1, "segments_info": []}
    kept = keep.nonzero()[:, 0]
    kmasks = masks[kept]
    kscores = pred_scores[kept]
    klabels = pred_labels[kept].tolist()
    n = kept.numel()

    geo = _Geometry(GRID, GRID, H, W, device)
    sparse = _decided_grid(None, kmasks, geo, kscores)
    counts = _window_counts(kmasks, kscores, mask_threshold, geo) if sparse is not None else None
    if counts is not None:
        index, band_fn = sparse
        winner, _, _ = resized_argmax(band_fn, n, geo, scale=kscores, index_fn=index, out_dtype=torch.int32)
        sure, unsure = counts
    else:
        rows = grid_source_cl(kmasks)  # (not one full 384 x 384 plane for every kept query)

        def band_fn(r0, r1):
            return rows(r0, r1).sigmoid_().permute(2, 0, 1)  # (kept queries, rows, 384)

        winner, (sure, unsure), _ = resized_argmax(
            band_fn, n, geo, scale=kscores, threshold=mask_threshold, out_dtype=torch.int32
        )
    area = sum(torch.bincount(winner[r : r + 256].reshape(-1), minlength=n) for r in range(0, H, 256))
    # original_area lies in [sure, sure + unsure]; the ratio test is monotonic in it, so count
    # exactly only where the bounds disagree
    hi, lo = sure + unsure, sure
    undecided = []
    for k in range(n):
        a, h, l_ = int(area[k]), int(hi[k]), int(lo[k])
        if a == 0 or h == 0:
            continue
        r_hi = (torch.tensor(a) / torch.tensor(max(l_, 1))).item()  # smallest area -> largest ratio
        r_lo = (torch.tensor(a) / torch.tensor(h)).item()
        if l_ == 0 or (r_lo > overlap_mask_area_threshold) != (r_hi > overlap_mask_area_threshold):
            undecided.append(k)
    original = lo.clone()
    if undecided:
        sub = torch.tensor(undecided, device=device)
        sub_rows = grid_source(kmasks[sub])
        exact = count_above(lambda r0, r1: sub_rows(r0, r1).sigmoid_(), len(undecided), geo, kscores[sub], mask_threshold)
        original[sub] = exact

    lut = torch.zeros(n, dtype=torch.int32, device=device)
    segments = []
    current = 0
    stuff: dict[int, int] = {}
    area_l, orig_l = area.tolist(), original.tolist()
    for k in range(n):
        pred_class = klabels[k]
        should_fuse = pred_class in fuse
        exists = area_l[k] > 0 and orig_l[k] > 0
        if exists:
            ratio = torch.tensor(area_l[k]) / torch.tensor(orig_l[k])
            if not ratio.item() > overlap_mask_area_threshold:
                exists = False
        if exists:
            if pred_class in stuff:
                current = stuff[pred_class]
            else:
                current += 1
            lut[k] = current
            segments.append(
                {"id": current, "label_id": pred_class, "was_fused": should_fuse, "score": round(kscores[k].item(), 6)}
            )
            if should_fuse:
                stuff[pred_class] = current
    segmentation = lut[winner]
    return {"segmentation": segmentation, "segments_info": segments}
