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
  384 grid: the grid is computed in bands of 32 rows, more for few channels (``band_rows``;
  the "dense" path): the mask logits resized in two passes, channels-last (``_SeparableGrid``, where ``_separable_exact``
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
``workers/testing/equivalence.py``), and on the CPU, upscaling, it does not differ at all in practice.
On CUDA the same code runs with torch's own resizes and products (TF32 kept out of them, see
``_matmul``): differences at near-ties only.
"""

from workers.model.postprocess.tasks import instance, panoptic, semantic

__all__ = ["semantic", "instance", "panoptic"]
