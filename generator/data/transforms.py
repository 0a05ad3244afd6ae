"""Image transforms shared by the loaders: read, square, resize, scale to [-1, 1]; and training augmentation."""

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .datasets import DataError

# The largest image decoded, checked on the header before any pixel is read: 50 megapixels is far above any
# radiograph, so a larger file is a decompression bomb (a small file announcing a huge image) or not a radiograph.
# The same limit as the study platform's stimulus pipeline (studyplatform.images.MAX_PIXELS), which cannot be imported
# here: this package never imports the web application.
MAX_PIXELS = 50_000_000


def load_image(path, resolution):
    """Read a radiograph as float32 [1, R, R] in [-1, 1].

    Non-square images are centre-cropped to a square first (MIMIC-CXR films are portrait or landscape), then resized
    with PIL's antialiased bilinear filter. 16-bit images are scaled by their own maximum, as torchxrayvision does.
    An unreadable file, or one whose header announces more than MAX_PIXELS pixels, raises a DataError naming it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
            with Image.open(path) as image:
                _check_size(image, path)
                image.load()
                pixels = _grey_pixels(image)
    except DataError:
        raise
    except Image.DecompressionBombError as error:
        raise DataError(_too_large(path, "the image")) from error
    except MemoryError as error:
        raise DataError(f"{path}: decoding it needs more memory than is available") from error
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise DataError(f"{path}: unreadable or corrupt image ({error})") from error
    if pixels.size == 0:
        raise DataError(f"{path}: empty image")
    height, width = pixels.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(pixels[top : top + side, left : left + side])
    resized = np.asarray(square.resize((resolution, resolution), Image.BILINEAR), dtype=np.float32)
    return torch.from_numpy(resized * 2.0 - 1.0).unsqueeze(0)


def _check_size(image, path):
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise DataError(_too_large(path, f"{width}x{height} pixels"))


def _too_large(path, what):
    return (
        f"{path}: {what} is larger than the {MAX_PIXELS // 1_000_000}-megapixel limit and was not decoded "
        "(a radiograph is far smaller; the file may be a decompression bomb)"
    )


def _grey_pixels(image):
    """Grey levels as a float32 array in [0, 1]."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.float32)
        top = pixels.max()
        return pixels / top if top > 0 else pixels
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def to_unit_range(x):
    """[-1, 1] -> [0, 1] (for saving images)."""
    return (x.clamp(-1.0, 1.0) + 1.0) / 2.0


def to_uint8(x):
    """[-1, 1] tensor -> uint8 numpy array, for PNG output."""
    return (to_unit_range(x) * 255.0).round().to(torch.uint8).cpu().numpy()


def augment_pad_crop_flip(x, pad, flip_probability=0.5, generator=None):
    """Training augmentation of the paper (Appendix B): zero-pad every border by `pad` pixels (-1 is black), take a
    random crop back to the original size, and flip horizontally with probability 0.5. Works on a batch [B, 1, H, W].
    """
    batch, _, height, width = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=-1.0)
    offsets = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator)
    rows = (offsets[:, 0].view(-1, 1) + torch.arange(height).view(1, -1)).view(batch, height, 1)
    cols = (offsets[:, 1].view(-1, 1) + torch.arange(width).view(1, -1)).view(batch, 1, width)
    cropped = padded[:, 0][torch.arange(batch).view(-1, 1, 1), rows, cols].unsqueeze(1)
    flip = torch.rand(batch, generator=generator) < flip_probability
    return torch.where(flip.view(-1, 1, 1, 1), cropped.flip(-1), cropped)
