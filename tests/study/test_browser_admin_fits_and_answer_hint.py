"""In headless Chromium: the admin's widest pages fit a 1440 px wide window (nothing cut off or pushed into a scroll
bar), and a trial's validation hint follows the answer and disappears once nothing is missing."""

import pytest

from generator.models import Dataset, TrainingRun
from generator.services import reports
from studyplatform.models import Study
from tests.study.factories import complete_study
from tests.study.test_browser_session import CHROMEDRIVER, CHROMIUM, Browser

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists() or not CHROMEDRIVER.exists(), reason="needs /usr/bin/chromium"),
]

METRICS = (
    "Effectiveness (disease, AUROC)",
    "Effectiveness (disease, accuracy)",
    "Effectiveness by the TRAINING predictors (disease, AUROC)",
    "Composition SSIM",
    "Composition FID",
    "Reversibility SSIM",
    "Reversibility FID",
    "Effect localisation (share inside)",
    "Removal L1 vs true cf (model)",
    "Removal L1 vs true cf (identity)",
)
CHECKPOINTS = ("Ours (expert, before AL)", "Ours+10%", "Ours+20%", "Ours+30%")
WARNING = (
    "NOT MEANINGFUL: the evaluation judges read the disease on real images no better than chance (AUROC 0.54 "
    "[0.34, 0.75], n 22); effectiveness figures cannot tell a good model from a bad one."
)


def fits(driver, selector):
    """Neither the page nor the element scrolls sideways, and the element ends inside the content column."""
    return driver.execute_script(
        """
        const page = document.documentElement, element = document.querySelector(arguments[0]);
        const box = element.getBoundingClientRect();
        const column = document.getElementById("content").getBoundingClientRect();
        return [page.scrollWidth <= page.clientWidth, element.scrollWidth <= element.clientWidth + 1,
                box.right <= column.right + 1];
        """,
        selector,
    )


def admin_browser(live_server, django_user_model):
    from selenium.webdriver.common.by import By

    django_user_model.objects.create_superuser("researcher", "r@example.org", "a-long-password-1")
    browser = Browser()
    driver = browser.driver
    driver.set_window_size(1440, 900)
    driver.get(f"{live_server.url}/admin/login/")
    driver.find_element(By.NAME, "username").send_keys("researcher")
    driver.find_element(By.NAME, "password").send_keys("a-long-password-1")
    browser.click_and_wait(driver.find_element(By.CSS_SELECTOR, "input[type=submit]"))
    return browser


def test_case_list_study_page_and_run_metrics_fit_1440_px(
    transactional_db, live_server, settings, tmp_path, monkeypatch, django_user_model
):
    settings.MEDIA_ROOT = tmp_path / "media"
    study = complete_study(title="Counterfactual chest X-ray reader study (demo, a long title for the case list)")
    dataset = Dataset.objects.create(name="nih-sample", kind="nih", root=str(tmp_path), resolution=64)
    run = TrainingRun.objects.create(
        name="demo-expert-al-with-a-long-name",
        dataset=dataset,
        variant="expert-al",
        status="succeeded",
        metrics={label: {"judgement": {"warnings": [WARNING]}} for label in ("counterfactual", "round-1")},
    )
    rows = [
        {"Model": f"{checkpoint} ({run.name})", **{metric: "0.488 [0.257, 0.711]" for metric in METRICS}}
        for checkpoint in CHECKPOINTS
    ]
    monkeypatch.setattr(reports, "metrics_rows", lambda run: rows)

    browser = admin_browser(live_server, django_user_model)
    try:
        driver = browser.driver
        driver.get(f"{live_server.url}/admin/studyplatform/case/")
        assert len(driver.find_elements("css selector", "#result_list td.field-images img")) == 15
        assert fits(driver, ".results") == [True, True, True]
        driver.get(f"{live_server.url}/admin/studyplatform/study/{study.pk}/change/")
        assert fits(driver, "#cases-group") == [True, True, True]
        driver.get(f"{live_server.url}/admin/generator/trainingrun/{run.pk}/change/")
        assert "Ours+30%" in driver.find_element("css selector", ".field-metrics_table").get_attribute("textContent")
        assert fits(driver, ".field-metrics_table .readonly") == [True, True, True]
        assert fits(driver, ".field-metrics_table table") == [True, True, True]
    finally:
        browser.quit()


def test_the_answer_hint_follows_the_answer_and_clears_once_complete(transactional_db, live_server, settings, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    settings.MEDIA_ROOT = tmp_path / "media"
    study = complete_study()
    assert study.status == Study.Status.OPEN
    browser = Browser()
    try:
        driver = browser.driver
        driver.get(f"{live_server.url}/s/{study.slug}/?PROLIFIC_PID=65f0c1d2e3a4b5c6d7e8f902&STUDY_ID=&SESSION_ID=S7")
        browser.click_and_wait(driver.find_element(By.CSS_SELECTOR, "button[value=accept]"))
        browser.click_and_wait(driver.find_element(By.CSS_SELECTOR, "button.primary"))
        assert browser.page_kind() == "block1"
        hint = driver.find_element(By.ID, "submit-hint")
        assert hint.text == ""

        driver.find_element(By.ID, "submit-answer").click()
        assert hint.text == "Please choose a diagnosis and move the realness slider."
        driver.find_element(By.CSS_SELECTOR, "input[name=diagnosis][value=effusion]").send_keys(Keys.SPACE)
        assert hint.text == "Please move the realness slider."
        slider = driver.find_element(By.ID, "realness")
        low = int(slider.get_attribute("min"))
        slider.send_keys(Keys.ARROW_LEFT if int(slider.get_attribute("value")) > low else Keys.ARROW_RIGHT)
        assert hint.text == ""
    finally:
        browser.quit()
