"""What a participant's browser receives cannot tell a real image from a counterfactual."""

import io
import re

import pytest
from PIL import Image

from studyplatform import images
from studyplatform.models import Participant, Stimulus
from tests.study.factories import real_image_bytes, synthetic_image_bytes

pytestmark = pytest.mark.django_db
SOURCE_WORDS = re.compile(r"baseline|proposed|counterfactual|model|\.png|source", re.I)


def fetch(client, stimulus):
    response = client.get(f"/i/{stimulus.token}")
    assert response.status_code == 200
    return response


def test_real_and_synthetic_images_arrive_identical_in_format_size_headers_and_metadata(client, open_study):
    responses = {source: [] for source in Stimulus.Source.values}
    for stimulus in Stimulus.objects.filter(case__study=open_study):
        responses[stimulus.source].append(fetch(client, stimulus))
    header_sets, lengths, decoded = set(), set(), set()
    for source, received in responses.items():
        assert received, source
        for response in received:
            header_sets.add(tuple(sorted((k.lower(), v) for k, v in response.headers.items())))
            lengths.add(len(response.content))
            image = Image.open(io.BytesIO(response.content))
            decoded.add((image.format, image.mode, image.size))
            # PNG chunks other than the pixels and the header reveal nothing because there are none.
            assert not image.info, image.info
            assert b"tEXt" not in response.content and b"iTXt" not in response.content
            assert b"eXIf" not in response.content and b"tIME" not in response.content
    assert len(header_sets) == 1  # same header names AND values, including Content-Length
    assert len(lengths) == 1
    assert decoded == {("PNG", "L", (open_study.display_size, open_study.display_size))}
    headers = dict(header_sets.pop())
    assert headers["content-type"] == "image/png" and headers["cache-control"].startswith("private")
    assert "last-modified" not in headers and "etag" not in headers


def _normalised_page(page, trial_id):
    """A trial page with the parts that legitimately differ between trials blanked out."""
    page = page.replace(trial_id, "TRIAL")
    page = re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "CSRF", page)
    page = re.sub(r"/i/[A-Za-z0-9_-]+", "/i/IMAGE", page)
    page = re.sub(r'value="\d+" aria-describedby', 'value="N" aria-describedby', page)
    page = re.sub(r"\d+ of \d+", "N of M", page)
    return re.sub(r'aria-valuenow="\d+"|<progress [^>]*>', "PROGRESS", page)


def test_block1_pages_of_real_and_synthetic_images_differ_only_in_opaque_ids(client, open_study):
    client.get(f"/s/{open_study.slug}/?PROLIFIC_PID=abc123")
    client.post(f"/s/{open_study.slug}/", {"PROLIFIC_PID": "abc123", "decision": "accept"})
    client.post(f"/s/{open_study.slug}/run/", {"action": "begin", "block": "1"})
    participant = Participant.objects.get()
    pages_by_source = {}
    for trial in participant.plan:
        if trial["block"] != 1:
            break
        page = client.get(f"/s/{open_study.slug}/run/").content.decode()
        assert not SOURCE_WORDS.search(page), SOURCE_WORDS.search(page)
        stimulus = Stimulus.objects.get(pk=trial["stimulus"])
        assert f"/i/{stimulus.token}" in page
        for text in (stimulus.case.label, stimulus.original_name, stimulus.file.split("/")[-1], stimulus.sha256):
            assert text not in page
        pages_by_source.setdefault(trial["source"], set()).add(_normalised_page(page, trial["id"]))
        answer = {"trial": trial["id"], "diagnosis": "healthy", "realness": "50", "slider_moved": "1", "rt_ms": "5"}
        assert client.post(f"/s/{open_study.slug}/run/", answer).status_code == 302
    assert set(pages_by_source) == {"real", "baseline", "proposed"}
    assert len(set().union(*pages_by_source.values())) == 1


def test_image_tokens_are_long_random_and_unrelated_to_the_file(open_study):
    for stimulus in Stimulus.objects.filter(case__study=open_study):
        assert len(stimulus.token) >= 32 and stimulus.token not in stimulus.file


def test_the_pipeline_gives_every_input_the_same_form():
    real, _ = real_image_bytes("effusion", 0)
    variants = [
        real,
        synthetic_image_bytes(real, "proposed", size=64),
        synthetic_image_bytes(real, "baseline", size=300),
    ]
    wide = io.BytesIO()
    Image.new("I;16", (120, 80), 30000).save(wide, format="PNG")
    variants.append(wide.getvalue())
    outputs = [images.normalise(data, working_size=64, display_size=128) for data in variants]
    assert len({len(o) for o in outputs}) == 1
    for output in outputs:
        image = Image.open(io.BytesIO(output))
        assert (image.format, image.mode, image.size, image.info) == ("PNG", "L", (128, 128), {})


def test_a_corrupt_or_empty_upload_gets_a_clear_error():
    with pytest.raises(images.ImageRejected, match="scan.png: not a readable image"):
        images.normalise(b"\x89PNG\r\n\x1a\nthis is not a png", name="scan.png")
    real, _ = real_image_bytes("healthy", 0)
    with pytest.raises(images.ImageRejected, match="cut.png"):
        images.normalise(real[: len(real) // 2], name="cut.png")
    with pytest.raises(images.ImageRejected, match="empty"):
        images.normalise(b"", name="none.png")


def test_an_unknown_image_token_is_404(client, db):
    assert client.get("/i/not-a-token").status_code == 404
