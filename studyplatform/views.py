"""Pages: the home page, the health check, the participant's study session and the blinded image endpoint.

A browser holds a participant's session through a signed, HttpOnly cookie per study (see `_bind`), so links never
carry a credential; every page asks `services.next_step` what to show and every form posts to one service function.
"""

import functools
import uuid

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.db import connection
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import get_script_prefix, get_urlconf, reverse
from django.views.decorators.http import require_GET, require_http_methods

from studycolumns import questions
from studyplatform import images, ratelimit, services
from studyplatform.models import Stimulus, Study

ENTRY_PARAMS = ("PROLIFIC_PID", "STUDY_ID", "SESSION_ID")
IMAGE_CACHE_CONTROL = "private, max-age=86400, immutable"


@require_GET
def home(request):
    return render(request, "home.html")


@staff_member_required
@require_GET
def api_docs(request):
    """The staff API and the participant API as one readable page, built on the server from the OpenAPI schema
    (no script, nothing fetched from elsewhere); the schema itself is at /api/schema/."""
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    groups = {}
    for route, methods in schema["paths"].items():
        for method, operation in methods.items():
            tag = (operation.get("tags") or ["other"])[0]
            groups.setdefault(tag, []).append(_operation_summary(route, method, operation))
    context = {"info": schema.get("info", {}), "groups": sorted(groups.items())}
    return render(request, "api_docs.html", context)


def _operation_summary(route, method, operation):
    parameters = [
        f"{p['name']} ({p['in']}{', required' if p.get('required') else ''})" for p in operation.get("parameters", [])
    ]
    body = operation.get("requestBody", {}).get("content", {})
    responses = [
        f"{code} {_schema_names(answer.get('content', {}))}".strip()
        for code, answer in operation.get("responses", {}).items()
    ]
    return {
        "method": method.upper(),
        "path": route,
        "id": operation.get("operationId", ""),
        "summary": operation.get("summary") or operation.get("description", ""),
        "parameters": parameters,
        "body": _schema_names(body),
        "responses": responses,
    }


def _schema_names(content):
    """The schema names of a request or response content map ({media type: {"schema": ...}})."""
    names = set()
    for media in content.values():
        schema = media.get("schema") or {}
        names.add(schema["$ref"].rsplit("/", 1)[-1] if "$ref" in schema else schema.get("type", "object"))
    return ", ".join(sorted(names))


