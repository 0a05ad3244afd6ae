"""Blinding audit: crawl everything a participant's browser can request in a whole session (every page, every URL
those pages reference, the static files, every image, and the same session through the JSON API) and check that
nothing in any of it reveals where an image came from.

What the server knows and the participant must not: the source of each image (real, baseline, proposed), the model
of each Block-2 counterfactual, the case labels, data set ids and uploaded file names, the generator's run names and
checkpoints, and the stored file names. The audit looks for all of them in text, URLs and headers, reads the PNG
chunk list of every image, and checks that no size or format property separates real from synthetic images.
"""

import json
import re
import struct
from collections import defaultdict
from pathlib import Path

import pytest
from django.contrib.staticfiles import finders
from django.test import Client

from studyplatform.models import Case, Stimulus

pytestmark = pytest.mark.django_db

SOURCE_WORDS = re.compile(r"\b(baseline|proposed|counterfactual|real image|synthetic image|cf_model|image_source)\b")
URL_IN_PAGE = re.compile(r'(?:src|href)="([^"#]+)"')
IMAGE_URL = re.compile(r"^/i/[A-Za-z0-9_-]{22,}$")
ALLOWED_PNG_CHUNKS = {b"IHDR", b"IDAT", b"IEND"}
PUBLIC_TRIAL_KEYS = {"id", "block", "phase", "number", "images", "slider_start", "instruction"}
# Headers that are allowed to differ between two responses of the same kind.
VOLATILE_HEADERS = {"date", "set-cookie", "vary"}


class Crawl:
    """Every response the browser received, with the URL that asked for it."""

    def __init__(self):
        self.texts = []  # (url, text) of pages, JSON, scripts, styles and header dumps
        self.images = {}  # image url -> (headers, body)
        self.trial_pages = []  # (phase, image urls, page text)
        self.final_page = ""

    def record(self, url, response):
        headers = {k.lower(): v for k, v in response.headers.items()}
        self.texts.append((url, json.dumps(headers)))
        if url.startswith("/i/"):
            self.images[url] = (headers, response.content)
        else:
            self.texts.append((url, response.content.decode()))


