"""A whole session of a counterbalanced study in headless Chromium through the real pages: Block 1 shows each patient
once, and the progress text counts the images of this design."""

import re

import pytest

from studyplatform.models import Participant, Response
from tests.study import test_browser_session as session
from tests.study.factories import complete_study

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not session.CHROMIUM.exists() or not session.CHROMEDRIVER.exists(), reason="needs /usr/bin/chromium"
    ),
]


def test_a_participant_completes_a_counterbalanced_study_in_chromium(transactional_db, live_server, settings, tmp_path):
    from selenium.webdriver.common.by import By

    settings.MEDIA_ROOT = tmp_path / "media"
    study = complete_study(
        title="Chest X-ray reading study",
        block1_design="counterbalanced",
        block1_patients=6,
        block2_cases=2,
        instructions_block1="You will see 6 chest X-rays one at a time.",
    )
    browser = session.Browser()
    progress_texts = []
    try:
        browser.driver.get(f"{live_server.url}/s/{study.slug}/?PROLIFIC_PID={session.PID}&STUDY_ID=&SESSION_ID=S1")
        browser.click_and_wait(browser.driver.find_element(By.CSS_SELECTOR, "button[value=accept]"))
        assert "instructions" in browser.page_kind()
        assert "You will see 6 chest X-rays" in browser.driver.page_source
        browser.click_and_wait(browser.driver.find_element(By.CSS_SELECTOR, "button.primary"))
        number = 0
        while True:
            kind = browser.page_kind()
            if kind in ("block1", "pre", "post"):
                if kind == "block1":
                    progress_texts.append(browser.driver.find_element(By.TAG_NAME, "body").text)
                session.answer_current_trial(browser, number)
                number += 1
            elif "instructions" in kind:
                browser.click_and_wait(browser.driver.find_element(By.CSS_SELECTOR, "button.primary"))
            else:
                break
        assert "finished" in browser.page_kind()
        assert study.completion_code in browser.driver.page_source
    finally:
        browser.quit()

    participant = Participant.objects.get(study=study)
    block1 = Response.objects.filter(participant=participant, phase="block1").select_related("case", "stimulus")
    assert participant.status == Participant.Status.COMPLETED
    assert number == 6 + 2 * 2 and Response.objects.filter(participant=participant).count() == 10
    assert sorted(r.case.label for r in block1) == [f"P0{n}" for n in range(1, 7)]
    assert {r.stimulus.source for r in block1} == {"real", "baseline", "proposed"}
    assert [r.stimulus.source for r in block1] == [t["source"] for t in participant.plan if t["phase"] == "block1"]
    # "Part 1 of 2 · image n of 6": Block 1 has one image per patient in this design.
    for n, text in enumerate(progress_texts, start=1):
        assert (str(n), "6") in re.findall(r"(\d+) of (\d+)", text), text
