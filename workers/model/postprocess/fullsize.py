"""Full-size decisions from the 384 grid without full-size tensors: the resized arg-max
(``resized_argmax``: cells whose four corners agree filled by indexing, the others through exact
per-(cell, channel) candidates) and thresholded pixel counts (``count_above``). Built on
``geometry``; used by the three tasks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workers.model.postprocess.geometry import (EPS, _argmax0, _Geometry, _corner_points, _eval_blocks, _expand, _matmul,
                                                _nonzero, _rows, _shift, band_rows)


#: (candidate, block) pairs x pixels per block evaluated at once
PAIR_PIXELS = 1 << 19


def resized_argmax(
    band_fn,
    n: int,
    geo: _Geometry,
    scale: torch.Tensor | None = None,
    threshold: float | None = None,
    out_dtype=torch.int64,
    band: int | None = None,
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
    band = band or band_rows(n, gw)
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


def count_above(band_fn, n: int, geo: _Geometry, scale: torch.Tensor | None, threshold: float,
                band: int | None = None):
    """Exact number of pixels of each of the ``n`` channels of ``band_fn`` (bands (n, rows, gw))
    whose resized value (times ``scale``) is >= threshold: whole cells above it by their
    corners, the pixels of the cells that straddle it evaluated in torch's order."""
    counts = torch.zeros(n, dtype=torch.float64, device=geo.y0.device)
    band = band or band_rows(n, geo.gw)
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
