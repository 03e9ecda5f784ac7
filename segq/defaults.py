"""Every default value of segq, in one place (overridden through ``segq.settings``)."""

REDIS_URL = "redis://127.0.0.1:6379/0"
S3_BUCKET = "segq"
S3_REGION = "us-east-1"

#: The checkpoints of the article this project grew from: Mask2Former, Swin-L backbone.
MODELS = {
    "ade-semantic": "facebook/mask2former-swin-large-ade-semantic",
    "coco-instance": "facebook/mask2former-swin-large-coco-instance",
    "coco-panoptic": "facebook/mask2former-swin-large-coco-panoptic",
}
#: The model a job uses when it names none, per task.
TASK_MODELS = {
    "semantic": "ade-semantic",
    "instance": "coco-instance",
    "panoptic": "coco-panoptic",
}

#: Decompression-bomb guard: images with more pixels are refused (about 8K x 5K).
MAX_IMAGE_PIXELS = 40_000_000
#: Longest video accepted, in frames (an hour at 30 fps).
MAX_VIDEO_FRAMES = 108_000
#: Largest input file accepted, in bytes.
MAX_INPUT_BYTES = 256 * 1024 * 1024

#: How long a job record (and a batch, after its last job) stays in Redis after it ended.
JOB_TTL_SECONDS = 7 * 24 * 3600
#: Lifetime of the presigned output URLs that ``segq status`` prints.
PRESIGN_SECONDS = 3600
#: Redis visibility timeout: an unacknowledged message is redelivered after this long.
#: It must exceed the longest task, or a slow task is run twice (tasks are idempotent,
#: but that wastes a GPU).
VISIBILITY_TIMEOUT_SECONDS = 4 * 3600
#: Retries of a task that failed for a transient reason (storage unreachable, ...).
TASK_RETRIES = 8
#: How long, from the first transient failure, a job keeps retrying before it fails.
RETRY_BUDGET_SECONDS = 600
#: Seconds between worker heartbeats (the registry record and the leases are renewed).
HEARTBEAT_SECONDS = 10
#: Times a task may lose its worker (killed mid-task) before its job fails.
MAX_WORKER_LOSSES = 3

#: Post-processing thresholds, as in transformers' post_process_* defaults.
SCORE_THRESHOLD = 0.5
MASK_THRESHOLD = 0.5
OVERLAP_MASK_AREA_THRESHOLD = 0.8

#: Overlay look of the article: cv2.addWeighted(image, 0.2, segmentation, 1.0, 0).
OVERLAY_IMAGE_WEIGHT = 0.2
OVERLAY_SEGMENT_WEIGHT = 1.0
OVERLAY_JPEG_QUALITY = 90
#: threads of a worker process that encode and upload image jobs' output files, several at once
OUTPUT_THREADS = 4

#: How often the CLI polls Redis while waiting.
POLL_SECONDS = 0.25
