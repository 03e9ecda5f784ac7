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

How it avoids the full-resolution tensors:

- semantic does not compute the 384 x 384 class scores everywhere (that product alone, 150
  classes x 200 queries x 384^2, costs more than the rest): a resized mask logit lies between
  the four source values around it, the sigmoid is increasing and class probabilities are
  >= 0, so inside one source cell every class's score lies between the class-query products
  of the sigmoid of the smallest and of the largest corner (two small matrix products on the
  source grid). Where one class's lower bound beats every other's upper bound (with a 1e-4
  margin), that class wins at every grid point of the cell (``settled_cells``); exact scores
  are computed only at the corners of the 384-cells that this does not settle, with torch's
  bilinear indices and weights (an ulp from ``F.interpolate``'s own rounding at most), and
  noise-like logits that settle little (a random-weight model's, for one) fall back to dense
  bands, decided first on a sample of one cell in 9. Panoptic's arg-max over the
  kept queries' ``score x sigmoid(mask)`` is settled the same way, and its thresholded areas
  are bounded from source windows (``_window_counts``): a pixel's value lies between the
  extremes of the 2-3 x 2-3 source values its grid corners draw on;
- otherwise the 384 x 384 grid is computed in bands of rows (the 96 -> 384 resize is an
  integer ratio, so a crop of the input with one row of margin gives bit-identical rows);
- a bilinear value is a convex combination of its cell's four corners, and the difference of two
  bilinear interpolants is the interpolant of the differences: where the same channel wins at
  the four corners of a grid cell, it wins at every pixel of that cell (up to float rounding at
  an exact or near tie), and those pixels are filled by indexing. Only the pixels of the other
  ("boundary") cells are evaluated, for the few channels whose largest corner reaches the best
  smallest corner; a band where that would be most of its pixels (noise-like outputs) is
  evaluated densely, a few channels at a time;
- on the dense path, thresholded areas (panoptic ``original_area``) count whole cells whose
  corners are all clearly above the threshold; the pixels of cells that straddle it give
  bounds; on either path the areas are counted exactly (in a second pass, for those queries
  only) when the overlap-ratio decision differs between the bounds;
- instance needs no bilinear step at full size: nearest resizing is a gather, so masks are
  painted on the 384 grid and the result gathered once.

The pixel evaluator uses torch's weights exactly (same source indices and lambdas; the source
index is computed with a fused multiply-add as torch's kernel does) but its own order of float
operations, which can differ from ``F.interpolate`` by an ulp (we could not find torch's exact
order: no tested order matched bit for bit); a decision can therefore only differ where the
reference's own decision is a float near-tie (see ``workers/equivalence.py``). The 384 x 384
intermediates of the dense bands are bit-identical to transformers' (crops of the same
``F.interpolate``; the class x query product, a matrix product per band, matched einsum bit for
bit on CPU/MKL with 1 and 2 threads, though another BLAS could sum in another order); semantic's
exact points may differ from them by an ulp, which again matters only at a near-tie.
"""

from __future__ import annotations

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


def _eval_points(g: torch.Tensor, ch, r0, r1, rl0, rl1, c0, c1, cl0, cl1) -> torch.Tensor:
    """Bilinear value of band ``g`` (n, rows, gw) at points: channel, local rows, cols, weights."""
    n, rows, gw = g.shape
    flat = g.reshape(-1)
    plane = ch * (rows * gw)
    top = plane + r0 * gw
    bot = plane + r1 * gw
    a = flat.take(top + c0)
    b = flat.take(top + c1)
    c = flat.take(bot + c0)
    d = flat.take(bot + c1)
    t0 = a * cl0 + b * cl1
    t1 = c * cl0 + d * cl1
    return t0 * rl0 + t1 * rl1


class _Geometry:
    """Row and column maps from output pixels to grid cells for one (grid, target) pair."""

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


def _rows(v: torch.Tensor, ncell: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top and bottom corner rows of the cells whose top row is 0..ncell-1 of band ``v``."""
    top = v[:, :ncell]
    bot = v[:, 1 : ncell + 1] if v.shape[1] > ncell else torch.cat([v[:, 1:ncell], v[:, ncell - 1 : ncell]], 1)
    return top, bot


def _shift(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` shifted by one towards index 0 along ``dim``, the last slice repeated."""
    n = x.shape[dim]
    return torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim) if n > 1 else x


def _corner_flat(cell: torch.Tensor, gw: int, rows: int, xnext: torch.Tensor) -> torch.Tensor:
    """(u, 4) flat indices into a band of ``rows`` x ``gw`` of the corners of cells ``i * gw + j``."""
    i, j = cell // gw, cell % gw
    i1 = torch.clamp(i + 1, max=rows - 1)
    j1 = xnext[j]
    return torch.stack([i * gw + j, i * gw + j1, i1 * gw + j, i1 * gw + j1], -1)


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

    With ``threshold``, also bounds on the number of pixels of each channel whose value is
    >= threshold: the pixels of cells clearly above it, and those of cells that straddle it
    (``count_above`` counts those exactly, for the channels where it matters).
    ``index_fn(r0, r1)``, if given, returns the arg-max over channels of rows [r0, r1) of G
    (the caller knows it): G then needs exact values only at the corners of cells whose four
    corners do not share one arg-max.
    Returns (argmax map (H, W), (sure, unsure) (n,) int64 each or None, pixels evaluated)."""
    gh, gw, H, W = geo.gh, geo.gw, geo.H, geo.W
    device = geo.y0.device
    out = torch.empty((H, W), dtype=out_dtype, device=device)
    sure = torch.zeros(n, dtype=torch.float64, device=device)
    unsure = torch.zeros(n, dtype=torch.float64, device=device)
    evaluated = 0
    for i0 in range(0, gh, band):
        i1 = min(gh, i0 + band)
        ncell = i1 - i0
        g = band_fn(i0, min(gh, i1 + 1)).contiguous()  # (n, rows, gw)
        v = g * scale.view(-1, 1, 1) if scale is not None else g
        ya, yb = int(geo.ys[i0]), int(geo.ys[i1 - 1] + geo.rc[i1 - 1])
        if n == 1:
            pure = torch.ones((ncell, gw), dtype=torch.bool, device=device)
            best = torch.zeros((ncell, gw), dtype=torch.long, device=device)
        else:
            # the same channel wins at the four corners: it wins inside (a difference of two
            # bilinear interpolants is the interpolant of the corner differences, >= 0 here);
            # only a float near-tie inside the cell can round the other way
            idx = index_fn(i0, min(gh, i1 + 1)) if index_fn is not None else v.max(0).indices
            # (max(0) is faster than argmax on CPU; first index on ties too)
            it, ib = _rows(idx[None], ncell)
            same = it == ib
            same = same & _shift(same, -1) & (it == _shift(it, -1))
            pure = same[0]
            best = it[0]
        if yb > ya:
            ly = geo.y0[ya:yb] - i0
            out[ya:yb] = best.to(out_dtype).index_select(1, geo.x0).index_select(0, ly)
            # boundary cells that hold pixels
            bad = ~pure & (geo.rc[i0:i1, None] > 0) & (geo.cc[None, :] > 0)
            ucell = bad.reshape(-1).nonzero()[:, 0]
            if ucell.numel():
                flat_idx = _corner_flat(ucell, gw, v.shape[1], geo.xnext).reshape(-1)
                corners = v.reshape(n, -1).index_select(1, flat_idx).view(n, -1, 4)  # (n, u, 4)
                floor_ = corners.amin(-1).amax(0)  # (u,) best smallest corner
                cand = corners.amax(-1) >= floor_ * (1 - EPS) - 1e-30  # (n, u)
                del corners
                npx = (yb - ya) * W
                cellpx = geo.rc[i0 + ucell // gw] * geo.cc[ucell % gw]
                if int((cand.sum(0) * cellpx).sum()) > 2 * npx:
                    # boundaries everywhere (noise-like outputs): evaluate the band densely
                    # for the channels that are candidates somewhere, one at a time
                    chans = cand.any(1).nonzero()[:, 0]
                    win = _dense_band(g, chans, ya, yb, i0, geo, scale)
                    imp = bad.index_select(1, geo.x0).index_select(0, ly)
                    evaluated += int(imp.sum())
                    out[ya:yb][imp] = win[imp].to(out_dtype)
                    ucell = ucell[:0]
                    cand = cand[:, :0]
                ch, cu = cand.nonzero(as_tuple=True)
                ch, yy, xx = _expand(ch, ucell[cu] // gw, ucell[cu] % gw, i0, geo)
                local = (yy - ya) * W + xx
                step = 1 << 22
                best_v = torch.full((npx,), float("-inf"), device=device)
                vals = []
                for s in range(0, ch.numel(), step):
                    c, y, x = ch[s : s + step], yy[s : s + step], xx[s : s + step]
                    val = _eval_points(
                        g, c, geo.y0[y] - i0, geo.y1[y] - i0, geo.yl0[y], geo.yl1[y],
                        geo.x0[x], geo.x1[x], geo.xl0[x], geo.xl1[x],
                    )
                    if scale is not None:
                        val = val * scale[c]
                    best_v.scatter_reduce_(0, local[s : s + step], val, "amax")
                    vals.append(val)
                if vals:
                    val = torch.cat(vals)
                    top_ = val == best_v[local]
                    win = torch.full((npx,), n, dtype=torch.long, device=device)
                    win.scatter_reduce_(0, local[top_], ch[top_], "amin")
                    hit = win < n
                    evaluated += int(hit.sum())
                    band_out = out[ya:yb].view(-1)
                    band_out.copy_(torch.where(hit, win.to(out_dtype), band_out))
        if threshold is not None:
            _count_above(g, v, ncell, i0, geo, scale, threshold, sure, unsure)
    bounds = (sure.long(), unsure.long()) if threshold is not None else None
    return out, bounds, evaluated


def _dense_band(g, chans, ya, yb, i0, geo: _Geometry, scale, chunk: int = 16) -> torch.Tensor:
    """Arg-max over ``chans`` (ascending; first on ties) of the resized values at output rows
    [ya, yb), a few channels at a time (the same arithmetic as ``_eval_points``)."""
    y = torch.arange(ya, yb, device=g.device)
    r0, r1 = geo.y0[y] - i0, geo.y1[y] - i0
    rl0, rl1 = geo.yl0[y, None], geo.yl1[y, None]
    best = win = None
    for s in range(0, chans.numel(), chunk):
        cs = chans[s : s + chunk]
        sub = g.index_select(0, cs)  # (k, rows, gw)
        cols = sub.index_select(2, geo.x0) * geo.xl0 + sub.index_select(2, geo.x1) * geo.xl1  # (k, rows, W)
        val = cols.index_select(1, r0) * rl0 + cols.index_select(1, r1) * rl1  # (k, nY, W)
        if scale is not None:
            val = val * scale[cs].view(-1, 1, 1)
        v, i = val.max(0)
        i = cs[i]
        if best is None:
            best, win = v, i
        else:
            better = v > best
            best = torch.where(better, v, best)
            win = torch.where(better, i, win)
    return win


def count_above(band_fn, n: int, geo: _Geometry, scale: torch.Tensor | None, threshold: float, band: int = BAND):
    """Exact number of pixels of each of the ``n`` channels of ``band_fn`` whose resized value
    (times ``scale``) is >= threshold."""
    sure = torch.zeros(n, dtype=torch.float64, device=geo.y0.device)
    for i0 in range(0, geo.gh, band):
        i1 = min(geo.gh, i0 + band)
        g = band_fn(i0, min(geo.gh, i1 + 1)).contiguous()
        v = g * scale.view(-1, 1, 1) if scale is not None else g
        _count_above(g, v, i1 - i0, i0, geo, scale, threshold, sure, None)
    return sure.long()


def _count_above(g, v, ncell, i0, geo: _Geometry, scale, threshold, counts, unsure):
    """Add, per channel, the pixels of cell rows [i0, i0 + ncell) whose value is >= threshold:
    to ``counts`` those surely above; those of straddling cells to ``unsure`` if given, else
    evaluated and the ones above added to ``counts``."""
    top, bot = _rows(v, ncell)
    lo = torch.minimum(top, bot)
    lo = torch.minimum(lo, _shift(lo, -1))
    hi = torch.maximum(top, bot)
    hi = torch.maximum(hi, _shift(hi, -1))
    rc, cc = geo.rc[i0 : i0 + ncell].float(), geo.cc.float()

    def pixels(cells: torch.Tensor) -> torch.Tensor:
        # sum over cells of rows x cols per cell; integers below 2^24 add exactly in float32
        return _matmul(_matmul(cells.float(), cc), rc).double()

    above = lo >= threshold * (1 + EPS) + 1e-30
    counts += pixels(above)
    mixed = ~above & (hi >= threshold * (1 - EPS) - 1e-30) & (rc[:, None] > 0) & (cc[None, :] > 0)
    if unsure is not None:
        unsure += pixels(mixed)
        return
    k, ci, cj = mixed.nonzero(as_tuple=True)
    if not k.numel():
        return
    k, yy, xx = _expand(k, ci, cj, i0, geo)
    step = 1 << 22
    for s in range(0, k.numel(), step):
        kk, y, x = k[s : s + step], yy[s : s + step], xx[s : s + step]
        val = _eval_points(
            g, kk, geo.y0[y] - i0, geo.y1[y] - i0, geo.yl0[y], geo.yl1[y], geo.x0[x], geo.x1[x], geo.xl0[x], geo.xl1[x]
        )
        if scale is not None:
            val = val * scale[kk]
        counts += torch.bincount(kk[val >= threshold], minlength=counts.numel()).double()


def _expand(k, ci, cj, i0, geo: _Geometry):
    """Expand (channel, cell row - i0, cell col) triples to one (channel, y, x) per pixel."""
    # expand (channel, cell) to its pixels: rows then columns
    nr = geo.rc[i0 + ci]
    k, ci, cj = k.repeat_interleave(nr), ci.repeat_interleave(nr), cj.repeat_interleave(nr)
    first = torch.cumsum(nr, 0) - nr
    yy = geo.ys[i0 + ci] + (torch.arange(k.numel(), device=k.device) - first.repeat_interleave(nr))
    ncol = geo.cc[cj]
    k, yy, cj = k.repeat_interleave(ncol), yy.repeat_interleave(ncol), cj.repeat_interleave(ncol)
    first = torch.cumsum(ncol, 0) - ncol
    xx = geo.xs[cj] + (torch.arange(k.numel(), device=k.device) - first.repeat_interleave(ncol))
    return k, yy, xx


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
    384-cells that such cells do not settle, and ``resized_argmax`` resolves the pixels."""
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

    rows = grid_source(masks)

    def dense_fn(r0, r1):
        m = rows(r0, r1).sigmoid_()  # (Q, rows, 384)
        q, nrows, gw = m.shape
        return _matmul(probs_t, m.reshape(q, -1)).reshape(-1, nrows, gw)

    label, _, _ = resized_argmax(dense_fn, probs.shape[1], geo, out_dtype=dtype)
    return label


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
        t0 = flat.index_select(0, top + x0) * wx0 + flat.index_select(0, top + x1) * wx1
        t1 = flat.index_select(0, bot + x0) * wx0 + flat.index_select(0, bot + x1) * wx1
        m = (t0 * ryl0[r, None] + t1 * ryl1[r, None]).sigmoid_()  # (points, Q)
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
    labels_per_image = topk % num_classes
    queries = torch.div(topk, num_classes, rounding_mode="floor")
    ridx = nearest_index(GRID, H, device)
    cidx = nearest_index(GRID, W, device)
    rows_u, cols_u = torch.unique(ridx), torch.unique(cidx)

    cache: dict[int, tuple[torch.Tensor, float]] = {}

    def mask_of(q: int):
        if q not in cache:
            # two rows: torch reduces a (1, N) tensor in another order than the rows of (Q, N)
            m = F.interpolate(masks[[q, q]][None], size=(GRID, GRID), mode="bilinear", align_corners=False)[0]
            pm = (m > 0).float()
            ms = (m.sigmoid().flatten(1) * pm.flatten(1)).sum(1) / (pm.flatten(1).sum(1) + 1e-6)
            cache[q] = (pm[0] > 0, ms[:1])
        return cache[q]

    grid = torch.full((GRID, GRID), -1.0, device=device)
    segments = []
    current = 0
    sp = scores_per_image.tolist()
    for j in range(num_queries):
        if not sp[j] >= threshold:  # the score is sp[j] x a mean probability <= 1
            continue
        pm, ms = mask_of(int(queries[j]))
        score = (scores_per_image[j : j + 1] * ms)[0].item()
        if score >= threshold and bool(pm[rows_u][:, cols_u].any()):
            grid[pm] = current
            segments.append(
                {"id": current, "label_id": int(labels_per_image[j]), "was_fused": False, "score": round(score, 6)}
            )
            current += 1
    segmentation = grid[ridx][:, cidx]
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
        winner, _, _ = resized_argmax(band_fn, n, geo, scale=kscores, index_fn=index)
        sure, unsure = counts
    else:
        rows = grid_source(kmasks)

        def band_fn(r0, r1):
            return rows(r0, r1).sigmoid_()

        winner, (sure, unsure), _ = resized_argmax(band_fn, n, geo, scale=kscores, threshold=mask_threshold)
    area = torch.bincount(winner.reshape(-1), minlength=n)
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
