"""Helpers of tests and benchmarks; no worker task imports them.

- ``equivalence``  compare a label map with transformers' and classify every differing pixel
- ``synthetic``    synthetic Mask2Former outputs with the real shapes
- ``probes``       large test images and /proc memory readings (the memory test and benches)
"""
