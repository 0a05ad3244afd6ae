"""Requests the participant API must refuse cleanly: a 4xx JSON problem ({"error", "detail", "fields"}), never a
server error, and nothing stored. Ends with a property test: whatever a client sends, the answer is 2xx or 4xx and
everything stored is valid."""

import json
import string

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studyplatform import services
from studyplatform.models import AuditLog, Invite, Participant, Response
from tests.study.factories import valid_answer

pytestmark = pytest.mark.django_db

SESSIONS = "/api/participant/sessions/"
CONDITIONS = ("healthy", "effusion", "pneumonia")


def database_state():
    return (
        Response.objects.count(),
        Participant.objects.count(),
        AuditLog.objects.count(),
        Invite.objects.filter(used_at__isnull=False).count(),
        sorted(Participant.objects.values_list("token", "status", "n_answers", "block1_started_at")),
    )


def post_json(client, url, body):
    return client.post(
        url, body if isinstance(body, str | bytes) else json.dumps(body), content_type="application/json"
    )


def assert_problem(reply, status, error=None):
    assert reply.status_code == status, (reply.status_code, reply.content[:300])
    assert reply["Content-Type"].startswith("application/json"), reply["Content-Type"]
    problem = reply.json()
    assert set(problem) == {"error", "detail", "fields"}, problem
    if error:
        assert problem["error"] == error, problem
    return problem


@pytest.fixture
def block1_trial(participant):
    services.begin_block(participant, 1)
    participant.refresh_from_db()
    return services.next_step(participant)["trial"]


def answer_url(participant):
    return f"/api/participant/{participant.token}/answers/"


NON_ASCII_AND_ODD_VALUES = [
    {"reasons": ["²"]},
    {"reasons": ["٣"]},
    {"reasons": ["１"]},
    {"reasons": "1"},
    {"reasons": 1},
    {"reasons": [True]},
    {"realness": "٣"},
    {"realness": "５０"},
    {"realness": " 50\n"},
    {"realness": "+50"},
    {"rt_ms": "١٢٣"},
    {"rt_ms": "1_000"},
    {"slider_moved": "yes please"},
]


def test_non_ascii_digits_scalar_reasons_and_odd_numbers_are_refused(client, participant, block1_trial):
    before = database_state()
    for change in NON_ASCII_AND_ODD_VALUES:
        body = {"trial": block1_trial["id"], **valid_answer(block1_trial), **change}
        problem = assert_problem(post_json(client, answer_url(participant), body), 400, "invalid_answer")
        assert set(problem["fields"]) & set(change), (change, problem)
    assert database_state() == before


def test_the_trial_form_uses_the_same_validation(client, participant, block1_trial):
    client.get(
        f"/s/{participant.study.slug}/?PROLIFIC_PID={participant.external_id}&SESSION_ID={participant.prolific_session_id}"
    )
    form = {"trial": block1_trial["id"], "diagnosis": "healthy", "rt_ms": "1000", "realness": "40", "slider_moved": "1"}
    before = database_state()
    for change in ({"realness": "٣"}, {"realness": "５０"}, {"reasons": ["²"]}, {"rt_ms": "١٢٣"}):
        reply = client.post(f"/s/{participant.study.slug}/run/", {**form, **change})
        assert reply.status_code == 400 and b'role="alert"' in reply.content, change
    reply = client.post(f"/s/{participant.study.slug}/run/", {"action": "begin", "block": "٢"})
    assert reply.status_code == 400
    assert database_state() == before


def deeply_nested(depth=100_000):
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("where", ["answers", "sessions", "begin"])
def test_json_nested_100000_levels_deep_is_a_400(client, participant, where):
    url = {
        "answers": answer_url(participant),
        "sessions": SESSIONS,
        "begin": f"/api/participant/{participant.token}/begin/",
    }[where]
    before = database_state()
    assert_problem(post_json(client, url, deeply_nested()), 400, "invalid_request")
    nested_value = '{"trial": ' + deeply_nested() + ', "study": ' + deeply_nested() + "}"
    assert_problem(post_json(client, url, nested_value), 400, "invalid_request")
    assert database_state() == before


def test_an_invite_with_the_prolific_pid_of_an_existing_session_is_refused(client, open_study, participant):
    invite = services.create_invites(open_study, 1)[0]
    before = database_state()
    body = {"study": open_study.slug, "consent": True, "invite": invite.token, "prolific_pid": participant.external_id}
    assert_problem(post_json(client, SESSIONS, body), 403, "entry_refused")
    assert database_state() == before
    invite.refresh_from_db()
    assert invite.used_at is None


def test_null_and_non_text_entry_fields_never_become_text(client, open_study):
    before = database_state()
    for field, value in (("prolific_pid", None), ("study_id", None), ("session_id", None), ("invite", None)):
        body = {"study": open_study.slug, "consent": True, field: value}
        assert_problem(post_json(client, SESSIONS, body), 403, "entry_refused")
    for field, value in (("prolific_pid", 12345), ("prolific_pid", ["abc"]), ("study", None), ("session_id", {})):
        body = {"study": open_study.slug, "consent": True, "prolific_pid": "textpid1", field: value}
        problem = assert_problem(post_json(client, SESSIONS, body), 400, "invalid_request")
        assert field in problem["fields"]
    for value in ("a\x00b", "x" * 101):
        body = {"study": open_study.slug, "consent": True, "prolific_pid": "textpid2", "session_id": value}
        assert_problem(post_json(client, SESSIONS, body), 400, "invalid_request")
    assert database_state() == before
    assert not Participant.objects.filter(external_id="None").exists()


