"""Offline Mask2Former checkpoints with the real label sets: trained tiny ones and random ones.

For machines that cannot reach the Hugging Face hub (CI, air-gapped demos), ``segq models tiny``
writes small checkpoints into local folders, in exactly the format ``from_pretrained`` reads, so
the workers load them through the same code as the real ones. Two kinds, one architecture
(:func:`tiny_config`):

- **trained** (the default; folders ``tiny-<name>``): weights trained offline by
  ``scripts/train_tiny.py`` on procedural street scenes (``bench/scenes.py``), shipped as package
  data (``workers/model/data/tiny/<name>/``, fp16; written out as fp32). They segment sky,
  building, window, tree, road, sidewalk, person and car in such scenes (figures:
  ``docs/offline-models.md``) and never predict the label sets' other classes;
- **random** (``--random``; folders ``tiny-random-<name>``): random-initialised, deterministic,
  sharpened so that every post-processing path produces segments. Their predictions are
  meaningless and noise-like, which is what the tests of the dense code paths need.

``full_size_config`` builds the real architecture (Swin-L backbone, 200 queries) for speed
measurements: compute does not depend on the weights being trained.
"""

from __future__ import annotations

from pathlib import Path

import torch

from workers.media import labels

#: Offline stand-ins for the three default models: name -> label set.
TINY_MODELS = {
    "ade-semantic": "ade20k",
    "coco-instance": "coco_instance",
    "coco-panoptic": "coco_panoptic",
}
TINY_SEED = 20240601
TINY_IMAGE_SIZE = 256
CLASS_GAIN = 40.0
MASK_GAIN = 8.0


def _label_maps(label_set: str) -> tuple[dict[int, str], dict[str, int]]:
    ls = labels.load(label_set)
    id2label = {i: n for i, n in enumerate(ls.names)}
    return id2label, {n: i for i, n in id2label.items()}


def tiny_config(label_set: str):
    from transformers import Mask2FormerConfig, SwinConfig

    id2label, label2id = _label_maps(label_set)
    backbone = SwinConfig(
        image_size=224,
        patch_size=4,
        embed_dim=24,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=7,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return Mask2FormerConfig(
        backbone_config=backbone,
        num_queries=24,
        hidden_dim=32,
        mask_feature_size=32,
        feature_size=32,
        encoder_layers=1,
        decoder_layers=3,
        encoder_feedforward_dim=64,
        dim_feedforward=64,
        num_attention_heads=2,
        common_stride=4,
        num_labels=len(id2label),
        id2label=id2label,
        label2id=label2id,
    )


def full_size_config(label_set: str = "ade20k"):
    """The architecture of facebook/mask2former-swin-large-*: Swin-L (IN-21k, 384), 200 queries."""
    from transformers import Mask2FormerConfig, SwinConfig

    id2label, label2id = _label_maps(label_set)
    backbone = SwinConfig(
        image_size=384,
        patch_size=4,
        embed_dim=192,
        depths=[2, 2, 18, 2],
        num_heads=[6, 12, 24, 48],
        window_size=12,
        drop_path_rate=0.3,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return Mask2FormerConfig(
        backbone_config=backbone,
        num_queries=200,
        num_labels=len(id2label),
        id2label=id2label,
        label2id=label2id,
    )


def _sharpen(model) -> None:
    """Make a random model's predictions look like segmentations rather than noise.

    Random heads give every query a near-uniform class distribution (no score passes the 0.5
    threshold, so instance and panoptic outputs would be empty) and flat masks. Scaling the
    class and mask heads gives confident, varied classes and spatially varied masks, so every
    post-processing path produces several segments. Still random weights, still meaningless.
    """
    with torch.no_grad():
        head = model.class_predictor
        head.weight.mul_(CLASS_GAIN)
        head.bias.zero_()
        head.bias[-1] = -4.0  # the "no object" class: rarely the most likely one
        for module in model.model.transformer_module.decoder.mask_predictor.mask_embedder.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(MASK_GAIN)


def tiny_processor(label_set: str):
    """The image processor of every tiny checkpoint: shortest edge 256, longest 512."""
    from transformers import Mask2FormerImageProcessor

    return Mask2FormerImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE, "longest_edge": TINY_IMAGE_SIZE * 2},
        do_reduce_labels=label_set == "ade20k",
        ignore_index=255,
    )


def make_tiny(label_set: str, out_dir: Path, seed: int = TINY_SEED) -> Path:
    """Write one random tiny checkpoint (config, safetensors weights, image processor) to ``out_dir``."""
    from transformers import Mask2FormerForUniversalSegmentation

    torch.manual_seed(seed)
    model = Mask2FormerForUniversalSegmentation(tiny_config(label_set)).eval()
    _sharpen(model)
    processor = tiny_processor(label_set)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / "README.md").write_text(
        f"Random-initialised Mask2Former written by `segq models tiny` (seed {seed}, label set {label_set}).\n"
        "Its predictions are meaningless. It exists to run segq end to end without the Hugging Face hub.\n"
    )
    return out_dir


