"""segq producer: queue segmentation jobs and follow them. Needs neither torch nor OpenCV."""

from producer.client import Client

__all__ = ["Client"]
