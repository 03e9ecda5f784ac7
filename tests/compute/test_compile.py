"""``SEGQ_COMPILE``: a model compiled with ``torch.compile`` gives what the eager one gives.

The tiny checkpoint, compiled with mode ``default`` on the CPU (inductor's C++ kernels), against
the same checkpoint run eagerly: logits within 1e-5 of their scale, label maps equal but for
near-ties of the reference (``workers.testing.equivalence``), the module and its outputs unchanged, and the
worker's warm-up on the model stage's thread compiling the shape the jobs then run (no
recompilation). The compiling test is marked ``compile``: with a cold inductor cache it takes about
90 s on a 2-core machine (inductor's C++ compilation; seconds once the cache is warm), so
``-m "not compile"`` leaves it out. Without compiling (``torch.compile`` stubbed): the copy of the
outputs out of CUDA graphs, and the worker's compile of a warm-up batch at start, on its model
stage, whose failure fails the model's load with the reason."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")

from transformers.utils import ModelOutput  # noqa: E402

from workers.model import device  # noqa: E402
from workers.testing import equivalence  # noqa: E402
from workers.media import labels  # noqa: E402
from workers.model import models  # noqa: E402
from workers.model import stage as pipeline  # noqa: E402
from workers.model.segmenter import Segmenter  # noqa: E402
from workers.model.checkpoints import make_tiny  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(make_tiny("ade20k", tmp_path_factory.mktemp("tiny") / "ade"))


def _images(n: int, size=(64, 64)) -> list[Image.Image]:
    rng = np.random.default_rng(5)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _cxx() -> str | None:
    from torch._inductor import config

    names = config.cpp.cxx if isinstance(config.cpp.cxx, (tuple, list)) else (config.cpp.cxx,)
    return next((shutil.which(n) for n in names if n and shutil.which(n)), None)


@pytest.mark.compile
def test_a_compiled_model_gives_the_eager_logits_and_labels(checkpoint):
    if _cxx() is None:
        pytest.skip("torch.compile's inductor needs a C++ compiler (g++) on a CPU, and none is on PATH")
    spec = device.select("fp32")
    eager = models.load("ade-semantic", checkpoint, spec)
    compiled = models.load("ade-semantic", checkpoint, spec, compile="default")
    assert (eager.compile, compiled.compile) == ("off", "default")
    # The module stays the transformers module, with its config and facts.
    assert type(compiled.model) is type(eager.model)
    assert compiled.num_queries == eager.num_queries and compiled.max_label_value == eager.max_label_value

    images = _images(2)
    eager_seg = Segmenter(eager)
    inputs = eager_seg.preprocess(images)
    want = eager_seg.forward(inputs)

    # The worker's warm-up, on the model stage's thread, of the jobs' input shape (batch and size:
    # the tiny processor keeps the aspect ratio); the jobs' pass on another thread reuses it.
    stage = pipeline.ModelStage()
    try:
        before = _graphs()
        seconds = Segmenter(compiled, stage).warm_up(batch=2, size=(64, 64))
        assert seconds > 0 and _graphs() > before, "the warm-up compiled nothing"
    finally:
        stage.close()
    compiled_graphs = _graphs()
    compiled_seg = Segmenter(compiled)
    got = compiled_seg.forward(compiled_seg.preprocess(images))
    assert _graphs() == compiled_graphs, "the jobs' batch compiled again after the warm-up"

    for name in ("class_queries_logits", "masks_queries_logits"):
        w, g = getattr(want, name), getattr(got, name)
        assert g.shape == w.shape and g.dtype == w.dtype
        scale = float(w.abs().max())
        assert float((g - w).abs().max()) <= 1e-5 * scale, f"{name}: compiled differs from eager"

    # The outputs keep their class and attributes.
    with torch.inference_mode():
        out = compiled.model(**inputs)
    assert type(out).__name__ == "Mask2FormerForUniversalSegmentationOutput"
    assert out.class_queries_logits is out["class_queries_logits"]

    sizes = [(img.height, img.width) for img in images]
    for i, (p, q) in enumerate(zip(eager_seg.post_process_batch(want, sizes, "semantic"),
                                   compiled_seg.post_process_batch(got, sizes, "semantic"))):
        equivalence.assert_equivalent(
            "semantic", want.class_queries_logits[i], want.masks_queries_logits[i], sizes[i],
            torch.from_numpy(p.label_map), torch.from_numpy(q.label_map))


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"num_queries": 3})()
        self.buffer = torch.arange(6.0)  # stands for a CUDA graph's output buffer

    def forward(self, pixel_values):
        return ModelOutput(class_queries_logits=self.buffer, masks_queries_logits=self.buffer * 0 + pixel_values.sum())


def _loaded(net, dev: str) -> models.LoadedModel:
    spec = device.DeviceSpec(torch.device(dev), torch.float32, dev)
    return models.LoadedModel("m", "ckpt", net, None, spec, labels.load("ade20k"), 0.0)


@pytest.mark.parametrize("mode, dev, copied", [
    ("reduce-overhead", "cuda", True), ("max-autotune", "cuda", True),
    ("default", "cuda", False), ("reduce-overhead", "cpu", False),
])
def test_outputs_are_copied_out_of_cuda_graphs(monkeypatch, mode, dev, copied):
    """In the CUDA-graph modes on CUDA every pass starts a CUDA-graph step and its outputs are
    copied (the next replay overwrites the graph's buffers while the last batch is post-processed);
    ``torch.compile`` gets the mode and static shapes. (torch.compile itself is stubbed here.)"""
    calls, steps = [], []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or fn)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1))
    net = _Net()
    m = _loaded(net, dev)
    models.compile_model(m, mode)
    assert calls == [{"mode": mode, "dynamic": False}] and m.compile == mode
    out = net(torch.ones(2))
    assert isinstance(out, ModelOutput) and float(out.masks_queries_logits[0]) == 2.0
    assert (out.class_queries_logits is not net.buffer) is copied
    assert (out["class_queries_logits"] is out.class_queries_logits)
    assert len(steps) == (1 if copied else 0)
    assert torch._dynamo.config.recompile_limit >= models.COMPILED_SHAPES
    models.compile_model(m, "off")  # eager again (bench.gpu --compare-compile)
    assert m.compile == "off" and "forward" not in vars(net) and net(torch.ones(2)).class_queries_logits is net.buffer


def test_compile_off_changes_nothing_and_bad_modes_are_refused(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda *a, **kw: pytest.fail("compiled"))
    net = _Net()
    m = _loaded(net, "cpu")
    models.compile_model(m, "off")
    assert m.compile == "off" and "forward" not in vars(net)
    with pytest.raises(ValueError, match="compile mode must be one of off, default, reduce-overhead"):
        models.compile_model(m, "fast")


class _Registration:
    def __init__(self):
        self.loads = []

    def loaded(self, name, seconds):
        self.loads.append(name)


class _Stage:
    """The model stage, recording what it ran; passes run inline."""

    def __init__(self):
        self.items = []

    def submit(self, runner, inputs, items=1):
        from concurrent.futures import Future

        self.items.append(items)
        future = Future()
        future.set_result(None)
        return future


def _runtime(monkeypatch, mode: str, warm):
    from segq.settings import Settings
    from workers.host import runtime

    loaded = []

    def load(name, checkpoint, spec, backend, compile="off"):
        m = _loaded(_Net(), "cpu")
        m.compile = compile
        loaded.append(m)
        return m

    monkeypatch.setattr(models, "load", load)
    monkeypatch.setattr(Segmenter, "warm_up", warm)
    settings = Settings.from_env({"SEGQ_MODELS": "a=/ckpt", "SEGQ_COMPILE": mode})
    rt = runtime.Runtime(settings=settings, hostname="w", storage=None, records=None,
                         spec=_loaded(_Net(), "cpu").spec, registration=_Registration(), stage=_Stage())
    return rt, loaded


def test_the_worker_compiles_a_warm_up_batch_on_its_model_stage_at_start(monkeypatch):
    def warm(segmenter):
        assert segmenter.stage is rt.stage  # on the worker's model stage
        segmenter.stage.submit(segmenter, {"pixel_values": torch.ones(1)}, items=0)
        return 1.0

    rt, loaded = _runtime(monkeypatch, "reduce-overhead", warm)
    rt.load_models(["a"])
    assert loaded[0].compile == "reduce-overhead" and rt.stage.items == [0]  # on the stage, counted as no item
    assert rt.registration.loads == ["a"]

    rt, loaded = _runtime(monkeypatch, "off", lambda segmenter: pytest.fail("warmed up uncompiled"))
    rt.load_models(["a"])
    assert loaded[0].compile == "off" and rt.stage.items == []


def test_a_model_that_does_not_compile_fails_to_load_at_start_with_the_reason(monkeypatch):
    def warm(segmenter):
        raise RuntimeError("no C++ compiler")

    rt, _ = _runtime(monkeypatch, "default", warm)
    with pytest.raises(models.ModelLoadError, match=r"SEGQ_COMPILE=default\) failed on a warm-up batch: "
                                                    r"RuntimeError: no C\+\+ compiler\. SEGQ_COMPILE=off"):
        rt.load_models(["a"])
    assert rt.models == {} and rt.registration.loads == []