def trained_data(name: str):
    """The package-data folder of the trained checkpoint ``name`` (``workers/model/data/tiny/<name>``)."""
    from importlib import resources

    if name not in TINY_MODELS:
        raise KeyError(f"no trained offline checkpoint {name!r}; there are {', '.join(TINY_MODELS)}")
    return resources.files("workers.model").joinpath("data", "tiny", name)


def save_package_data(model, name: str, root: Path, training: dict) -> Path:
    """Write ``model`` as the package data of ``name`` under ``root``: fp16 safetensors, config,
    image processor and ``training.json`` (how it was trained). ``scripts/train_tiny.py`` calls it."""
    import copy
    import json

    label_set = TINY_MODELS[name]
    _check_architecture(model.config, label_set)
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(model).half().save_pretrained(out)
    tiny_processor(label_set).save_pretrained(out)
    (out / "training.json").write_text(json.dumps(training, indent=1) + "\n")
    return out


def make_trained(name: str, out_dir: Path) -> Path:
    """Write the trained checkpoint ``name`` (package data, fp16) to ``out_dir`` as fp32, in the
    format ``from_pretrained`` reads: config, safetensors weights, image processor, training.json."""
    import json
    import shutil
    import tempfile

    from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

    label_set = TINY_MODELS[name]
    data = trained_data(name)
    if not data.joinpath("config.json").is_file():
        raise FileNotFoundError(f"the trained checkpoint {name!r} is missing from the package data "
                                f"({data}); `python scripts/train_tiny.py` writes it")
    with tempfile.TemporaryDirectory(prefix="segq-trained-") as tmp:
        src = Path(tmp)  # a plain folder, whatever importlib.resources gives (a zip member, say)
        for f in data.iterdir():
            if f.is_file():
                (src / f.name).write_bytes(f.read_bytes())
        model = Mask2FormerForUniversalSegmentation.from_pretrained(src, dtype=torch.float32).eval()
        _check_architecture(model.config, label_set)
        processor = Mask2FormerImageProcessor.from_pretrained(src)
        training = json.loads((src / "training.json").read_text())
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        processor.save_pretrained(out_dir)
        shutil.copyfile(src / "training.json", out_dir / "training.json")
    (out_dir / "README.md").write_text(
        f"Mask2Former `{name}` (label set {label_set}, architecture `workers.model.checkpoints.tiny_config`), "
        "written by `segq models tiny` from segq's package data (fp16 there, fp32 here).\n\n"
        "Trained offline by `scripts/train_tiny.py` on procedural street scenes (`bench/scenes.py`), "
        f"{training.get('steps', '?')} steps in {training.get('seconds', '?')} s on {training.get('threads', '?')} CPU threads. "
        "It segments sky, building, window, tree, road, sidewalk, person and car in such synthetic scenes and "
        "never predicts the label set's other classes. On real photos expect little: it is a 0.76M-parameter "
        "model that has seen only drawings. Quality figures: docs/offline-models.md.\n"
    )
    return out_dir


def _check_architecture(config, label_set: str) -> None:
    """Packaged weights must be ``tiny_config``'s architecture (an edited copy that is not would
    load differently from the random stand-ins)."""
    want = tiny_config(label_set).to_dict()
    got = config.to_dict()
    keys = ("num_queries", "hidden_dim", "mask_feature_size", "feature_size", "encoder_layers", "decoder_layers",
            "num_labels", "id2label")
    bb = ("embed_dim", "depths", "num_heads", "window_size", "patch_size")
    diff = [k for k in keys if got.get(k) != want.get(k)]
    diff += [f"backbone_config.{k}" for k in bb if got["backbone_config"].get(k) != want["backbone_config"].get(k)]
    if diff:
        raise ValueError(f"checkpoint for {label_set} is not tiny_config's architecture: {', '.join(diff)}")


def make_all_tiny(root: Path, random: bool = False) -> dict[str, str]:
    """Write the three offline checkpoints under ``root``; returns ``SEGQ_MODELS`` as a mapping.

    Trained ones (the default) go to ``tiny-<name>``, random ones (``random=True``) to
    ``tiny-random-<name>``. Folders already written are reused (a ``tiny-<name>`` folder without
    ``training.json`` is an older random one, and is rewritten)."""
    out = {}
    for name, label_set in TINY_MODELS.items():
        if random:
            folder = root / f"tiny-random-{name}"
            if not (folder / "config.json").is_file():
                make_tiny(label_set, folder)
        else:
            folder = root / f"tiny-{name}"
            if not ((folder / "config.json").is_file() and (folder / "training.json").is_file()):
                make_trained(name, folder)
        out[name] = str(folder.resolve())
    return out
