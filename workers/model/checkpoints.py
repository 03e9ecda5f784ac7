"""Offline Mask2Former checkpoints: random-initialised, deterministic, with the real label sets.

For machines that cannot reach the Hugging Face hub (CI, air-gapped demos), ``segq models tiny``
writes small checkpoints into local folders, in exactly the format ``from_pretrained`` reads, so
the workers load them through the same code as the real ones. **Their predictions are
meaningless**: the weights are random. They exist to exercise the whole system end to end.

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


def make_tiny(label_set: str, out_dir: Path, seed: int = TINY_SEED) -> Path:
    """Write one tiny checkpoint (config, safetensors weights, image processor) to ``out_dir``."""
    from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

    torch.manual_seed(seed)
    model = Mask2FormerForUniversalSegmentation(tiny_config(label_set)).eval()
    _sharpen(model)
    processor = Mask2FormerImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE, "longest_edge": TINY_IMAGE_SIZE * 2},
        do_reduce_labels=label_set == "ade20k",
        ignore_index=255,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / "README.md").write_text(
        f"Random-initialised Mask2Former written by `segq models tiny` (seed {seed}, label set {label_set}).\n"
        "Its predictions are meaningless. It exists to run segq end to end without the Hugging Face hub.\n"
    )
    return out_dir


def make_all_tiny(root: Path) -> dict[str, str]:
    """Write the three offline stand-ins under ``root``; returns ``SEGQ_MODELS`` as a mapping."""
    out = {}
    for name, label_set in TINY_MODELS.items():
        folder = root / f"tiny-{name}"
        if not (folder / "config.json").is_file():
            make_tiny(label_set, folder)
        out[name] = str(folder.resolve())
    return out
