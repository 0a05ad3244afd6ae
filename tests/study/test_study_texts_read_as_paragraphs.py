"""The researcher's texts read as paragraphs (a wrapped line is not a line break), and Block 2's progress counts
patients, as its instructions do."""

import re

import pytest

from studyplatform import default_texts, services
from studyplatform.templatetags.study_text import paragraphs
from tests.study.factories import complete_study, valid_answer

PID = "60a1b2c3d4e5f60718293a4b"


def test_wrapped_lines_join_and_blank_lines_separate_paragraphs():
    html = paragraphs("The session takes about\n30 minutes.\n\n  \nTaking part is\r\nvoluntary.")
    assert html == "<p>The session takes about 30 minutes.</p>\n<p>Taking part is voluntary.</p>"


def test_numbered_and_dashed_lines_are_list_items_and_an_indented_line_continues_one():
    html = paragraphs("For each image:\n1. choose a\n   diagnosis;\n2. rate it.\nAnswer quickly.\n\n- one\n- two")
    assert html == (
        "<p>For each image:</p>\n<ol><li>choose a diagnosis;</li><li>rate it.</li></ol>\n<p>Answer quickly.</p>\n"
        "<ul><li>one</li><li>two</li></ul>"
    )


def test_the_text_is_escaped():
    assert paragraphs('<script>alert("x")</script>') == "<p>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;</p>"
    assert paragraphs("") == ""


def prose(page):
    return re.search(r'<div class="prose">(.*?)</div>', page.content.decode(), re.S).group(1)


@pytest.mark.django_db
def test_consent_instructions_and_debrief_pages_break_only_between_paragraphs(client, media_root):
    study = complete_study(
        consent_text=default_texts.CONSENT,
        instructions_block1=default_texts.INSTRUCTIONS_BLOCK1,
        instructions_block2=default_texts.INSTRUCTIONS_BLOCK2,
        debrief_text=default_texts.DEBRIEF,
        block1_patients=12,
        block2_cases=12,
    )
    consent = prose(client.get(f"/s/{study.slug}/?PROLIFIC_PID={PID}&STUDY_ID=&SESSION_ID=S1"))
    assert "<br" not in consent and consent.count("<p>") == 3
    assert "images produced by a computer model." in consent

    client.post(f"/s/{study.slug}/", {"PROLIFIC_PID": PID, "STUDY_ID": "", "SESSION_ID": "S1", "decision": "accept"})
    block1 = prose(client.get(f"/s/{study.slug}/run/"))
    assert "<br" not in block1 and block1.count("<li>") == 3
    assert "by moving the slider;</li>" in block1

    from studyplatform.models import Participant

    participant = Participant.objects.get()
    while (step := services.next_step(participant))["state"] != "complete":
        if step["state"] == "instructions":
            if step["block"] == 2:
                block2 = prose(client.get(f"/s/{study.slug}/run/"))
                assert "<br" not in block2 and "how confident you are (1 = not at all" in block2
            services.begin_block(participant, step["block"])
        else:
            services.submit_answer(participant, step["trial"]["id"], valid_answer(step["trial"]))
        participant.refresh_from_db()
    debrief = prose(client.get(f"/s/{study.slug}/run/"))
    assert "<br" not in debrief and "model: they show" in debrief


@pytest.mark.django_db
def test_block2_progress_counts_patients_with_first_and_final_answer(client, media_root):
    study = complete_study()  # 3 Block-1 patients, 2 Block-2 cases
    client.get(f"/s/{study.slug}/?PROLIFIC_PID={PID}&STUDY_ID=&SESSION_ID=S1")
    client.post(f"/s/{study.slug}/", {"PROLIFIC_PID": PID, "STUDY_ID": "", "SESSION_ID": "S1", "decision": "accept"})
    from studyplatform.models import Participant

    participant = Participant.objects.get()
    seen = []
    while (step := services.next_step(participant))["state"] != "complete":
        if step["state"] == "instructions":
            services.begin_block(participant, step["block"])
        else:
            text = re.search(
                r'<span class="progress-text">(.*?)</span>', client.get(f"/s/{study.slug}/run/").content.decode()
            )
            seen.append(text.group(1))
            services.submit_answer(participant, step["trial"]["id"], valid_answer(step["trial"]))
        participant.refresh_from_db()
    assert seen[:2] == ["Part 1 of 2 &middot; image 1 of 9", "Part 1 of 2 &middot; image 2 of 9"]
    assert seen[9:] == [
        "Part 2 of 2 &middot; patient 1 of 2, first answer",
        "Part 2 of 2 &middot; patient 1 of 2, final answer",
        "Part 2 of 2 &middot; patient 2 of 2, first answer",
        "Part 2 of 2 &middot; patient 2 of 2, final answer",
    ]
    assert not any("question" in text for text in seen)
