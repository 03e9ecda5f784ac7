"""The model: loading, the one inference path and its numerics.

- ``models``       loading checkpoints with transformers' ``from_pretrained`` (and compiling)
- ``segmenter``    the one inference path: a ``Segmenter`` per loaded model (submit, finish, blend)
- ``stage``        the model stage: one thread for every forward pass; dynamic batching
- ``postprocess``  segq's exact fast post-processing, by layer (geometry, bounds, full size, tasks)
- ``device``       device and precision a worker process runs its models on
- ``checkpoints``  offline checkpoints (``segq models tiny``)
"""
