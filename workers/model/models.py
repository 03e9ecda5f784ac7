"""Loading Mask2Former checkpoints with transformers' ``from_pretrained``.

A checkpoint is a Hugging Face hub id (``facebook/mask2former-swin-large-ade-semantic``) or a
local folder holding ``config.json``, the weights and ``preprocessor_config.json`` (for
example one written by ``segq models tiny``). Models load once per worker process and stay
in memory for every later job.

``SEGQ_COMPILE`` (off by default) compiles a loaded model's forward pass with ``torch.compile``
(:func:`compile_model`), in place: ``LoadedModel.model`` stays the transformers module (its
``config``, its outputs' attributes). Shapes are static (``dynamic=False``): each new input shape
(batch size, or image size for processors that keep the aspect ratio) compiles once, on its first
forward pass, and at most :data:`COMPILED_SHAPES` shapes are compiled per process (every model
together: torch's compile cache is per function, and the models share Mask2Former's ``forward``);
later new shapes run uncompiled, with torch's "recompile_limit" warning in the log. The worker
compiles one batch of one image at start (on its model stage's thread), so that a
model that does not compile fails to load at start, with the reason, as a model that does not load
does, rather than in a job (``workers.model.segmenter.Segmenter.warm_up``); the first batch of each other
shape still compiles in its job.
Static rather than dynamic shapes: kernels specialised to a shape are torch.compile's fastest case,
and symbolic shapes through Swin's window padding are untested here; the cost is a compile per
shape. Nothing here has been measured on a GPU yet: ``python -m bench.gpu --compile MODE
--compare-compile`` measures eager against compiled.
"""

from __future__ import annotations

import functools

import logging
import time
from dataclasses import dataclass

import torch

from segq.errors import SegqError
from segq.settings import COMPILE_MODES
from workers.media import labels
from workers.model.device import DeviceSpec

log = logging.getLogger(__name__)

#: torch.compile modes that capture CUDA graphs on a GPU. A graph's outputs live in its memory
#: pool and the next replay overwrites them, while the worker's model stage runs the next batch
#: before the last one is post-processed: :func:`compile_model` copies the outputs out.
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
#: Compiled input shapes per worker process, all models together (torch._dynamo's
#: ``recompile_limit``, 8 by default, is raised to this): for example three models with a batch
#: size and a last, shorter batch each, plus single images.
COMPILED_SHAPES = 16
#: The image the warm-up runs through the model's processor (width, height): HD video's 16:9.
#: Any size gives the hub's ADE checkpoints their fixed 384x384 input; processors that keep the
#: aspect ratio (the COCO checkpoints': shortest edge 384) give other aspect ratios other shapes.
WARMUP_SIZE = (1920, 1080)


class ModelLoadError(SegqError):
    pass


@dataclass
class LoadedModel:
    name: str
    checkpoint: str
    model: torch.nn.Module
    processor: object  # transformers Mask2Former image processor
    spec: DeviceSpec
    labels: labels.LabelSet
    load_seconds: float
    postprocess: str = "fast"  # "fast" (workers.model.postprocess) or "reference" (transformers')
    compile: str = "off"  # SEGQ_COMPILE: "off", or the torch.compile mode of compile_model

    @property
    def processor_backend(self) -> str:
        return processor_backend(self.processor)

    @property
    def processor_name(self) -> str:
        """The processor class, recorded with every output (``segments.json``, ``video.json``)."""
        return type(self.processor).__name__

    @functools.cached_property
    def pil_plan(self):
        """The ``pil`` processor's preprocessing without its round trips (``workers.model.pilprep``),
        or None where it does not apply."""
        from workers.model import pilprep

        return pilprep.plan(self.processor)

    @property
    def num_queries(self) -> int:
        return int(self.model.config.num_queries)

    @property
    def max_label_value(self) -> int:
        """Largest value a label map of this model can hold (class ids or segment ids)."""
        return max(len(self.labels), self.num_queries + 1)


