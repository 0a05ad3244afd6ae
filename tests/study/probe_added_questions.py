"""Checks of questions added to the question table, run by test_study_new_question_is_one_entry.py inside a copy of
the project where the table has two more questions (an existing kind and a new kind) and nothing else changed but
the new kind's template snippet. Not collected by the normal run (the name does not start with test_): in the
project itself the table has no added question.

An added question is one whose answer has no `Response` column of its own (`own_column` is False). The browser
test (marked `browser`) answers, in headless Chromium, an added required question of a kind that `static/study.js`
has no rule for."""

import csv
import io
import re
from pathlib import Path

import pytest
from django.core.management import call_command

import studycolumns
from analysis import frames
from studycolumns import ANSWER_COLUMNS, questions
from studyplatform import export, services
from studyplatform.models import Participant, Response
from tests.study.factories import api_first_trial, complete_study, run_whole_session
from tests.study.test_browser_session import CHROMEDRIVER, CHROMIUM, PID, Browser, page_is_gone

ADDED = [question for question in questions.QUESTIONS if not question.own_column]
if not ADDED:
    pytest.skip("the question table has no added question (run by the one-entry test)", allow_module_level=True)

pytestmark = pytest.mark.django_db


def example_answer(trial, study):
    """An answer to every question of the trial's phase: the table's example answer of each."""
    answer = {}
    for question in questions.asked_in(trial["phase"]):
        answer.update(question.example_answer(study))
    return answer


def answers_csv(study):
    buffer = io.StringIO()
    export.write_answers_csv(study, buffer)
    return buffer.getvalue()


def test_the_table_under_test_is_the_copy_with_the_added_questions():
    assert Path(studycolumns.__file__).resolve().is_relative_to(Path.cwd().resolve())
    assert {question.name for question in ADDED} == {"difficulty", "comment"}


def test_no_migration_is_needed():
    # Exits with status 1 where the models differ from the migrations.
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


def test_added_answers_are_stored_exported_and_read_by_the_analysis(participant, open_study):
    run_whole_session(participant, answer=lambda trial: example_answer(trial, open_study))
    stored = Response.objects.filter(participant=participant)
    for question in ADDED:
        for response in stored:
            asked = question in questions.asked_in(response.phase)
            assert (question.name in response.other_answers) is asked, (question.name, response.phase)
            if asked:
                assert response.answer_to(question) == question.example_answer(open_study)[question.name]
    text = answers_csv(open_study)
    header = next(csv.reader(io.StringIO(text)))
    assert tuple(header) == ANSWER_COLUMNS
    # The added columns come after those of the questions the platform was built with.
    assert header[header.index("rt_ms") + 1 : header.index("answered_at")] == [
        column for question in ADDED for column in question.export_columns
    ]
    tidy = frames.tidy_answers(frames._read_csv(io.StringIO(text), "answers"))
    for question in ADDED:
        phases = questions.phases_asking(question.name)
        shown = tidy.loc[tidy["phase"].isin(phases), question.name]
        assert len(shown) and (shown == str(question.example_answer(open_study)[question.name])).all()
        assert (tidy.loc[~tidy["phase"].isin(phases), question.name] == "").all()


def test_the_api_takes_and_refuses_added_answers(client, open_study):
    token, trial = api_first_trial(client, open_study, "probe-reader")
    answer = example_answer(trial, open_study)
    for question in ADDED:
        if question in questions.asked_in(trial["phase"]):
            wrong = {questions.INTEGER: 10**6, questions.STRING: 7, questions.INTEGER_LIST: "x"}
            bad = {**answer, question.name: wrong[question.kind_of.value_type]}
            refused = client.post(
                f"/api/participant/{token}/answers/", {"trial": trial["id"], **bad}, content_type="application/json"
            )
            assert refused.status_code == 400 and question.name in refused.json()["fields"]
            assert not Response.objects.filter(participant__token=token).exists()
    reply = client.post(
        f"/api/participant/{token}/answers/", {"trial": trial["id"], **answer}, content_type="application/json"
    )
    assert reply.status_code == 201
    assert list(reply.json()["answer"]) == [question.name for question in questions.QUESTIONS]


