"""The one normalisation pipeline every stimulus goes through, real or synthetic.

A participant must not be able to tell a real radiograph from a counterfactual by anything but its content. So every
image is decoded, reduced to 8-bit grayscale, resampled through the same two steps (to the generator's working
resolution, then to the display size, Lanczos both times), stripped of every metadata chunk and written as a PNG with
*stored* (uncompressed) deflate blocks. Stored blocks make the file size a function of the image size alone: a smooth
synthetic image cannot give itself away by compressing better than a noisy real one.
"""

import hashlib
import io
import re
import secrets
import warnings
from pathlib import Path

import numpy as np
from django.conf import settings
from PIL import Image, UnidentifiedImageError

RESAMPLING = Image.Resampling.LANCZOS
PNG_SETTINGS = {"format": "PNG", "compress_level": 0, "optimize": False}
STIMULUS_DIR = "stimuli"
# Decoding a hostile file must not exhaust memory: 50 megapixels is far above any radiograph. The limit is checked
# on the header, before any pixel is decoded.
MAX_PIXELS = 50_000_000


class ImageRejected(ValueError):
    """The upload is not an image the pipeline can use; the message names the file and the reason."""


def _decode(data, name):
    """The decoded image, or ImageRejected with a message that names the file. Only the header is read before the
    size check, so a decompression bomb (a small file announcing a huge image) is refused without decoding it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageRejected(
                        f"{name}: {width}x{height} pixels is larger than the {MAX_PIXELS // 1_000_000}-megapixel limit "
                        "(a radiograph is far smaller; the file may be a decompression bomb)"
                    )
                image.load()
                return image.copy()
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected(
            f"{name}: the image is larger than the {MAX_PIXELS // 1_000_000}-megapixel limit and was not decoded "
            "(a decompression bomb)"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected(f"{name}: not a readable image (not an image format that can be decoded)") from exc
    except MemoryError as exc:
        raise ImageRejected(f"{name}: decoding it needs more memory than is available") from exc
    except Exception as exc:  # any decoder failure on a hostile file is a refusal, not a crash
        raise ImageRejected(f"{name}: not a readable image ({_describe(exc)})") from exc


def _describe(error):
    """The decoder's message without Python internals (object reprs and addresses)."""
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the file", str(error)).strip()
    return text or type(error).__name__


def _to_gray8(image):
    """8-bit grayscale. 16-bit and float radiographs are stretched over their own range, colour is converted by
    luminance and transparency is flattened onto black (the background of a radiograph)."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = np.zeros_like(values) if high <= low else (values - low) * (255.0 / (high - low))
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("L")


def _square(image):
    """Pad the shorter side with black so that resizing never distorts the anatomy."""
    side = max(image.size)
    if image.width == image.height:
        return image
    canvas = Image.new("L", (side, side), 0)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def normalise(data, name="upload", working_size=192, display_size=512):
    """Return the PNG bytes a participant receives for the image in `data` (bytes of any format PIL reads)."""
    if not data:
        raise ImageRejected(f"{name}: the file is empty")
    image = _square(_to_gray8(_decode(data, name)))
    image = image.resize((working_size, working_size), RESAMPLING)
    image = image.resize((display_size, display_size), RESAMPLING)
    # A fresh image holds the pixels only: no text chunks, ICC profile, gamma, EXIF or timestamps survive.
    clean = Image.frombytes("L", image.size, image.tobytes())
    out = io.BytesIO()
    clean.save(out, **PNG_SETTINGS)
    return out.getvalue()


def store(png_bytes):
    """Write normalised bytes under MEDIA_ROOT with a random name; return (relative path, sha256)."""
    relative = f"{STIMULUS_DIR}/{secrets.token_urlsafe(18)}.png"
    path = Path(settings.MEDIA_ROOT) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(png_bytes)
    tmp.replace(path)
    return relative, hashlib.sha256(png_bytes).hexdigest()


def stored_path(relative):
    return Path(settings.MEDIA_ROOT) / relative


def remove(relative):
    stored_path(relative).unlink(missing_ok=True)
