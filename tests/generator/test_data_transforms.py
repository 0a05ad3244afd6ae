"""Image transforms: reading any radiograph to [-1, 1] at a square resolution, and the paper's augmentation."""

import numpy as np
import pytest
import torch
from PIL import Image

from generator.data import DataError
from generator.data.phantom import Exogenous, PhantomSCM
from generator.data.transforms import augment_pad_crop_flip, load_image


def test_non_square_8_and_16_bit_images_are_centre_cropped_and_scaled(tmp_path):
    pixels = np.zeros((60, 40), dtype=np.uint8)
    pixels[:10] = 255  # the top band is cropped away: 60x40 keeps rows 10..49
    pixels[10:, 20:] = 255  # right half of the kept square is white
    Image.fromarray(pixels).save(tmp_path / "portrait.png")
    x = load_image(tmp_path / "portrait.png", 20)
    assert x.shape == (1, 20, 20) and x.dtype == torch.float32
    assert x[0, :, :8].max() == -1.0 and x[0, :, 12:].min() == 1.0
    Image.fromarray(pixels.astype(np.uint16) * 200).save(tmp_path / "deep.png")
    deep = load_image(tmp_path / "deep.png", 20)
    assert deep.min() == -1.0 and deep.max() == 1.0


def test_unreadable_file_is_named(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 nope")
    with pytest.raises(DataError, match="bad.jpg: unreadable or corrupt image"):
        load_image(tmp_path / "bad.jpg", 32)


def test_pad_crop_flip_keeps_shape_and_content():
    x = torch.linspace(-1, 1, 2 * 16 * 16).view(2, 1, 16, 16)
    generator = torch.Generator().manual_seed(0)
    out = augment_pad_crop_flip(x, pad=3, generator=generator)
    assert out.shape == x.shape
    same = augment_pad_crop_flip(x, pad=0, flip_probability=0.0)
    assert torch.equal(same, x)
    flipped = augment_pad_crop_flip(x, pad=0, flip_probability=1.0)
    assert torch.equal(flipped, x.flip(-1))


def test_exogenous_noise_indexes_like_a_tensor():
    _, u = PhantomSCM().sample(5, 0)
    assert len(u) == 5 and len(u[1:3]) == 2 and len(u[[0, 4]]) == 2 and len(u[2]) == 1
    assert torch.equal(u[torch.tensor([3])]["rib_phase"], u["rib_phase"][3:4])
    assert torch.equal(Exogenous.cat([u[:2], u[2:]])["noise_seed"], u["noise_seed"])


def test_age_enlarges_the_heart():
    scm = PhantomSCM()
    pa, u = scm.sample(16, 4)
    healthy = torch.zeros(16, dtype=torch.int64)
    young, _ = scm.render({**pa, "age": torch.full((16,), 25.0), "disease": healthy}, u, 64)
    old, _ = scm.render({**pa, "age": torch.full((16,), 85.0), "disease": healthy}, u, 64)

    def heart_width(x):
        """Widest run of mediastinal/heart-bright pixels through the heart's column, above the domes."""
        bright = (x[:, 0, int(0.45 * 64) : int(0.66 * 64)] > 0.0).numpy()
        widths = np.zeros(bright.shape[:2])
        for i, j in np.ndindex(*bright.shape[:2]):
            row = bright[i, j]
            left = right = 36  # the heart's centre column, left of the patient's midline (image right)
            while left > 0 and row[left - 1]:
                left -= 1
            while right < 63 and row[right + 1]:
                right += 1
            widths[i, j] = (right - left + 1) if row[36] else 0
        return torch.tensor(widths.max(axis=1))

    assert (heart_width(old) >= heart_width(young) + 1).all() and (heart_width(old) - heart_width(young)).mean() >= 2
