"""The article's drawing helpers (its ``utils.py``), copied faithfully: the baseline every
benchmark compares against. Plain numpy and OpenCV."""

from __future__ import annotations

import cv2
import numpy as np


def draw_segmentation_map(labels, palette):
    """One pass over the label map per palette class, as the article does."""
    red_map = np.zeros_like(labels).astype(np.uint8)
    green_map = np.zeros_like(labels).astype(np.uint8)
    blue_map = np.zeros_like(labels).astype(np.uint8)
    for label_num in range(0, len(palette)):
        index = labels == label_num
        red_map[index] = np.array(palette)[label_num, 0]
        green_map[index] = np.array(palette)[label_num, 1]
        blue_map[index] = np.array(palette)[label_num, 2]
    segmentation_map = np.stack([red_map, green_map, blue_map], axis=2)
    return segmentation_map


def image_overlay(image, segmented_image):
    """``cv2.addWeighted(image, 0.2, segmentation, 1.0, 0)`` in BGR, as the article does."""
    alpha = 0.2  # transparency for the original image
    beta = 1.0  # transparency for the segmentation map
    gamma = 0  # scalar added to each sum
    segmented_image = cv2.cvtColor(segmented_image, cv2.COLOR_RGB2BGR)
    image = np.array(image)
    image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    cv2.addWeighted(image, alpha, segmented_image, beta, gamma, image)
    return image
