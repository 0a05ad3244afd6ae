"""Hostile and broken images: a decompression bomb or a file that is no image is refused before it is decoded, with a
message that names the file and says what is wrong (never Python internals such as `<_io.BytesIO object ...>`), in
the image pipeline, the admin's upload form and the staff API."""

import io
import struct
import zlib

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image, PngImagePlugin

from studyplatform import images
from studyplatform.models import Case, Stimulus
from tests.study.factories import StudyFactory, real_image_bytes

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("media_root")]


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width, height):
    """A small file whose header announces width x height 8-bit grayscale pixels (the data is one compressed row:
    a decoder that trusted the header would allocate the whole image first)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * (width + 1), 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def text_bomb_png():
    """A valid 8x8 PNG with a compressed text chunk that inflates to 64 MB."""
    info = PngImagePlugin.PngInfo()
    out = io.BytesIO()
    Image.new("L", (8, 8)).save(out, format="PNG", pnginfo=info)
    png = out.getvalue()
    payload = b"Comment\x00\x00" + zlib.compress(b"\x00" * (64 * 1024 * 1024), 9)
    end = png.rindex(b"IEND") - 4
    return png[:end] + _chunk(b"zTXt", payload) + png[end:]


HOSTILE = {
    "bomb-64mp.png": (bomb_png(8000, 8000), "8000x8000 pixels"),
    "bomb-400mp.png": (bomb_png(20000, 20000), "decompression bomb"),
    "bomb-text.png": (text_bomb_png(), "bomb-text.png"),
    "notes.txt": (b"these are not pixels", "not an image format"),
    "truncated.png": (bomb_png(64, 64)[:40], "bomb"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_the_pipeline_names_the_file_and_the_problem(name):
    data, expected = HOSTILE[name]
    with pytest.raises(images.ImageRejected) as caught:
        images.normalise(data, name=name, working_size=16, display_size=16)
    message = str(caught.value)
    assert message.startswith(f"{name}: "), message
    assert "BytesIO" not in message and " at 0x" not in message, message
    if expected != "bomb":
        assert expected in message, message


def test_a_bomb_is_refused_before_its_pixels_are_decoded(monkeypatch):
    def no_decoding(self, *args, **kwargs):
        raise AssertionError("the pixels of a bomb were decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
    for width, height in ((8000, 8000), (20000, 20000), (1, 60_000_000)):
        with pytest.raises(images.ImageRejected, match="larger than the|decompression bomb"):
            images.normalise(bomb_png(width, height), name="bomb.png")


def case_form(study, upload):
    return {
        "study": study.pk,
        "block": 1,
        "label": "P01",
        "source_id": "x",
        "true_condition": "healthy",
        "cf_condition": "healthy",
        "position": 0,
        "real_image": upload,
        "stimuli-TOTAL_FORMS": 0,
        "stimuli-INITIAL_FORMS": 0,
    }


@pytest.mark.parametrize("name", ["bomb-400mp.png", "bomb-64mp.png", "notes.txt"])
def test_the_admin_upload_shows_a_form_error_naming_the_file(admin_client, name):
    study = StudyFactory()
    data, expected = HOSTILE[name]
    reply = admin_client.post("/admin/studyplatform/case/add/", case_form(study, SimpleUploadedFile(name, data)))
    page = reply.content.decode()
    assert reply.status_code == 200
    assert f"{name}: " in page and expected in page
    assert "BytesIO" not in page and " at 0x" not in page and "Traceback" not in page
    assert not Case.objects.exists() and not Stimulus.objects.exists()


def test_the_staff_api_upload_names_the_file(admin_client):
    study = StudyFactory()
    good, good_name = real_image_bytes("healthy", 0)
    for name in ("bomb-400mp.png", "notes.txt"):
        data, expected = HOSTILE[name]
        body = {"study": study.pk, "block": 1, "label": "P01", "true_condition": "healthy"}
        reply = admin_client.post("/api/cases/", {**body, "real_image": SimpleUploadedFile(name, data)})
        assert reply.status_code == 400, reply.content[:300]
        text = reply.content.decode()
        assert f"{name}: " in text and expected in text and "BytesIO" not in text
    assert not Case.objects.exists()
    body = {"study": study.pk, "block": 1, "label": "P01", "true_condition": "healthy"}
    reply = admin_client.post("/api/cases/", {**body, "real_image": SimpleUploadedFile(good_name, good)})
    assert reply.status_code == 201, reply.content[:300]
