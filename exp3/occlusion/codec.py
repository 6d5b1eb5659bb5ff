"""Image bytes <-> (H, W, 3) uint8 RGB arrays, as every suite image is read and written."""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from exp3.occlusion import OcclusionError

PNG_COMPRESS_LEVEL = 1
"""zlib level of PNG outputs: lossless at any level; 1 trades a slightly larger file for much less time than
Pillow's default 6 (suites write thousands of images)."""
JPEG_QUALITY = 95



def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB, EXIF orientation applied (as cv2.imread does)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.getexif().get(0x0112, 1) != 1:
                image = ImageOps.exif_transpose(image)
            return np.array(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise OcclusionError(f"image {name!r} cannot be decoded ({error}): replace or remove the file") from None


def _encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _encode_jpg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


ENCODERS: dict[str, Callable[[np.ndarray], bytes]] = {"png": _encode_png, "jpg": _encode_jpg}
"""Output format -> encoder of an (H, W, 3) uint8 RGB image."""
OUTPUT_SUFFIXES: dict[str, str] = {"png": ".png", "jpg": ".jpg"}


def encode_image(image: np.ndarray, output_format: str) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG (zlib level `PNG_COMPRESS_LEVEL`) or JPEG (quality `JPEG_QUALITY`) bytes."""
    if output_format not in ENCODERS:
        raise ValueError(f"unknown output format {output_format!r}: use one of {', '.join(ENCODERS)}")
    return ENCODERS[output_format](image)