@require_GET
def healthz(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


BROWSER_COOKIE_SALT = "studyplatform.participant-browser"


def _cookie_name(slug):
    return f"study-{slug}"


def _bind(response, study, participant):
    """Bind this browser to the participant's session: a signed, HttpOnly cookie naming the participant, sent only
    to the study's own pages. The participant token (the JSON API's credential) never reaches the browser."""
    response.set_signed_cookie(
        _cookie_name(study.slug),
        str(participant.pk),
        salt=BROWSER_COOKIE_SALT,
        max_age=settings.PARTICIPANT_COOKIE_MAX_AGE,
        path=f"/s/{study.slug}/",
        secure=settings.SESSION_COOKIE_SECURE,
        httponly=True,
        samesite="Lax",
    )
    return response


def _browser_participant_id(request, slug):
    """The id of the participant whose session this browser holds in the study `slug` (from its signed cookie, so
    nothing is read from the database), or None."""
    participant_id = request.get_signed_cookie(
        _cookie_name(slug), default=None, salt=BROWSER_COOKIE_SALT, max_age=settings.PARTICIPANT_COOKIE_MAX_AGE
    )
    try:
        return uuid.UUID(participant_id) if participant_id else None
    except ValueError:
        return None


def _current_participant(request, study):
    """The participant whose session this browser holds in `study` (from its signed cookie), or None."""
    participant_id = _browser_participant_id(request, study.slug)
    if participant_id is None:
        return None
    try:
        return services.get_session(study=study, pk=participant_id)
    except services.SessionNotFound:
        return None


def _browser_session(request, slug):
    """The participant (with its study) whose session this browser holds in the study `slug`, or None."""
    participant_id = _browser_participant_id(request, slug)
    if participant_id is None or not services.SLUG_PATTERN.match(slug):
        return None
    try:
        return services.get_session(slug=slug, pk=participant_id)
    except services.SessionNotFound:
        return None


def _continue(study, participant):
    return _bind(redirect("study-run", slug=study.slug), study, participant)


def _error(request, study, error, participant=None):
    context = {"study": study, "message": error.message, "participant": participant}
    return render(request, "study/error.html", context, status=error.status)


def _resume_form(request, study, error, hidden=None, status=None):
    """The page that lets a participant continue their session in this browser with their resume code."""
    context = {
        "study": study,
        "message": error.message,
        "wrong_code": "resume_code" in error.errors,
        "hidden": hidden or {},
    }
    return render(request, "study/resume.html", context, status=status or error.status)


@require_http_methods(["GET", "POST"])
def entry(request, slug):
    """Prolific entry link /s/<slug>/?PROLIFIC_PID=..&STUDY_ID=..&SESSION_ID=.. : consent, then the session.

    A PROLIFIC_PID that already has a session continues it here only with that session's SESSION_ID or its resume
    code (a form on the page); otherwise the PID alone would hand anyone the session."""
    study = get_object_or_404(Study, slug=slug)
    source = request.POST if request.method == "POST" else request.GET
    try:
        entry_fields = services.clean_entry_fields(
            {
                "prolific_pid": source.get("PROLIFIC_PID"),
                "study_id": source.get("STUDY_ID"),
                "session_id": source.get("SESSION_ID"),
                "resume_code": request.POST.get("resume_code"),
            }
        )
    except services.FlowError as error:
        return _error(request, study, error)
    params = dict(zip(ENTRY_PARAMS, (entry_fields[k] for k in ("prolific_pid", "study_id", "session_id"))))
    current = _current_participant(request, study)
    if current is not None and (not params["PROLIFIC_PID"] or params["PROLIFIC_PID"] == current.external_id):
        return redirect("study-run", slug=study.slug)
    try:
        services.check_entry(study, params["PROLIFIC_PID"], params["STUDY_ID"], params["SESSION_ID"])
        if not params["PROLIFIC_PID"]:
            raise services.EntryRefused("Please open the study through the link you were given.")
        existing = services.find_session(study, params["PROLIFIC_PID"])
        if existing is not None:
            resumed = services.resume_session(
                existing, session_id=params["SESSION_ID"], resume_code=entry_fields["resume_code"]
            )
            return _continue(study, resumed)
        if request.method == "GET":
            return render(request, "study/consent.html", {"study": study, "params": params})
        if request.POST.get("decision") != "accept":
            return render(request, "study/declined.html", {"study": study})
        participant, _ = services.start_session(
            study,
            client=ratelimit.client_address(request),
            external_id=params["PROLIFIC_PID"],
            prolific_study_id=params["STUDY_ID"],
            prolific_session_id=params["SESSION_ID"],
        )
    except services.ResumeRequired as error:
        status = 403 if error.errors else 200
        return _resume_form(request, study, error, hidden=params, status=status)
    except services.FlowError as error:
        return _error(request, study, error)
    return _continue(study, participant)


@require_http_methods(["GET", "POST"])
def invite_entry(request, slug, token):
    """A single-use invitation link: consent, then the session. The browser that used it comes back to its session;
    another browser continues it with the session's resume code."""
    study = get_object_or_404(Study, slug=slug)
    current = _current_participant(request, study)
    if current is not None and current.invite is not None and current.invite.token == token:
        return redirect("study-run", slug=study.slug)
    resume_code = request.POST.get("resume_code", "")
    try:
        services.check_entry(study, "", study.prolific_study_id)
        if resume_code:
            participant, _ = services.start_session(study, invite_token=token, resume_code=resume_code)
            return _continue(study, participant)
        services.check_invite(study, token)
        if request.method == "GET":
            return render(request, "study/consent.html", {"study": study, "params": {}})
        if request.POST.get("decision") != "accept":
            return render(request, "study/declined.html", {"study": study})
        participant, _ = services.start_session(study, client=ratelimit.client_address(request), invite_token=token)
    except services.ResumeRequired as error:
        return _resume_form(request, study, error)
    except services.FlowError as error:
        return _error(request, study, error)
    return _continue(study, participant)


def _answer_from_form(post):
    """The answer fields the trial form sent (those of the question table), as the service expects them: a checklist
    as the list of its ticked values. Validation refuses a field that the trial's phase does not ask for, as it does
    for the JSON API."""
    answer = {}
    for question in questions.QUESTIONS:
        for name in question.fields:
            if name in post:
                answer[name] = (
                    post.getlist(name) if question.kind_of.value_type == questions.INTEGER_LIST else post[name]
                )
    return answer


NO_SESSION = (
    "This browser holds no session of this study. Please open the study through the link you were given; "
    "if you started it in another browser or on another device, that link asks for your resume code."
)


@require_http_methods(["GET", "POST"])
def run(request, slug):
    """The participant's current page, decided by the server: instructions, a trial, the end."""
    if request.method == "POST" and request.POST.get("action") != "begin":
        return _answer(request, slug)
    # One read: the session this browser holds, with its study; the study alone only to show that there is none.
    participant = _browser_session(request, slug)
    if participant is None:
        study = get_object_or_404(Study, slug=slug)
        return _error(request, study, services.SessionNotFound(NO_SESSION))
    study = participant.study
    if request.method == "POST":
        # The form sends the block as text; begin_block refuses anything but 1 or 2.
        block = {"1": 1, "2": 2}.get(request.POST.get("block", ""), request.POST.get("block"))
        try:
            services.begin_block(participant, block)
        except services.FlowError as error:
            return _error(request, study, error, participant)
        return redirect("study-run", slug=study.slug)
    return _page(request, study, participant)


def _answer(request, slug):
    """A trial form's answer: the session is read and locked once, by the id in this browser's cookie, inside the
    transaction that stores the answer; the study and the session are read again only to show an error."""
    submitted = _answer_from_form(request.POST)
    participant_id = _browser_participant_id(request, slug)
    try:
        if participant_id is None:
            raise services.SessionNotFound(NO_SESSION)
        services.answer_session({"pk": participant_id, "study__slug": slug}, request.POST.get("trial", ""), submitted)
    except services.FlowError as refusal:
        study = get_object_or_404(Study, slug=slug)
        participant = _current_participant(request, study)
        if participant is None:
            return _error(request, study, services.SessionNotFound(NO_SESSION))
        if isinstance(refusal, services.AnswerInvalid):
            return _page(request, study, participant, errors=refusal.errors, submitted=submitted)
        return _error(request, study, refusal, participant)
    return redirect("study-run", slug=slug)


@functools.lru_cache(maxsize=4096)
def _stimulus_url(token, urlconf, script_prefix):
    """`{% url 'stimulus-image' token %}`, kept per URLconf and script prefix: reversing a URL costs more than the
    rest of a trial's images and their markup, and a stimulus is shown on many trial pages."""
    return reverse("stimulus-image", args=[token], urlconf=urlconf)


def _stimulus_urls(tokens):
    urlconf, script_prefix = get_urlconf() or settings.ROOT_URLCONF, get_script_prefix()
    return [_stimulus_url(token, urlconf, script_prefix) for token in tokens]


def _page(request, study, participant, errors=None, submitted=None):
    errors, submitted = errors or {}, submitted or {}
    step = services.next_step(participant)
    context = {"study": study, "participant": participant, "step": step, "errors": errors, "submitted": submitted}
    status = 400 if errors else 200
    if step["state"] == "instructions":
        context["resume_code"] = services.format_resume_code(participant.resume_code)
        return render(request, "study/instructions.html", context)
    if step["state"] == "trial":
        context["image_urls"] = _stimulus_urls(step["trial"]["images"])
        context["preload_urls"] = _stimulus_urls(step["preload"])
        context["questions"] = _trial_questions(study, step["trial"], submitted)
        return render(request, "study/trial.html", context, status=status)
    if step["state"] == "complete":
        return render(request, "study/complete.html", context)
    return render(request, "study/ended.html", context)


def _trial_questions(study, trial, submitted):
    """The trial page's questions, each rendered by the snippet of its kind from what it shows: the question's
    fields, its bounds, a slider's start and its options, each with whether it is checked (the answer sent back
    after a refusal)."""
    shown = []
    for question in questions.asked_in(trial["phase"]):
        sent = submitted.get(question.name, [])
        sent = {str(value) for value in (sent if isinstance(sent, list) else [sent])}
        low, high = question.bounds_in(study) or (None, None)
        field = (
            ("name", question.name),
            ("label", question.label),
            ("required", question.required),
            ("missing", question.missing),
            ("moved_field", question.moved_field),
            ("low", low),
            ("high", high),
            ("anchors", question.anchors),
            ("start", trial.get(question.start_field)),
            ("options", tuple((value, label, str(value) in sent) for value, label in question.options_in(study))),
        )
        shown.append(_question_html(question.template, field))
    return shown


@functools.lru_cache(maxsize=2048)
def _question_html(template, field):
    """A question's snippet, rendered once per process for each question, study setting, slider start and answer
    sent back: every trial of a phase shows the same questions, and rendering them anew (a few microseconds per
    variable, repeated for every option) would cost more than the rest of the trial page. Rendered apart from the
    page, each snippet turns localisation off itself, as the page does around its numbers."""
    return render_to_string(template, {"field": dict(field)})


@require_http_methods(["GET", "POST"])
def withdraw(request, slug):
    study = get_object_or_404(Study, slug=slug)
    participant = _current_participant(request, study)
    if participant is None:
        return _error(request, study, services.SessionNotFound("There is no session to withdraw from."))
    if request.method == "POST":
        services.withdraw(participant)
        return render(request, "study/withdrawn.html", {"study": study})
    return render(
        request,
        "study/withdraw.html",
        {"study": study, "participant": participant, "step": services.next_step(participant)},
    )


@require_GET
def stimulus_image(request, token):
    """Serve a stimulus by its opaque id. Every image gets the same headers; nothing names its source or file."""
    stored = Stimulus.objects.filter(token=token).values_list("file", flat=True).first()
    if stored is None:
        raise Http404("no such image")
    try:
        data = images.stored_path(stored).read_bytes()
    except FileNotFoundError as exc:
        raise Http404("no such image") from exc
    response = HttpResponse(data, content_type="image/png")
    response["Cache-Control"] = IMAGE_CACHE_CONTROL
    response["Content-Disposition"] = 'inline; filename="image.png"'
    return response
