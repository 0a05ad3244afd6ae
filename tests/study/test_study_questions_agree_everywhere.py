"""The trial form, the participant API's schema and answers, and the export all follow the question table."""

import csv
import io
import re
from html import unescape
from html.parser import HTMLParser

import pytest

from studycolumns import ANSWER_COLUMNS, questions
from studyplatform import export
from studyplatform.models import Study
from tests.study.factories import api_first_trial, complete_study, run_whole_session

pytestmark = pytest.mark.django_db

ATTENTION_CHECK = {"after": 1, "instruction": "Select Pneumonia for this question.", "expected": "pneumonia"}


class TrialForm(HTMLParser):
    """The answer fields of a trial page's form: {name: input type} and the fieldsets' data attributes."""

    def __init__(self, html):
        super().__init__()
        self.fields, self.fieldsets = {}, []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("input", "textarea", "select") and attrs.get("name") not in (None, "csrfmiddlewaretoken", "trial"):
            self.fields.setdefault(attrs["name"], attrs.get("type", tag))
        if tag == "fieldset":
            self.fieldsets.append((attrs.get("data-kind"), attrs.get("data-missing")))


def filled_form(phase, study):
    """What a participant sends for each question of the phase, built from the table alone (a kind not listed here
    sends its example answer, as a form would: text, or a list of texts)."""
    form = {}
    for question in questions.asked_in(phase):
        value = {
            questions.CHOICE: lambda q: q.options_in(study)[-1][0],
            questions.SCALE: lambda q: str(q.bounds_in(study)[1]),
            questions.SLIDER: lambda q: str(q.bounds_in(study)[0]),
            questions.CHECKLIST: lambda q: ["1", "2"],
            questions.ELAPSED: lambda q: "640",
        }.get(question.kind, lambda q: _as_form_value(q.kind_of.example(q, study)))(question)
        form[question.name] = value
        if question.moved_field:
            form[question.moved_field] = "1"
    return form


def _as_form_value(value):
    return [str(item) for item in value] if isinstance(value, list) else str(value)


def test_every_trial_page_shows_exactly_the_questions_of_its_phase(client, media_root):
    study = complete_study(attention_checks=[ATTENTION_CHECK])
    run = f"/s/{study.slug}/run/"
    client.get(f"/s/{study.slug}/?PROLIFIC_PID=tablereader01&STUDY_ID=&SESSION_ID=S1")
    client.post(f"/s/{study.slug}/", {"PROLIFIC_PID": "tablereader01", "SESSION_ID": "S1", "decision": "accept"})
    seen = set()
    for _ in range(100):
        html = client.get(run).content.decode()
        if 'name="action" value="begin"' in html:
            client.post(run, {"action": "begin", "block": re.search(r'name="block" value="(\d)"', html).group(1)})
            continue
        if "trial-form" not in html:
            break
        phase = re.search(r'data-phase="(\w+)"', html).group(1)
        seen.add(phase)
        page = TrialForm(html)
        asked = questions.asked_in(phase)
        assert set(page.fields) == {name for question in asked for name in question.fields}, phase
        # Every question but the measured response time is a fieldset with its label.
        shown = [question for question in asked if question.kind != questions.ELAPSED]
        assert page.fieldsets == [(q.kind, q.missing if q.required else None) for q in shown], phase
        assert all(question.label in unescape(html) for question in shown), phase
        trial_id = re.search(r'name="trial" value="([^"]+)"', html).group(1)
        assert client.post(run, {"trial": trial_id, **filled_form(phase, study)}).status_code == 302
    assert seen == set(questions.PHASE_QUESTIONS)
    rows = list(csv.DictReader(io.StringIO(_answers_csv(study))))
    assert {row["phase"] for row in rows} == {"block1", "pre", "post"}
    for row in rows:
        assert row["rt_ms"] == "640" and row["diagnosis"] == "pneumonia"


def test_the_answer_schema_is_the_table(admin_client):
    components = admin_client.get("/api/schema/?format=json").json()["components"]["schemas"]
    schema = components["AnswerIn"]
    properties = schema["properties"]
    assert set(properties) == {"trial"} | questions.ANSWER_FIELDS
    every_phase = set.intersection(*({q.name for q in asked} for asked in questions.PHASE_QUESTIONS.values()))
    required = {q.name for q in questions.QUESTIONS if q.required and q.name in every_phase}
    assert set(schema["required"]) == {"trial"} | required
    for question in questions.QUESTIONS:
        described = properties[question.name]
        value_type = question.kind_of.value_type
        if question.kind == questions.CHOICE and question.own_column:
            # A choice's values are an enum component (the stored column's choices, shared with other schemas).
            enum = components[described["$ref"].rsplit("/", 1)[-1]]["enum"]
            assert enum == [value for value, _ in question.options_in(Study())]
        elif value_type == questions.STRING:
            assert described["type"] == "string"
        elif value_type == questions.INTEGER_LIST:
            assert described["type"] == "array" and described["items"]["type"] == "integer"
        else:
            assert value_type == questions.INTEGER
            assert described["type"] == "integer"
            low, high = question.bounds
            assert described.get("minimum") == (low if isinstance(low, int) else None)
            assert described.get("maximum") == (high if isinstance(high, int) else None)
        if question.moved_field:
            assert properties[question.moved_field]["type"] == "boolean"


def test_the_api_answer_holds_every_stored_question(client, open_study):
    token, trial = api_first_trial(client, open_study, "tablereader02")
    answer = {**filled_form("block1", open_study), "slider_moved": True}
    reply = client.post(
        f"/api/participant/{token}/answers/", {"trial": trial["id"], **answer}, content_type="application/json"
    ).json()
    assert list(reply["answer"]) == [question.name for question in questions.QUESTIONS]
    assert reply["answer"]["reasons"] == [1, 2] and reply["answer"]["confidence"] is None


def _answers_csv(study):
    buffer = io.StringIO()
    export.write_answers_csv(study, buffer)
    return buffer.getvalue()


def test_the_export_has_a_column_for_every_question_filled_where_its_phase_asks_it(participant, open_study):
    for question in questions.QUESTIONS:
        assert set(question.export_columns) <= set(ANSWER_COLUMNS), question.name
    run_whole_session(participant, answer=lambda trial: filled_form(trial["phase"], open_study))
    rows = list(csv.DictReader(io.StringIO(_answers_csv(open_study))))
    assert rows
    for row in rows:
        asked = {question.name for question in questions.asked_in(row["phase"])}
        for question in questions.QUESTIONS:
            cells = [row[column] for column in question.export_columns]
            if question.name in asked:
                assert all(cell != "" for cell in cells), (row["phase"], question.name)
            else:
                assert all(cell == "" for cell in cells), (row["phase"], question.name)
