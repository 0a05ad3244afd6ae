"""A whole participant session in headless Chromium through the real pages, with the browser closed and reopened
in the middle of Block 1. Screenshots of every page type at desktop and phone widths go to var/screenshots/."""

import shutil
import tempfile
import time
from pathlib import Path

import pytest

from studyplatform.models import Participant, Response
from tests.study.factories import complete_study

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
SIZES = {"desktop": (1280, 900), "phone": (390, 844)}
PID = "65f0c1d2e3a4b5c6d7e8f901"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists() or not CHROMEDRIVER.exists(), reason="needs /usr/bin/chromium"),
]


class Browser:
    """One Chromium process with its own fresh profile: quitting it loses every cookie, like a closed browser."""

    def __init__(self):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-dev-shm-usage",
            f"--user-data-dir={self.profile}",
        ):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        self.driver.set_window_size(*SIZES["desktop"])
        self.driver.implicitly_wait(5)

    def quit(self):
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)

    def shoot(self, name):
        for width_name, size in SIZES.items():
            self.driver.set_window_size(*size)
            self.driver.save_screenshot(str(SCREENSHOTS / f"{name}-{width_name}.png"))
        self.driver.set_window_size(*SIZES["desktop"])

    def click_and_wait(self, element):
        """Click something that loads the next page, and wait until the old page is gone."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        old_page = self.driver.find_element(By.TAG_NAME, "html")
        element.click()
        wait = WebDriverWait(self.driver, 30)
        try:
            WebDriverWait(self.driver, 10).until(lambda driver: page_is_gone(old_page))
        except TimeoutException:
            # Under heavy load a click can land before the page's script is ready; a participant clicks again
            # (submissions are idempotent, so a second click never stores a second answer).
            element.click()
            wait.until(lambda driver: page_is_gone(old_page))
        # The new document must be fully parsed before its nodes are read (a busy machine renders slowly).
        wait.until(lambda driver: driver.execute_script("return document.readyState") == "complete")

    def page_kind(self):
        from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
        from selenium.webdriver.common.by import By

        # A script on the page may still replace nodes right after load; read again if a node went stale.
        for attempt in range(5):
            try:
                forms = self.driver.find_elements(By.ID, "trial-form")
                if forms:
                    return forms[0].get_attribute("data-phase")
                return self.driver.find_element(By.TAG_NAME, "h1").text
            except (StaleElementReferenceException, WebDriverException):
                if attempt == 4:
                    raise
                time.sleep(0.2)


def page_is_gone(old_page):
    """True once the element of the previous document is detached. Chromium sometimes reports a node of a document
    being replaced with a generic inspector error instead of a stale reference; both mean the page has changed."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        old_page.is_enabled()
    except (StaleElementReferenceException, WebDriverException):
        return True
    return False


def answer_current_trial(browser, number):
    """Answer with the keyboard where a participant would (slider arrows, space on choices), then submit."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser.driver
    phase = browser.page_kind()
    diagnosis = ("healthy", "effusion", "pneumonia")[number % 3]
    driver.find_element(By.CSS_SELECTOR, f"input[name=diagnosis][value={diagnosis}]").send_keys(Keys.SPACE)
    if phase == "block1":
        slider = driver.find_element(By.ID, "realness")
        # The slider starts at a random value, possibly an end of the scale, where the arrow towards that end does
        # not move it (and the page rightly refuses the answer): press the arrow that moves it.
        value, low, high = (int(slider.get_attribute(name)) for name in ("value", "min", "max"))
        right = (number % 2 == 1 and value < high) or value == low
        slider.send_keys(Keys.ARROW_RIGHT if right else Keys.ARROW_LEFT)
        assert driver.find_element(By.ID, "slider_moved").get_attribute("value") == "1"
        if number % 4 == 0:
            driver.find_element(By.CSS_SELECTOR, "input[name=reasons][value='2']").send_keys(Keys.SPACE)
    else:
        driver.find_element(By.CSS_SELECTOR, f"input[name=confidence][value='{1 + number % 6}']").send_keys(Keys.SPACE)
    browser.click_and_wait(driver.find_element(By.ID, "submit-answer"))
    return phase


def test_a_participant_completes_the_study_in_chromium(transactional_db, live_server, settings, tmp_path):
    from selenium.webdriver.common.by import By

    settings.MEDIA_ROOT = tmp_path / "media"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    study = complete_study(
        title="Chest X-ray reading study",
        block1_patients=12,
        block2_cases=12,
        working_size=192,
        display_size=512,
    )
    entry = f"{live_server.url}/s/{study.slug}/?PROLIFIC_PID={PID}&STUDY_ID=&SESSION_ID=S42"
    browser = Browser()
    try:
        browser.driver.get(entry)
        browser.shoot("01-consent")
        browser.click_and_wait(browser.driver.find_element(By.CSS_SELECTOR, "button[value=accept]"))
        assert "instructions" in browser.page_kind()
        browser.shoot("02-instructions-block1")
        browser.click_and_wait(browser.driver.find_element(By.CSS_SELECTOR, "button.primary"))

        shot = set()
        number = 0
        reopened = False
        while True:
            kind = browser.page_kind()
            if kind in ("block1", "pre", "post"):
                if kind not in shot:
                    shot.add(kind)
                    browser.shoot({"block1": "03-block1-trial", "pre": "05-block2-first", "post": "06-block2-cf"}[kind])
                if kind == "block1" and number == 2:
                    # The submit button refuses until the slider was moved; nothing is stored meanwhile.
                    browser.driver.find_element(By.ID, "submit-answer").click()
                    assert "move the realness slider" in browser.driver.find_element(By.ID, "submit-hint").text
                answer_current_trial(browser, number)
                number += 1
                if number == 17 and not reopened:
                    browser.driver.get(f"{live_server.url}/s/{study.slug}/withdraw/")
                    browser.shoot("08-withdraw-confirm")
                    browser.quit()
                    browser = Browser()
                    browser.driver.get(entry)
                    reopened = True
                    assert browser.page_kind() == "block1"
            elif "instructions" in kind:
                browser.shoot("04-instructions-block2")
                browser.click_and_wait(browser.driver.find_element(By.CSS_SELECTOR, "button.primary"))
            else:
                break
        assert "finished" in browser.page_kind()
        assert study.completion_code in browser.driver.page_source
        browser.shoot("07-debrief")
    finally:
        browser.quit()

    participant = Participant.objects.get(study=study)
    answers = Response.objects.filter(participant=participant)
    assert participant.status == Participant.Status.COMPLETED and reopened
    assert answers.filter(block=1, phase="block1").count() == 36
    assert answers.filter(block=2, phase="pre").count() == 12
    assert answers.filter(block=2, phase="post").count() == 12
    assert answers.count() == 60 and number == 60
    assert all(rt >= 0 for rt in answers.values_list("rt_ms", flat=True))
