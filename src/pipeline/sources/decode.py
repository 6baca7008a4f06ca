"""Image decoding that runs inside pool workers: Pillow and numpy only, no torch.

Each function takes a chunk of absolute paths and never raises for a bad file: it returns the
reason instead, so the parent can quarantine it. Formats are allow-listed by what Pillow
detects in the bytes, never by file extension, and ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays
off, so a truncated file fails to decode instead of yielding a half-grey image. EXIF
orientation is applied (the probe reports the oriented size), and 16-bit greyscale is scaled
to 8 bits rather than clipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.core.errors import describe
from pipeline.core.reading import open_regular

ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "F"})
# Pillow opens 16-bit greyscale PNGs as I;16 (older versions: I), and its conversion to L
# clips every value above 255 to white.
SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class BadImage(Exception):
    """A file that must be quarantined; the message is the reason recorded in meta.json."""


@dataclass(frozen=True)
class Probe:
    """What the header says about one file (or why it is unusable), and the file's sha256."""

    sha256: str
    width: int = 0
    height: int = 0
    mode: str = ""
    reason: str | None = None


@contextlib.contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """Pillow's own bomb guard at ``max_pixels``, its warning promoted to an error."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _bomb_reason(pixels: str, max_pixels: int) -> str:
    return f"decompression-bomb guard: {pixels} exceeds data.max_image_pixels={max_pixels}"


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open from bytes (header only); raise BadImage for empty, unknown, banned or huge files."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        found = re.search(r"\((\d+) pixels\)", str(error))
        pixels = f"{found.group(1)} pixels" if found else str(error)
        raise BadImage(_bomb_reason(pixels, max_pixels)) from None
    except UnidentifiedImageError:
        raise BadImage("not a PNG, JPEG, BMP or WebP image") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise BadImage(_bomb_reason(f"{width}x{height} = {width * height} pixels", max_pixels))
    return image


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 = upright); unreadable EXIF counts as upright, as in browsers."""
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # a corrupt EXIF block must not cost an otherwise good image
        return 1
    return value if value in UPRIGHT else 1


def oriented_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    return (height, width) if _orientation(image) in (5, 6, 7, 8) else (width, height)


def upright(image: Image.Image) -> Image.Image:
    orientation = _orientation(image)
    return image.transpose(UPRIGHT[orientation]) if orientation != 1 else image


def eight_bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale scaled to 0..255 (65535 -> 255, rounded); other modes unchanged."""
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L")


def _read(path: str) -> bytes:
    try:
        with open_regular(path) as handle:  # a pipe among the images would hang the read
            return handle.read()
    except OSError as error:
        raise BadImage(f"unreadable ({error.strerror or error})") from None


def probe_chunk(start: int, paths: Sequence[str], max_pixels: int) -> list[Probe]:
    del start  # probes are returned, not written in place
    probes = []
    with _pixel_limit(max_pixels):
        for path in paths:
            try:
                data = _read(path)
            except BadImage as bad:
                probes.append(Probe(sha256="", reason=str(bad)))
                continue
            digest = hashlib.sha256(data).hexdigest()
            try:
                with _open(data, max_pixels) as image:
                    probes.append(Probe(digest, *oriented_size(image), image.mode))
            except BadImage as bad:
                probes.append(Probe(digest, reason=str(bad)))
            except Exception as error:  # any header-parser failure is the file's fault
                probes.append(Probe(digest, reason=f"bad header ({describe(error)})"))
    return probes


def decode_one(path: str, max_pixels: int, channels: int, height: int, width: int) -> np.ndarray:
    """Fully decode one file to uint8 CHW, converted and resized; raise BadImage if unusable."""
    data = _read(path)
    try:
        with _open(data, max_pixels) as image:
            image.load()  # full decode: truncated or corrupt data fails here
            converted = eight_bit(upright(image)).convert("L" if channels == 1 else "RGB")
    except (BadImage, MemoryError):
        raise
    except Exception as error:  # decoder errors vary by format: OSError, SyntaxError, zlib...
        raise BadImage(f"cannot decode ({describe(error)})") from None
    if converted.size != (width, height):
        # Stretched to the target (no crop), like torchvision's Resize((h, w)).
        converted = converted.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(converted, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


# Output arrays registered here before the pool forks are visible to the workers by key; the
# array's memory is MAP_SHARED (see parallel.shared_empty), so their writes reach the parent.
_TARGETS: dict[int, np.ndarray] = {}


@contextlib.contextmanager
def target(array: np.ndarray) -> Iterator[int]:
    """Register ``array`` as a decode target for the duration; yields its key."""
    key = id(array)
    _TARGETS[key] = array
    try:
        yield key
    finally:
        del _TARGETS[key]


def decode_into(
    start: int,
    paths: Sequence[str],
    key: int,
    max_pixels: int,
    channels: int,
    height: int,
    width: int,
) -> list[tuple[int, str]]:
    """Decode ``paths`` into rows ``start..`` of the registered target; return failed rows
    (as offsets from ``start``) with their reasons. Failed rows are left as they were."""
    out = _TARGETS[key]
    failures: list[tuple[int, str]] = []
    with _pixel_limit(max_pixels):
        for offset, path in enumerate(paths):
            try:
                out[start + offset] = decode_one(path, max_pixels, channels, height, width)
            except BadImage as bad:
                failures.append((offset, str(bad)))
    return failures
