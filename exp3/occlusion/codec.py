"""Image bytes <-> (H, W, 3) uint8 RGB arrays, as every suite image is read and written."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from exp3.occlusion import OcclusionError

PNG_COMPRESS_LEVEL = 1
"""zlib level of PNG outputs: lossless at any level; 1 trades a slightly larger file for much less time than
Pillow's default 6 (suites write thousands of images)."""
JPEG_QUALITY = 95
OUTPUT_SUFFIXES: dict[str, str] = {"png": ".png", "jpg": ".jpg"}


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB, EXIF orientation applied (as cv2.imread does)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode.startswith("I") or image.mode == "F":  # Pillow's RGB conversion would clip it to white
                raise OcclusionError(f"image {name!r} has {image.mode} pixels, not 8 bits: convert it to 8 bits as "
                                     "Ultralytics reads it (e.g. cv2.imwrite(p, cv2.imread(p)))")
            if image.getexif().get(0x0112, 1) != 1:
                image = ImageOps.exif_transpose(image)
            return np.array(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise OcclusionError(f"image {name!r} cannot be decoded ({error}): replace or remove the file") from None


def encode_image(image: np.ndarray, output_format: str) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG (zlib level `PNG_COMPRESS_LEVEL`) or JPEG (quality `JPEG_QUALITY`) bytes."""
    options: dict[str, dict[str, Any]] = {  # built on call: the constants are read where they are used, never copied
        "png": {"format": "PNG", "compress_level": PNG_COMPRESS_LEVEL},
        "jpg": {"format": "JPEG", "quality": JPEG_QUALITY},
    }
    if output_format not in options:
        raise ValueError(f"unknown output format {output_format!r}: use one of {', '.join(options)}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, **options[output_format])
    return buffer.getvalue()