def load_processor(checkpoint: str, backend: str):
    """transformers' image processor of ``checkpoint`` with the ``backend`` the fleet pins
    (``pil`` or ``torchvision``: they resize differently). transformers would silently fall
    back to the other backend when the one asked for is not importable; this refuses instead."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(checkpoint, backend=backend)
    got = processor_backend(processor)
    if got != backend:
        raise ModelLoadError(
            f"SEGQ_IMAGE_PROCESSOR={backend}, but transformers gave the {got} processor "
            f"({type(processor).__name__})" + (": is torchvision installed?" if backend == "torchvision" else "")
        )
    return processor


def processor_backend(processor) -> str:
    """``pil`` or ``torchvision``: which of transformers' image-processor backends this is."""
    from transformers.image_processing_backends import PilBackend, TorchvisionBackend

    if isinstance(processor, PilBackend):
        return "pil"
    if isinstance(processor, TorchvisionBackend):
        return "torchvision"
    return type(processor).__name__


def load(name: str, checkpoint: str, spec: DeviceSpec, backend: str = "pil", compile: str = "off") -> LoadedModel:
    """The checkpoint's model and image processor on ``spec``'s device and dtype, in eval mode;
    ``compile``: ``SEGQ_COMPILE`` (:func:`compile_model`; ``load_seconds`` does not include the
    compilation, which happens on the first forward passes)."""
    from transformers import Mask2FormerForUniversalSegmentation

    started = time.perf_counter()
    try:
        processor = load_processor(checkpoint, backend)
        model = Mask2FormerForUniversalSegmentation.from_pretrained(checkpoint, dtype=spec.dtype)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot load model {name!r} from {checkpoint!r}: {exc}. A hub id needs network access or "
            f"a filled Hugging Face cache (HF_HOME); offline, point SEGQ_MODELS at local folders "
            f"(see `segq models tiny --help`)."
        ) from exc
    model.to(spec.device).eval()
    seconds = time.perf_counter() - started
    label_set = labels.for_id2label(model.config.id2label)
    log.info("loaded model %s from %s on %s in %.2fs (%s labels)", name, checkpoint, spec.label, seconds, label_set.name)
    loaded = LoadedModel(name, checkpoint, model, processor, spec, label_set, seconds)
    compile_model(loaded, compile)
    return loaded


def compile_model(m: LoadedModel, mode: str) -> None:
    """``torch.compile`` the model's forward pass in place with ``mode`` (``SEGQ_COMPILE``), static
    shapes; ``off``: the eager forward pass (again, for a compiled model: benchmarks compare both).
    The module stays the transformers module and returns its usual outputs; compilation happens
    lazily, on the first pass of each input shape (module docstring). In the CUDA-graph modes on
    CUDA, every pass starts a new CUDA-graph step and its outputs' tensors are copied out of the
    graphs' pool, so they stay valid while the next pass runs."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if m.compile == mode:
        return
    if m.compile != "off":  # back to the class's own forward
        vars(m.model).pop("forward", None)
        m.compile = "off"
    if mode == "off":
        return
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, COMPILED_SHAPES)
    compiled = torch.compile(m.model.forward, mode=mode, dynamic=False)
    if mode in CUDAGRAPH_MODES and m.spec.device.type == "cuda":
        def forward(*args, **kwargs):
            torch.compiler.cudagraph_mark_step_begin()
            return _own_tensors(compiled(*args, **kwargs))

        m.model.forward = forward
    else:
        m.model.forward = compiled
    m.compile = mode
    log.info("model %s: torch.compile mode=%s, static shapes: the first forward pass of each new input shape "
             "(batch size, image size) compiles first, which takes a while; up to %d shapes per process",
             m.name, mode, COMPILED_SHAPES)


def _own_tensors(outputs):
    """``outputs`` (a transformers ``ModelOutput``) with its top-level tensors copied: out of the
    CUDA graphs' memory pool, which the next replay overwrites. Nested ones (auxiliary logits) are
    not copied: they are valid until the next pass only."""
    for key, value in list(outputs.items()):
        if isinstance(value, torch.Tensor):
            outputs[key] = value.clone()
    return outputs
