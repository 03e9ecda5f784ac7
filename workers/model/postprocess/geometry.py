"""Bilinear geometry of the 384 grid and of full size: torch's ``align_corners=False`` source
indices and weights, the grid's rows and source, and the exact pixel evaluator. The lowest layer of
fast post-processing (``workers.model.postprocess``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F



GRID = 384  # transformers resizes mask logits to this size before anything else
EPS = 1e-5  # relative margin under which a cell is evaluated pixel by pixel
BAND = 32  # grid rows per band, at least
#: grid values (channels x rows x 384) per band: few channels (panoptic's kept queries) take more
#: rows at once, which saves per-band overhead (about a fifth of panoptic's post-processing at
#: 1080p with 13 queries), many (semantic's 150 classes) stay at ``BAND`` rows
BAND_VALUES = 1 << 20


def band_rows(n: int, width: int = GRID) -> int:
    """Grid rows per band for ``n`` channels: ``BAND_VALUES`` values, at least ``BAND`` rows."""
    return max(BAND, min(GRID, BAND_VALUES // max(1, n * width)))


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with float32 accuracy on any device. On CUDA the worker lets its model's float32
    matrix products use TF32 (``workers.model.device``: 10-bit mantissas, relative errors near 1e-3), a
    process-wide setting that would also reach these products, where the bounds' 1e-4 margin and
    the near-tie tolerance need float32's own accuracy; so on CUDA they run in float64 and are
    rounded to float32 (at most an ulp from a float32 product, which matters only at a near-tie).
    On the CPU (no TF32) the plain product."""
    if a.is_cuda:
        return (a.double() @ b.double()).float()
    return a @ b


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
