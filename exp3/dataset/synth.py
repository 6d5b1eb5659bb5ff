"""The embedded default dataset: procedural "ingredients" on cluttered kitchen-like backgrounds.

No dataset can be downloaded where exp3 runs, so it draws its own. Every image is a pure
function of (generator version, seed, split, index): the same seed gives byte-identical files.

Layout written by `build_synthetic_dataset(out_dir, ...)`:

    out_dir/images/{train,val,test}/<split>_<index:05d>.jpg   RGB JPEG, quality 92
    out_dir/labels/{train,val,test}/<split>_<index:05d>.txt   YOLO: "cls cx cy w h" (normalised)
    out_dir/data.yaml                                        absolute `path:`, splits, names
    out_dir/synth_manifest.json                              version, preset, seed, per-file sha256

Objects are drawn as RGBA sprites (shape, colour, texture, shading), rotated, and pasted with
partial overlaps; an instance map keeps each label box tight around the object's *visible*
pixels, and a placement is rejected if it would hide more than 40 % of an earlier object.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFilter

from exp3.fileio import atomic_write_json, atomic_write_text, ensure_writable_dir, publish_dir, sha256_bytes
from exp3.parallel import map_tasks
from exp3.splits import SOURCE_SPLITS, TEST_SPLIT, TRAIN_SPLIT, VAL_SPLIT

GENERATOR_VERSION = "synth-1"

_SPLIT_STREAM = {TRAIN_SPLIT: 1, VAL_SPLIT: 2, TEST_SPLIT: 3}
_MIN_VISIBLE_SHARE = 0.6
_JPEG_QUALITY = 92


@dataclass(frozen=True)
class Preset:
    """Image side in pixels and images per split."""

    image_size: int
    counts: dict[str, int]


PRESETS: dict[str, Preset] = {
    # smoke: enough to exercise every code path in seconds (12 one-epoch sessions on 2 CPU cores)
    "smoke": Preset(image_size=128, counts={TRAIN_SPLIT: 16, VAL_SPLIT: 8, TEST_SPLIT: 8}),
    # full: the default experiment dataset (640 px like COCO-scale training)
    "full": Preset(image_size=640, counts={TRAIN_SPLIT: 800, VAL_SPLIT: 200, TEST_SPLIT: 200}),
}

RGB = tuple[int, int, int]
Rng = np.random.Generator


# ---------------------------------------------------------------------------------------------
# Small drawing helpers (pure: rng in, pixels out)


def _jitter(rng: Rng, colour: RGB, amount: int) -> RGB:
    """`colour` with each channel moved by a uniform integer in [-amount, amount], clipped."""
    return tuple(map(int, np.clip(np.array(colour) + rng.integers(-amount, amount + 1, size=3), 0, 255)))


def _texture(rng: Rng, sprite: Image.Image, strength: float) -> Image.Image:
    """Multiply the sprite's RGB by smooth noise and a directional shading ramp; alpha kept."""
    array = np.asarray(sprite).astype(np.float32)
    height, width = array.shape[:2]
    coarse = rng.normal(0.0, 1.0, size=(max(2, height // 6), max(2, width // 6))).astype(np.float32)
    noise = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
    fine = rng.normal(0.0, 0.35, size=(height, width)).astype(np.float32)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = ((xs / max(1, width - 1) - 0.5) * math.cos(angle) + (ys / max(1, height - 1) - 0.5) * math.sin(angle))
    factor = 1.0 + strength * (noise + fine) - 0.35 * ramp
    array[..., :3] = np.clip(array[..., :3] * factor[..., None], 0, 255)
    return Image.fromarray(array.astype(np.uint8), "RGBA")


def _canvas(size: tuple[int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    sprite = Image.new("RGBA", size, (0, 0, 0, 0))
    return sprite, ImageDraw.Draw(sprite)


def _highlight(draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float], alpha: int = 90) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    draw.ellipse((x0 + 0.22 * w, y0 + 0.15 * h, x0 + 0.42 * w, y0 + 0.32 * h), fill=(255, 255, 255, alpha))


# ---------------------------------------------------------------------------------------------
# One sprite function per class: (rng, size in px) -> RGBA sprite, object drawn inside it


def draw_tomato(rng: Rng, size: int) -> Image.Image:
    sprite, draw = _canvas((size, size))
    red = _jitter(rng, (205, 35, 30), 25)
    squash = rng.uniform(0.85, 1.0)
    top = size * (1 - squash) / 2
    draw.ellipse((1, top + 1, size - 2, size - top - 2), fill=(*red, 255))
    centre = size / 2
    for k in range(5):
        angle = k * 2 * math.pi / 5 + rng.uniform(-0.2, 0.2)
        tip = (centre + 0.22 * size * math.cos(angle), top + 0.14 * size + 0.12 * size * math.sin(angle))
        draw.line((centre, top + 0.14 * size, *tip), fill=(40, 120, 30, 255), width=max(1, size // 14))
    _highlight(draw, (1, top, size - 2, size - top))
    return _texture(rng, sprite, 0.05)


def draw_cucumber(rng: Rng, size: int) -> Image.Image:
    height = max(6, int(size * rng.uniform(0.24, 0.34)))
    sprite, draw = _canvas((size, height))
    green = _jitter(rng, (45, 105, 40), 18)
    draw.rounded_rectangle((0, 0, size - 1, height - 1), radius=height // 2, fill=(*green, 255))
    light = _jitter(rng, (110, 160, 80), 15)
    for k in range(3):
        y = height * (0.3 + 0.2 * k)
        draw.line((height * 0.5, y, size - height * 0.5, y), fill=(*light, 160), width=max(1, height // 10))
    for _ in range(size // 4):
        x, y = rng.uniform(height * 0.4, size - height * 0.4), rng.uniform(height * 0.2, height * 0.8)
        draw.point((x, y), fill=(200, 220, 170, 255))
    return _texture(rng, sprite, 0.06)


def draw_carrot(rng: Rng, size: int) -> Image.Image:
    height = max(6, int(size * rng.uniform(0.26, 0.36)))
    sprite, draw = _canvas((size, height))
    orange = _jitter(rng, (235, 120, 25), 20)
    body_start = size * 0.18
    draw.polygon([(body_start, 0.1 * height), (size - 1, height / 2), (body_start, 0.9 * height)], fill=(*orange, 255))
    draw.ellipse((body_start - 0.4 * height, 0.1 * height, body_start + 0.4 * height, 0.9 * height),
                 fill=(*orange, 255))
    for k in range(4):
        x = body_start + (size - body_start) * (0.15 + 0.18 * k)
        half = 0.38 * height * (1 - (x - body_start) / (size - body_start))
        draw.line((x, height / 2 - half, x + 2, height / 2 - half * 0.4), fill=(170, 80, 20, 255), width=1)
    for k in range(3):
        draw.line((body_start - 0.3 * height, height / 2, 0, height * (0.15 + 0.35 * k)), fill=(50, 140, 40, 255),
                  width=max(1, height // 7))
    return _texture(rng, sprite, 0.06)


def draw_egg(rng: Rng, size: int) -> Image.Image:
    width = max(6, int(size * rng.uniform(0.7, 0.8)))
    sprite, draw = _canvas((width, size))
    shell = _jitter(rng, (245, 238, 222), 8) if rng.random() < 0.6 else _jitter(rng, (205, 160, 115), 15)
    draw.ellipse((0, 0, width - 1, size - 1), fill=(*shell, 255))
    draw.ellipse((0, size * 0.3, width - 1, size - 1), fill=(*shell, 255))
    _highlight(draw, (0, 0, width, size), alpha=120)
    return _texture(rng, sprite, 0.02)


def draw_onion(rng: Rng, size: int) -> Image.Image:
    sprite, draw = _canvas((size, size))
    skin = _jitter(rng, (125, 45, 95), 18) if rng.random() < 0.5 else _jitter(rng, (190, 130, 60), 18)
    draw.ellipse((1, size * 0.18, size - 2, size - 2), fill=(*skin, 255))
    draw.polygon([(size * 0.36, size * 0.3), (size * 0.5, 0), (size * 0.64, size * 0.3)], fill=(*skin, 255))
    dark = tuple(int(c * 0.7) for c in skin)
    for k in range(1, 5):
        x = size * k / 5
        draw.arc((x - size * 0.25, size * 0.2, x + size * 0.25, size - 2), 250, 290, fill=(*dark, 255), width=1)
    return _texture(rng, sprite, 0.05)


def draw_lemon(rng: Rng, size: int) -> Image.Image:
    height = max(6, int(size * rng.uniform(0.68, 0.8)))
    sprite, draw = _canvas((size, height))
    yellow = _jitter(rng, (245, 215, 45), 15)
    draw.ellipse((size * 0.08, 0, size * 0.92, height - 1), fill=(*yellow, 255))
    draw.polygon([(0, height / 2), (size * 0.14, height * 0.38), (size * 0.14, height * 0.62)], fill=(*yellow, 255))
    draw.polygon([(size - 1, height / 2), (size * 0.86, height * 0.38), (size * 0.86, height * 0.62)],
                 fill=(*yellow, 255))
    for _ in range(size // 3):
        x, y = rng.uniform(size * 0.15, size * 0.85), rng.uniform(height * 0.15, height * 0.85)
        draw.point((x, y), fill=(220, 185, 30, 255))
    _highlight(draw, (size * 0.08, 0, size * 0.92, height))
    return _texture(rng, sprite, 0.04)


def draw_broccoli(rng: Rng, size: int) -> Image.Image:
    sprite, draw = _canvas((size, size))
    stem = _jitter(rng, (140, 185, 95), 15)
    draw.polygon([(size * 0.4, size * 0.45), (size * 0.6, size * 0.45), (size * 0.56, size - 1),
                  (size * 0.44, size - 1)], fill=(*stem, 255))
    floret = _jitter(rng, (40, 110, 45), 15)
    for _ in range(9):
        cx, cy = rng.uniform(0.25, 0.75) * size, rng.uniform(0.2, 0.5) * size
        radius = rng.uniform(0.13, 0.2) * size
        shade = _jitter(rng, floret, 12)
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(*shade, 255))
    for _ in range(size):
        x, y = rng.uniform(0.1, 0.9) * size, rng.uniform(0.05, 0.6) * size
        if sprite.getpixel((int(x), int(y)))[3]:
            draw.point((x, y), fill=(20, 70, 25, 255))
    return _texture(rng, sprite, 0.08)


def draw_potato(rng: Rng, size: int) -> Image.Image:
    sprite, draw = _canvas((size, size))
    brown = _jitter(rng, (175, 135, 85), 18)
    stretch = rng.uniform(0.7, 1.0)
    radii = [0.5 * size * rng.uniform(0.82, 1.0) for _ in range(14)]
    angles = [2 * math.pi * k / 14 for k in range(14)]
    draw.polygon([(size / 2 + radius * math.cos(angle) * 0.98, size / 2 + radius * math.sin(angle) * stretch)
                  for radius, angle in zip(radii, angles)], fill=(*brown, 255))
    for _ in range(4):
        x, y = rng.uniform(0.25, 0.75) * size, rng.uniform(0.3, 0.7) * size
        r = max(1, size // 22)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(110, 80, 45, 255))
    return _texture(rng, sprite, 0.07)


def draw_bell_pepper(rng: Rng, size: int) -> Image.Image:
    sprite, draw = _canvas((size, size))
    colour = [(200, 25, 20), (240, 190, 20), (50, 140, 40)][int(rng.integers(0, 3))]
    skin = _jitter(rng, colour, 15)
    for k in range(3):
        x0 = size * (0.05 + 0.27 * k)
        draw.rounded_rectangle((x0, size * 0.18, x0 + size * 0.38, size - 1), radius=size // 6, fill=(*skin, 255))
    draw.rectangle((size * 0.45, 0, size * 0.55, size * 0.22), fill=(40, 100, 30, 255))
    _highlight(draw, (0, size * 0.18, size, size))
    return _texture(rng, sprite, 0.04)


def draw_mushroom(rng: Rng, size: int) -> Image.Image:
    sprite, draw = _canvas((size, size))
    cap = _jitter(rng, (200, 170, 130), 20)
    stem = _jitter(rng, (235, 225, 205), 10)
    draw.rounded_rectangle((size * 0.36, size * 0.4, size * 0.64, size - 1), radius=size // 10, fill=(*stem, 255))
    draw.pieslice((0, 0, size - 1, size * 0.9), 180, 360, fill=(*cap, 255))
    draw.line((size * 0.08, size * 0.45, size * 0.92, size * 0.45), fill=(150, 120, 90, 255), width=max(1, size // 20))
    return _texture(rng, sprite, 0.05)


SPRITES: dict[str, Callable[[Rng, int], Image.Image]] = {
    "tomato": draw_tomato, "cucumber": draw_cucumber, "carrot": draw_carrot, "egg": draw_egg, "onion": draw_onion,
    "lemon": draw_lemon, "broccoli": draw_broccoli, "potato": draw_potato, "bell_pepper": draw_bell_pepper,
    "mushroom": draw_mushroom,
}
CLASS_NAMES: tuple[str, ...] = tuple(SPRITES)
"""The class names, index = class id: `SPRITES`' order."""


# ---------------------------------------------------------------------------------------------
# Backgrounds and clutter


def draw_background(rng: Rng, size: int) -> Image.Image:
    """A kitchen-like surface (wood, tiles, marble or a board on a counter): (size, size) RGB."""
    kind = int(rng.integers(0, 4))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # wood grain
        base = np.array(_jitter(rng, (160, 115, 70), 25), dtype=np.float32)
        grain = np.sin((ys * rng.uniform(20, 45) + 0.6 * np.sin(xs * rng.uniform(2, 6))) * math.pi)
        image = base * (1.0 + 0.12 * grain[..., None])
    elif kind == 1:  # tiles with grout
        base = np.array(_jitter(rng, (215, 215, 205), 20), dtype=np.float32)
        tile = rng.uniform(0.12, 0.25)
        grout = ((xs % tile) < 0.012) | ((ys % tile) < 0.012)
        image = np.where(grout[..., None], base * 0.7, base)
    elif kind == 2:  # marble counter
        base = np.array(_jitter(rng, (200, 200, 200), 30), dtype=np.float32)
        veins = np.abs(np.sin((xs * rng.uniform(3, 8) + ys * rng.uniform(3, 8)) * math.pi + 3 * np.sin(ys * 7)))
        image = base * (0.92 + 0.08 * veins[..., None])
    else:  # cutting board on a dark counter
        image = np.ones((size, size, 3), np.float32) * np.array(_jitter(rng, (70, 70, 75), 15), np.float32)
        board = np.array(_jitter(rng, (190, 150, 100), 20), np.float32)
        x0, y0 = rng.uniform(0.0, 0.15), rng.uniform(0.0, 0.15)
        x1, y1 = rng.uniform(0.8, 1.0), rng.uniform(0.8, 1.0)
        inside = (xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)
        image = np.where(inside[..., None], board * (1 + 0.06 * np.sin(ys * 60)[..., None]), image)
    noise = rng.normal(0.0, 6.0, size=(size, size, 1)).astype(np.float32)
    return Image.fromarray(np.clip(image + noise, 0, 255).astype(np.uint8), "RGB")


def draw_clutter(rng: Rng, image: Image.Image) -> None:
    """Distractors in place: plates, knives, a towel, crumbs (never one of the classes)."""
    size = image.width
    draw = ImageDraw.Draw(image, "RGBA")
    for _ in range(int(rng.integers(1, 5))):
        kind = int(rng.integers(0, 4))
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        scale = rng.uniform(0.1, 0.3) * size
        if kind == 0:  # plate
            grey = _jitter(rng, (235, 235, 240), 10)
            draw.ellipse((x - scale, y - scale, x + scale, y + scale), fill=(*grey, 255), outline=(180, 180, 190, 255),
                         width=max(1, size // 100))
            rim = 0.7 * scale
            draw.ellipse((x - rim, y - rim, x + rim, y + rim), outline=(200, 200, 210, 255))
        elif kind == 1:  # knife
            angle = rng.uniform(0, math.pi)
            dx, dy = math.cos(angle) * scale, math.sin(angle) * scale
            draw.line((x, y, x + dx, y + dy), fill=(190, 195, 200, 255), width=max(2, size // 60))
            draw.line((x, y, x - 0.6 * dx, y - 0.6 * dy), fill=(40, 30, 25, 255), width=max(3, size // 45))
        elif kind == 2:  # striped towel
            colour = _jitter(rng, (120, 140, 190), 60)
            draw.rectangle((x, y, x + scale * 1.5, y + scale), fill=(*colour, 230))
            for k in range(4):
                yy = y + scale * (k + 0.5) / 4
                draw.line((x, yy, x + scale * 1.5, yy), fill=(245, 245, 245, 230), width=max(1, size // 120))
        else:  # crumbs
            for _ in range(20):
                cx, cy = x + rng.normal(0, scale / 3), y + rng.normal(0, scale / 3)
                r = rng.uniform(0.5, 2.0) * size / 256
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(*_jitter(rng, (180, 140, 90), 30), 255))


# ---------------------------------------------------------------------------------------------
# One image


@dataclass(frozen=True)
class SynthObject:
    """One labelled object: class index and its visible box in pixels (x0, y0, x1, y1)."""

    class_id: int
    box: tuple[int, int, int, int]


def _sprite(rng: Rng, class_id: int, image_size: int) -> Image.Image:
    size = max(8, int(rng.uniform(0.1, 0.26) * image_size))
    sprite = SPRITES[CLASS_NAMES[class_id]](rng, size)
    return sprite.rotate(float(rng.uniform(0, 360)), resample=Image.BICUBIC, expand=True)


def compose_image(rng: Rng, image_size: int) -> tuple[Image.Image, list[SynthObject]]:
    """Draw one scene: background, clutter, 1-8 objects with partial overlaps.

    Returns the RGB image (image_size x image_size) and its objects with tight visible boxes.
    """
    image = draw_background(rng, image_size)
    draw_clutter(rng, image)
    instance = np.zeros((image_size, image_size), np.int16)  # 0 = background, k = object k
    full_area: list[int] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(1, 9))):
        class_id = int(rng.integers(0, len(CLASS_NAMES)))
        sprite = _sprite(rng, class_id, image_size)
        alpha = np.asarray(sprite)[..., 3] > 127
        if alpha.sum() < 12:
            continue
        for _attempt in range(20):
            x = int(rng.integers(-sprite.width // 4, image_size - 3 * sprite.width // 4))
            y = int(rng.integers(-sprite.height // 4, image_size - 3 * sprite.height // 4))
            trial = instance.copy()
            xs0, ys0 = max(0, x), max(0, y)
            xs1, ys1 = min(image_size, x + sprite.width), min(image_size, y + sprite.height)
            crop = alpha[ys0 - y:ys1 - y, xs0 - x:xs1 - x]
            if crop.sum() < 0.7 * alpha.sum():
                continue  # mostly outside the frame
            trial[ys0:ys1, xs0:xs1][crop] = len(classes) + 1
            if all((trial == k + 1).sum() >= _MIN_VISIBLE_SHARE * full_area[k] for k in range(len(classes))):
                instance = trial
                full_area.append(int(crop.sum()))
                classes.append(class_id)
                image.paste(sprite, (x, y), sprite)
                break
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))
    pixels = [np.nonzero(instance == k + 1) for k in range(len(classes))]  # (ys, xs) of each object
    return image, [SynthObject(class_id, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
                   for class_id, (ys, xs) in zip(classes, pixels)]


def yolo_label_text(objects: list[SynthObject], image_size: int) -> str:
    """YOLO label lines `cls cx cy w h` (normalised to [0, 1], 6 decimals)."""
    lines = []
    for obj in objects:
        x0, y0, x1, y1 = obj.box
        cx, cy = (x0 + x1) / 2 / image_size, (y0 + y1) / 2 / image_size
        w, h = (x1 - x0) / image_size, (y1 - y0) / image_size
        lines.append(f"{obj.class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")


def render_sample(seed: int, split: str, index: int, image_size: int) -> tuple[str, bytes, str]:
    """Image id, JPEG bytes and label text of one sample; a pure function of its arguments."""
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split], index])
    image, objects = compose_image(rng, image_size)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return f"{split}_{index:05d}", buffer.getvalue(), yolo_label_text(objects, image_size)


# ---------------------------------------------------------------------------------------------
# The dataset on disk


def _write_sample(task: tuple[Path, int, str, int, int]) -> tuple[str, str, str]:
    root, seed, split, index, image_size = task
    image_id, jpeg, label = render_sample(seed, split, index, image_size)
    (root / "images" / split / f"{image_id}.jpg").write_bytes(jpeg)
    (root / "labels" / split / f"{image_id}.txt").write_text(label, encoding="utf-8")
    return f"{split}/{image_id}", sha256_bytes(jpeg), sha256_bytes(label.encode("utf-8"))


def data_yaml_text(root: Path) -> str:
    """A data.yaml for the dataset at absolute `root`."""
    return yaml.safe_dump({
        "path": str(root),
        **{split: f"images/{split}" for split in SOURCE_SPLITS},
        "names": dict(enumerate(CLASS_NAMES)),
    }, sort_keys=False)


def _spec(preset: str, seed: int, counts: dict[str, int] | None, image_size: int | None) -> dict[str, object]:
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}: use one of {', '.join(PRESETS)}")
    chosen = PRESETS[preset]
    resolved_counts = dict(chosen.counts if counts is None else counts)
    if set(resolved_counts) != set(SOURCE_SPLITS) or any(n < 1 for n in resolved_counts.values()):
        raise ValueError(f"counts {resolved_counts} must give >= 1 image for each of {', '.join(SOURCE_SPLITS)}")
    size = chosen.image_size if image_size is None else int(image_size)
    if size < 32:
        raise ValueError(f"image_size {size} is too small: use 32 pixels or more")
    return {"generator": GENERATOR_VERSION, "preset": preset, "seed": int(seed), "counts": resolved_counts,
            "image_size": size, "names": list(CLASS_NAMES)}


def _existing_matches(out_dir: Path, spec: dict[str, object]) -> bool:
    manifest = out_dir / "synth_manifest.json"
    return manifest.is_file() and json.loads(manifest.read_text(encoding="utf-8")).get("spec") == spec


def build_synthetic_dataset(
    out_dir: str | os.PathLike[str],
    preset: str = "smoke",
    seed: int = 0,
    counts: dict[str, int] | None = None,
    image_size: int | None = None,
    workers: int = 1,
) -> Path:
    """Generate the dataset into `out_dir` (once) and return the absolute path of its data.yaml.

    If `out_dir` already holds this exact dataset (same spec in `synth_manifest.json`), nothing is
    written. If it holds anything else, a `FileExistsError` says so: nothing is overwritten.
    The dataset is built in a sibling temp dir and renamed into place, so a crash never leaves
    a half-written dataset behind under `out_dir`.
    """
    spec = _spec(preset, seed, counts, image_size)
    target = Path(out_dir).absolute()
    if target.exists():
        if _existing_matches(target, spec):
            return target / "data.yaml"
        if any(target.iterdir()):
            raise FileExistsError(f"{str(target)!r} exists and is not this synthetic dataset ({preset}, seed {seed}): "
                                  "choose an empty or new --out directory")
    ensure_writable_dir(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for split in SOURCE_SPLITS:
            (staging / "images" / split).mkdir(parents=True)
            (staging / "labels" / split).mkdir(parents=True)
        tasks = [(staging, spec["seed"], split, index, spec["image_size"])
                 for split in SOURCE_SPLITS for index in range(spec["counts"][split])]  # type: ignore[index]
        rows = map_tasks(_write_sample, tasks, workers)
        files = {key: {"image_sha256": image_sha, "label_sha256": label_sha} for key, image_sha, label_sha in rows}
        atomic_write_text(staging / "data.yaml", data_yaml_text(target))
        atomic_write_json(staging / "synth_manifest.json", {"spec": spec, "files": files})
        # Two sessions started by hand at once (or two flows on one root) both generate; the second rename then
        # meets a non-empty `target`: fine only when the winner's manifest carries the same spec (then it is
        # kept), raised otherwise. Not durable: the images are not fsynced either, so fsyncing the rename alone
        # would promise nothing.
        publish_dir(staging, target, lambda existing: _existing_matches(existing, spec), durable=False)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target / "data.yaml"