def png_chunks(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        chunks.append(data[offset + 4 : offset + 8])
        offset += 12 + length
    return chunks


def png_header(data):
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", data[16:26])
    return width, height, bit_depth, colour_type


def follow_references(browser, crawl, page_url, html, fetched):
    for url in URL_IN_PAGE.findall(html):
        if url in fetched or url.startswith(("http://", "https://", "data:")):
            continue
        fetched.add(url)
        if url.startswith("/static/"):
            # The test server does not collect static files; the browser would get exactly these bytes.
            path = finders.find(url.removeprefix("/static/"))
            assert path, f"{page_url} refers to a missing static file {url}"
            crawl.texts.append((url, Path(path).read_text()))
            crawl.texts.append((url, url))
            continue
        response = browser.get(url)
        assert response.status_code in (200, 302), (page_url, url, response.status_code)
        crawl.record(url, response)


def crawl_pages(study):
    """Take a whole session through the pages, as a browser that loads everything each page refers to."""
    browser, crawl, fetched = Client(), Crawl(), set()
    entry = f"/s/{study.slug}/?PROLIFIC_PID=auditor01&STUDY_ID=&SESSION_ID=a1"
    response = browser.get(entry)
    crawl.record(entry, response)
    follow_references(browser, crawl, entry, response.content.decode(), fetched)
    browser.post(f"/s/{study.slug}/", {"PROLIFIC_PID": "auditor01", "decision": "accept"})
    run_url = f"/s/{study.slug}/run/"
    for _ in range(200):
        response = browser.get(run_url)
        html = response.content.decode()
        crawl.record(run_url, response)
        follow_references(browser, crawl, run_url, html, fetched)
        if 'name="action" value="begin"' in html:
            block = re.search(r'name="block" value="(\d)"', html).group(1)
            browser.post(run_url, {"action": "begin", "block": block})
            continue
        if "trial-form" not in html:
            crawl.final_page = html
            break
        phase = re.search(r'data-phase="(\w+)"', html).group(1)
        trial_id = re.search(r'name="trial" value="([^"]+)"', html).group(1)
        shown = re.findall(r'<img src="(/i/[^"]+)"', html)
        crawl.trial_pages.append((phase, shown, html))
        answer = {"trial": trial_id, "diagnosis": "healthy", "rt_ms": "800", "confidence": "2"}
        if phase == "block1":
            answer = {**answer, "realness": "61", "slider_moved": "1", "reasons": ["1"], "confidence": ""}
        assert browser.post(run_url, answer).status_code == 302
    withdraw = f"/s/{study.slug}/withdraw/"
    crawl.record(withdraw, browser.get(withdraw))
    assert study.completion_code in crawl.final_page, "the crawl did not reach the end of the session"
    return crawl


def crawl_json_api(study, crawl):
    """The same session through the participant JSON API; returns every public trial object seen."""
    api, trials = Client(), []
    body = {"study": study.slug, "consent": True, "prolific_pid": "auditor02"}
    step = api.post("/api/participant/sessions/", body, content_type="application/json")
    crawl.record("/api/participant/sessions/", step)
    step = step.json()
    token = step["token"]
    while step["state"] != "complete":
        if step["state"] == "instructions":
            reply = api.post(
                f"/api/participant/{token}/begin/", {"block": step["block"]}, content_type="application/json"
            )
        else:
            trial = step["trial"]
            trials.append(trial)
            for url in trial["images"] + step["preload"]:
                if url not in crawl.images:
                    crawl.record(url, api.get(url))
            answer = {"trial": trial["id"], "diagnosis": "effusion", "rt_ms": 700}
            if trial["phase"] == "block1":
                answer.update(realness=12, slider_moved=True, reasons=[])
            elif trial["phase"] in ("pre", "post"):
                answer["confidence"] = 5
            reply = api.post(f"/api/participant/{token}/answers/", answer, content_type="application/json")
        crawl.record(f"/api/participant/{token}/", reply)
        step = reply.json()["next"] if "next" in reply.json() else reply.json()
    return trials


def secrets_of(study):
    """Every string the server knows that would give a source away if a participant saw it."""
    found = set()
    for stimulus in Stimulus.objects.filter(case__study=study).select_related("case"):
        found |= {stimulus.file, Path(stimulus.file).name, stimulus.original_name, stimulus.sha256}
        found |= {str(v) for v in stimulus.provenance.values() if isinstance(v, str) and len(str(v)) > 3}
    for case in Case.objects.filter(study=study):
        found |= {case.source_id}
    return {s for s in found if s}


def source_of_url(study):
    return {
        f"/i/{token}": source
        for token, source in Stimulus.objects.filter(case__study=study).values_list("token", "source")
    }


@pytest.fixture
def audited(open_study):
    crawl = crawl_pages(open_study)
    json_trials = crawl_json_api(open_study, crawl)
    return open_study, crawl, json_trials


def test_no_text_url_or_header_names_a_source_a_model_or_a_file(audited):
    study, crawl, json_trials = audited
    secrets = secrets_of(study)
    crawled = {url for url, _ in crawl.texts}
    assert {"/static/study.css", "/static/study.js"} <= crawled
    assert {url for _, shown, _ in crawl.trial_pages for url in shown} <= set(crawl.images)
    assert len(crawl.trial_pages) == 3 * study.block1_patients + 2 * study.block2_cases
    for url, text in crawl.texts:
        words = SOURCE_WORDS.findall(text.lower())
        assert not words, f"{url} mentions {words}"
        leaked = [secret for secret in secrets if secret in text or secret in url]
        assert not leaked, f"{url} reveals {leaked}"
    for url in crawl.images:
        assert IMAGE_URL.match(url), url
    for trial in json_trials:
        assert set(trial) <= PUBLIC_TRIAL_KEYS, set(trial) - PUBLIC_TRIAL_KEYS


def test_trial_pages_differ_only_in_opaque_ids_whatever_the_source_or_model(audited):
    study, crawl, _ = audited
    sources = source_of_url(study)
    versions = defaultdict(set)
    for phase, shown, html in crawl.trial_pages:
        for url in shown:
            html = html.replace(url, "/i/IMAGE")
        html = re.sub(r'value="[A-Za-z0-9_-]{16,}"', 'value="ID"', html)
        html = re.sub(r'value="\d+" aria-describedby', 'value="N" aria-describedby', html)
        html = re.sub(r"\d+ of \d+|aria-valuenow=\"\d+\"|<progress [^>]*>|href=\"/i/IMAGE\"", "N", html)
        html = re.sub(r'<link rel="preload" as="image" href="/i/[^"]+">', "", html)
        kind = tuple(sources[url] for url in shown)
        versions[phase].add(html)
        assert all(sources[url] in ("real", "baseline", "proposed") for url in shown), kind
    # Every trial of a phase looks the same, so real, baseline and proposed trials (and the Block-2 pairs of either
    # model) are indistinguishable.
    shown_sources = {sources[url] for _, shown, _ in crawl.trial_pages for url in shown}
    assert shown_sources == {"real", "baseline", "proposed"}
    for phase, pages in versions.items():
        assert len(pages) == 1, f"{phase} trial pages differ beyond their ids"


def test_images_carry_no_metadata_and_the_same_format_headers_and_size_class(audited):
    study, crawl, _ = audited
    sources = source_of_url(study)
    sizes, formats, header_sets = defaultdict(list), set(), set()
    for url, (headers, body) in crawl.images.items():
        chunks = set(png_chunks(body))
        assert chunks <= ALLOWED_PNG_CHUNKS, f"{url} has chunks {chunks - ALLOWED_PNG_CHUNKS}"
        formats.add(png_header(body))
        sizes[sources[url]].append(len(body))
        header_sets.add(tuple(sorted((k, v) for k, v in headers.items() if k not in VOLATILE_HEADERS)))
    assert set(sizes) == {"real", "baseline", "proposed"}
    assert formats == {(study.display_size, study.display_size, 8, 0)}  # one size, 8-bit grayscale
    assert len(header_sets) == 1, header_sets
    # No byte-size threshold tells real from synthetic better than chance (balanced accuracy over both classes).
    real, synthetic = sizes["real"], sizes["baseline"] + sizes["proposed"]
    assert best_threshold_balanced_accuracy(real, synthetic) <= 0.5 + 1e-9
    assert max(real + synthetic) - min(real + synthetic) <= 0.01 * min(real + synthetic)


def best_threshold_balanced_accuracy(first, second):
    """The best balanced accuracy of any rule 'size <= t means first' (or the reverse)."""
    best = 0.5
    for threshold in sorted(set(first + second)):
        hit_first = sum(size <= threshold for size in first) / len(first)
        hit_second = sum(size > threshold for size in second) / len(second)
        accuracy = (hit_first + hit_second) / 2
        best = max(best, accuracy, 1 - accuracy)
    return best


def test_the_balanced_accuracy_rule_detects_a_size_gap():
    """The size check above can fail: two separable size groups score 1.0."""
    assert best_threshold_balanced_accuracy([100, 101, 102], [200, 201]) == 1.0
    assert best_threshold_balanced_accuracy([100, 100], [100, 100, 100]) == 0.5
