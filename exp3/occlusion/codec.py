"""Image bytes <-> (H, W, 3) uint8 RGB arrays, as every suite image is read and written."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from exp3.occlusion import OcclusionError

PNG_COMPRESS_LEVEL = 1
"""zlib level of PNG outputs: lossless at any level; 1 trades a slightly larger file for much less time than
Pillow's default 6 (suites write thousands of images)."""
JPEG_QUALITY = 95
ORIENTATION = 0x0112
"""The EXIF orientation tag."""


def _exif_orientation(image: Image.Image) -> int:
    """The orientation cv2.imread applies: its EXIF block's (a TIFF's own tags), never one Pillow's `getexif` takes
    from XMP or from a PNG's "Raw profile type exif" text (ImageMagick's), which cv2 ignores."""
    if image.format == "TIFF":
        return image.getexif().get(ORIENTATION, 1)
    exif = Image.Exif()
    if raw := image.info.get("exif"):
        exif.load(raw)
    return exif.get(ORIENTATION, 1)


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB, EXIF orientation applied (as cv2.imread does)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode.startswith("I") or image.mode == "F":  # Pillow's RGB conversion would clip it to white
                raise OcclusionError(f"image {name!r} has {image.mode} pixels, not 8 bits: convert it to 8 bits as "
                                     "Ultralytics reads it (e.g. cv2.imwrite(p, cv2.imread(p)))")
            if _exif_orientation(image) != 1:
                image = ImageOps.exif_transpose(image)
            return np.array(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise OcclusionError(f"image {name!r} cannot be decoded ({error}): replace or remove the file") from None


def encode_image(image: np.ndarray, output_format: str) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG (zlib level `PNG_COMPRESS_LEVEL`) or JPEG (quality `JPEG_QUALITY`) bytes."""
    buffer = io.BytesIO()  # output_format is "png" or "jpg": OcclusionConfig.output_format is Literal["png", "jpg"]
    options = {"compress_level": PNG_COMPRESS_LEVEL} if output_format == "png" else {"quality": JPEG_QUALITY}
    Image.fromarray(image).save(buffer, format="PNG" if output_format == "png" else "JPEG", **options)
    return buffer.getvalue()