def test_empty_bodies_are_a_400_not_a_404(client, participant, block1_trial):
    before = database_state()
    for url in (SESSIONS, answer_url(participant), f"/api/participant/{participant.token}/begin/"):
        for body in ("", "{}"):
            problem = assert_problem(post_json(client, url, body), 400)
            assert problem["fields"], (url, body, problem)
    assert database_state() == before


def test_an_oversized_body_gets_the_json_problem(client, participant, block1_trial, settings):
    before = database_state()
    padding = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1024)
    huge = {"trial": block1_trial["id"], **valid_answer(block1_trial), "note": padding}
    for url in (answer_url(participant), SESSIONS):
        assert_problem(post_json(client, url, huge), 413, "request_too_large")
        # A browser asking for HTML gets the same JSON problem.
        reply = client.post(url, json.dumps(huge), content_type="application/json", HTTP_ACCEPT="text/html")
        assert_problem(reply, 413, "request_too_large")
    assert database_state() == before


def test_bodies_that_are_not_json_objects_are_refused(client, participant, block1_trial):
    before = database_state()
    for body in ("null", "[]", "42", '"text"', "{not json", b"\xff\xfe"):
        assert_problem(post_json(client, answer_url(participant), body), 400)
        assert_problem(post_json(client, SESSIONS, body), 400)
    reply = client.post(answer_url(participant), {"trial": block1_trial["id"], "diagnosis": "healthy"})
    assert_problem(reply, 415, "unsupported_media_type")
    assert database_state() == before


def test_tokens_and_slugs_with_odd_characters_find_nothing(client, participant):
    for token in ("a%00b", "%C3%A9", "x" * 500):
        assert_problem(client.get(f"/api/participant/{token}/"), 404, "session_not_found")
    body = {"study": "cxr\x00study", "consent": True, "prolific_pid": "pid12345"}
    assert_problem(post_json(client, SESSIONS, body), 404, "session_not_found")


def test_the_staff_api_refuses_a_malformed_participant_filter(admin_client, participant):
    reply = admin_client.get("/api/responses/?participant=notauuid")
    assert reply.status_code == 400 and "participant" in reply.json()
    assert admin_client.get(f"/api/responses/?participant={participant.pk}").status_code == 200


# --- the property: 2xx or 4xx, never 5xx, nothing invalid stored ----------------------------------------------------

digit_text = st.text(alphabet=string.digits + "٣５²١ -+.e", min_size=0, max_size=4)
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    digit_text,
    st.text(max_size=8),
)
json_value = st.recursive(
    scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
answer_body = st.fixed_dictionaries(
    {},
    optional={
        "diagnosis": st.one_of(st.sampled_from(CONDITIONS), json_value),
        "realness": st.one_of(st.integers(min_value=-5, max_value=105), digit_text, json_value),
        "slider_moved": st.one_of(st.just(True), json_value),
        "reasons": st.one_of(st.lists(st.integers(min_value=0, max_value=9), max_size=4), json_value),
        "confidence": st.one_of(st.integers(min_value=0, max_value=7), digit_text, json_value),
        "rt_ms": st.one_of(st.integers(min_value=-2, max_value=10**12), digit_text, json_value),
        "extra": json_value,
    },
)
session_body = st.fixed_dictionaries(
    {"consent": st.one_of(st.just(True), json_value)},
    optional={
        "study": json_value,
        "prolific_pid": st.one_of(st.text(alphabet=string.ascii_letters + "_-٣\x00", max_size=12), json_value),
        "study_id": json_value,
        "session_id": json_value,
        "invite": json_value,
    },
)


def assert_everything_stored_is_valid(study):
    n_reasons = len(study.reasons)
    for row in Response.objects.all():
        assert row.diagnosis in CONDITIONS
        assert isinstance(row.rt_ms, int) and 0 <= row.rt_ms <= 24 * 3600 * 1000
        if row.phase == "block1":
            assert study.realness_min <= row.realness <= study.realness_max and row.confidence is None
            assert row.reasons == sorted(set(row.reasons))
            assert all(type(r) is int and 1 <= r <= n_reasons for r in row.reasons)
        elif row.phase in ("pre", "post"):
            assert study.confidence_min <= row.confidence <= study.confidence_max and row.realness is None
    for person in Participant.objects.all():
        assert person.external_id == "" or services.EXTERNAL_ID_PATTERN.match(person.external_id)
        for text in (person.prolific_session_id, person.prolific_study_id):
            assert services.ENTRY_TEXT_PATTERN.match(text)


def test_property_any_request_is_answered_2xx_or_4xx_and_stores_only_valid_data(open_study, participant):
    services.begin_block(participant, 1)
    client = Client()
    fuzz = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)

    def check(reply):
        assert reply.status_code < 500, reply.content[:300]
        if reply.status_code >= 400:
            assert reply.json()["error"]
        assert_everything_stored_is_valid(open_study)

    @fuzz
    @given(body=answer_body, aim=st.booleans())
    def answers(body, aim):
        participant.refresh_from_db()
        step = services.next_step(participant)
        if aim and step["state"] == "trial":
            body = {"trial": step["trial"]["id"], **body}
        elif step["state"] == "instructions":
            services.begin_block(participant, step["block"])
        check(post_json(client, answer_url(participant), body))

    @fuzz
    @given(body=session_body, real_study=st.booleans())
    def sessions(body, real_study):
        if real_study:
            body = {**body, "study": open_study.slug}
        check(post_json(client, SESSIONS, body))

    @fuzz
    @given(block=json_value)
    def begin(block):
        check(post_json(client, f"/api/participant/{participant.token}/begin/", {"block": block}))

    answers()
    sessions()
    begin()
