"""Bounds on the 384 grid from the source cells: where one class (or query) provably wins a whole
source cell (``settled_cells``), windowed bounds on thresholded counts (``_window_counts``), and the
sparse path's decided grid (``_decided_grid``). Built on ``geometry``; used by the tasks."""

from __future__ import annotations

import torch

from workers.model.postprocess.geometry import EPS, GRID, _argmax0, _Geometry, _matmul, _shift, axis_weights


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
    # a run's window: (size - 1) selects the plane of windows of that many source rows (columns),
    # its first source row (column) the slice: one index_select into the planes side by side (a
    # fraction of the time of advanced indexing)
    rsel = (rkey % 3) * h + rkey // 3
    csel = (ckey % 3) * w + ckey // 3

    def extremes(op):
        # windows of 1, 2 and 3 source rows at each row run's first source row, then of columns
        down = _shift(masks, 1)
        r1 = op(masks, down)
        rows = torch.cat([masks, r1, op(r1, _shift(down, 1))], 1).index_select(1, rsel)  # (n, row runs, w)
        right = _shift(rows, 2)
        c1 = op(rows, right)
        return torch.cat([rows, c1, op(c1, _shift(right, 2))], 2).index_select(2, csel)  # (n, row runs, column runs)

    # pixels per (row run, column run); the sums are of integers, exact in float64 (no TF32 there)
    pixels = (rcount[:, None] * ccount[None, :]).reshape(-1, 1).double()
    low = extremes(torch.minimum).sigmoid_().mul_(scale[:, None, None])
    above = low >= threshold * (1 + EPS) + 1e-30
    del low
    high = extremes(torch.maximum).sigmoid_().mul_(scale[:, None, None])
    mixed = ~above & (high >= threshold * (1 - EPS) - 1e-30)
    del high
    return (above.view(n, -1).double() @ pixels)[:, 0].long(), (mixed.view(n, -1).double() @ pixels)[:, 0].long()


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
    # class x query product, in chunks of points; each chunk's arg-max is taken while it is in
    # cache, and the chunks are kept as computed (one (channels, points) array filled from them
    # cost as much again here, most of it in first touches of its pages)
    flat = masks.reshape(q, -1).t().contiguous()  # (h * w, Q): a source point's queries together
    chunks: list[torch.Tensor] = []
    index = grid.view(-1).clone()
    pick = lambda t, i: t.index_select(0, i)  # noqa: E731 (a fraction of the time of t[i] here)
    for s in range(0, k, POINT_CHUNK):
        p = points[s : s + POINT_CHUNK]
        r, col = p // GRID, p % GRID
        top, bot = pick(ry0, r) * w, pick(ry1, r) * w
        x0, x1 = pick(cx0, col), pick(cx1, col)
        wx0, wx1 = pick(cxl0, col)[:, None], pick(cxl1, col)[:, None]
        # torch's order (``_SeparableGrid``): along the row, then across rows, fused
        t0 = (flat.index_select(0, top + x1) * wx1).addcmul_(flat.index_select(0, top + x0), wx0)
        t1 = (flat.index_select(0, bot + x1) * wx1).addcmul_(flat.index_select(0, bot + x0), wx0)
        m = (t1.mul_(pick(ryl1, r)[:, None])).addcmul_(t0, pick(ryl0, r)[:, None]).sigmoid_()  # (points, Q)
        del t0, t1
        scores = _matmul(probs_t, m.t()) if probs_t is not None else m.t().contiguous()  # (c, points)
        chunks.append(scores)
        index.index_copy_(0, p, _argmax0(scores if probs_t is not None else scores * scale[:, None]))
    index = index.view(GRID, GRID)

    def index_fn(r0, r1):
        return index[r0:r1]

    def band_fn(r0, r1):
        a, b = torch.searchsorted(points, torch.tensor([r0 * GRID, r1 * GRID], device=device)).tolist()
        band = torch.zeros((c, (r1 - r0) * GRID), device=device)
        for s in range(a - a % POINT_CHUNK, b, POINT_CHUNK):  # the chunks that hold points [a, b)
            lo, hi = max(a, s), min(b, s + POINT_CHUNK)
            band.index_copy_(1, points[lo:hi] - r0 * GRID, chunks[s // POINT_CHUNK][:, lo - s : hi - s])
        return band.view(c, r1 - r0, GRID)

    return index_fn, band_fn