def test_the_admin_and_staff_api_show_added_answers(admin_client, participant, open_study):
    run_whole_session(participant, answer=lambda trial: example_answer(trial, open_study))
    rows = admin_client.get("/api/responses/").json()
    rows = rows["results"] if isinstance(rows, dict) else rows
    assert any(set(row["other_answers"]) & {question.name for question in ADDED} for row in rows)


def test_simulated_readers_answer_a_required_added_question(open_study):
    required = [question for question in ADDED if question.required]
    assert required, "the copy adds a required question"
    call_command("simulate_participants", open_study.slug, "--n", "2", "--seed", "3", verbosity=0)
    assert Participant.objects.filter(study=open_study, status="completed").count() == 2
    tidy = frames.tidy_answers(frames._read_csv(io.StringIO(answers_csv(open_study)), "answers"))
    for question in required:
        assert (tidy.loc[tidy["phase"].isin(questions.phases_asking(question.name)), question.name] != "").all()


# The kinds of the questions the platform was built with; study.js has a rule for each that needs one.
BUILT_IN_KINDS = {question.kind for question in questions.QUESTIONS if question.own_column}
STUDY_JS = Path("static/study.js")


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not CHROMIUM.exists() or not CHROMEDRIVER.exists(), reason="needs /usr/bin/chromium")
def test_the_page_holds_a_question_of_a_kind_without_a_rule_until_it_holds_text(live_server, media_root):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    new = [question for question in ADDED if question.required and question.kind not in BUILT_IN_KINDS]
    assert new, "the copy adds a required question of a new kind"
    question = new[0]
    # The script has no rule of its own for the kind: what is checked below is its rule for any other kind.
    assert not re.search(rf"""["']?\b{question.kind}["']?\s*:\s*function""", STUDY_JS.read_text())
    phase = questions.phases_asking(question.name)[0]
    study = complete_study()
    text = "The left costophrenic angle is blunted."

    browser = Browser()
    try:
        driver = browser.driver
        driver.get(f"{live_server.url}/s/{study.slug}/?PROLIFIC_PID={PID}&STUDY_ID=&SESSION_ID=S-text")
        browser.click_and_wait(driver.find_element(By.CSS_SELECTOR, "button[value=accept]"))
        participant = Participant.objects.get(study=study)
        run_whole_session(participant, answer=lambda trial: example_answer(trial, study), until_phase=phase)
        assert services.next_step(participant)["trial"]["phase"] == phase
        driver.get(f"{live_server.url}/s/{study.slug}/run/")
        assert browser.page_kind() == phase
        fieldset = driver.find_element(By.CSS_SELECTOR, f"fieldset[data-kind={question.kind}]")
        assert fieldset.get_attribute("data-missing") == question.missing
        field = fieldset.find_element(By.NAME, question.name)
        # Every other question of the page gets its answer, the way a participant gives it.
        for other in questions.asked_in(phase):
            if other is not question and other.kind in (questions.CHOICE, questions.SCALE):
                driver.find_element(By.CSS_SELECTOR, f"input[name={other.name}]").send_keys(Keys.SPACE)
            else:
                assert other is question or other.kind == questions.ELAPSED or not other.required, other.name
        hint, submit = driver.find_element(By.ID, "submit-hint"), driver.find_element(By.ID, "submit-answer")
        page = driver.find_element(By.TAG_NAME, "html")

        # Unanswered, then only white space: the page does not send the answer and asks for the text.
        for typed in ("", "   "):
            field.send_keys(typed)
            submit.click()
            assert not page_is_gone(page), f"the page sent an answer without the {question.name} ({typed!r})"
            assert hint.text == f"Please {question.missing}.", typed
        assert not Response.objects.filter(participant=participant, phase=phase).exists()

        # Text typed: the hint shown before is gone as the participant types, and the answer goes through.
        field.send_keys(text)
        assert hint.text == ""
        browser.click_and_wait(submit)
        assert driver.execute_script("return document.querySelector('div.errors') === null")
    finally:
        browser.quit()
    stored = Response.objects.get(participant=participant, phase=phase)
    assert stored.answer_to(question) == text  # the white space typed first is trimmed by the checker
