"""Bounds on the 384 grid from the source cells: where one class (or query) provably wins a whole
source cell (``settled_cells``), windowed bounds on thresholded counts (``_window_counts``), and the
sparse path's decided grid (``_decided_grid``). Built on ``geometry``; used by the tasks."""

from __future__ import annotations

import torch

from workers.model.postprocess.geometry import EPS, GRID, _Geometry, _matmul, _shift, axis_weights


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
