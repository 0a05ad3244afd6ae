"""REST API: the staff API (studies, cases, stimuli, participants, responses; staff users with the Django model
permissions, see `permissions`) and the participant flow as JSON under the participant's token, for custom front
ends and simulated participants.

Both call the same services as the pages; the OpenAPI schema is served to staff at /api/schema/ and summarised as a
page at /api/docs/.
"""

import functools
import io
import uuid

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, ValidationError
from django.http import HttpResponse
from django.urls import path
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import (
    action,
    api_view,
    authentication_classes,
    parser_classes,
    permission_classes,
    renderer_classes,
)
from rest_framework.exceptions import APIException, ParseError, PermissionDenied, UnsupportedMediaType
from rest_framework.exceptions import ValidationError as ApiValidationError
from rest_framework.negotiation import BaseContentNegotiation, DefaultContentNegotiation
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response as ApiResponse
from rest_framework.routers import DefaultRouter

from studycolumns import questions
from studyplatform import export, images, ratelimit, services
from studyplatform.models import Case, Participant, Response, Stimulus, Study
from studyplatform.parsers import BoundedJSONParser
from studyplatform.permissions import RAW_IDS_PERMISSION, StaffModelPermissions


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


def _service_call(fn, *args, **kwargs):
    """Translate a service's ValidationError into a 400 with its messages (a change to a frozen setting of an open
    study: 409, naming the fields)."""
    try:
        return fn(*args, **kwargs)
    except services.StudyFrozen as exc:
        raise Conflict({"detail": exc.messages, "fields": exc.fields}) from exc
    except ValidationError as exc:
        raise ApiValidationError({"detail": exc.messages}) from exc
    except images.ImageRejected as exc:
        raise ApiValidationError({"detail": [str(exc)]}) from exc


# --- staff API -----------------------------------------------------------------------------------------------------


def _study_param(request):
    """The ?study= filter of a list: a study slug, or a 400."""
    slug = request.query_params.get("study")
    if slug and not services.SLUG_PATTERN.match(slug):
        raise ApiValidationError({"study": ["a study slug"]})
    return slug


class StudySerializer(serializers.ModelSerializer):
    participant_counts = serializers.SerializerMethodField()

    class Meta:
        model = Study
        exclude = ["participant_counter"]
        read_only_fields = ["status", "created_at", "opened_at", "closed_at"]

    def get_participant_counts(self, study) -> dict:
        return services.participant_counts(study)


class CaseSerializer(serializers.ModelSerializer):
    # A plain file: the image pipeline reads it and refuses a bad one with a message naming the file.
    real_image = serializers.FileField(write_only=True, help_text="any image PIL reads; it is normalised")

    class Meta:
        model = Case
        fields = [
            "id",
            "study",
            "block",
            "label",
            "source_id",
            "true_condition",
            "cf_condition",
            "position",
            "real_image",
        ]
        read_only_fields = ["position"]
        extra_kwargs = {"cf_condition": {"required": False}}


class StimulusSerializer(serializers.ModelSerializer):
    image = serializers.FileField(write_only=True, help_text="any image PIL reads; it is normalised")
    url = serializers.SerializerMethodField()

    class Meta:
        model = Stimulus
        fields = [
            "id",
            "case",
            "source",
            "condition",
            "token",
            "url",
            "sha256",
            "original_name",
            "provenance",
            "created_at",
            "image",
        ]
        read_only_fields = ["token", "sha256", "original_name", "created_at"]
        extra_kwargs = {"condition": {"required": False}}

    def get_url(self, stimulus) -> str:
        return f"/i/{stimulus.token}"


class ParticipantSerializer(serializers.ModelSerializer):
    label = serializers.CharField(read_only=True)
    study = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = Participant
        exclude = ["token", "resume_code", "plan"]


class ResponseSerializer(serializers.ModelSerializer):
    participant = serializers.CharField(source="participant.label", read_only=True)
    case = serializers.CharField(source="case.label", read_only=True, allow_null=True)
    image_source = serializers.CharField(source="stimulus.source", read_only=True, allow_null=True)

    class Meta:
        model = Response
        fields = [
            "id",
            "participant",
            "sequence",
            "block",
            "phase",
            "trial_index",
            "case",
            "image_source",
            "cf_model",
            "diagnosis",
            "realness",
            "slider_start",
            "reasons",
            "confidence",
            "rt_ms",
            "other_answers",
            "answered_at",
        ]


class StudyViewSet(viewsets.ModelViewSet):
    queryset = Study.objects.all()
    serializer_class = StudySerializer
    lookup_field = "slug"
    permission_classes = [StaffModelPermissions]
    action_permissions = {
        "open": ["studyplatform.view_study", "studyplatform.change_study"],
        "close": ["studyplatform.view_study", "studyplatform.change_study"],
        "problems": ["studyplatform.view_study"],
        "export": ["studyplatform.view_study", "studyplatform.view_participant", "studyplatform.view_response"],
    }

    def perform_create(self, serializer):
        study = Study(**serializer.validated_data)
        serializer.instance = _service_call(services.save_study, study, self.request.user)

    def perform_update(self, serializer):
        study = serializer.instance
        for field, value in serializer.validated_data.items():
            setattr(study, field, value)
        _service_call(services.save_study, study, self.request.user, changed=serializer.validated_data.keys())

    @extend_schema(request=None, responses=StudySerializer)
    @action(detail=True, methods=["post"])
    def open(self, request, slug=None):
        study = _service_call(services.open_study, self.get_object(), request.user)
        return ApiResponse(StudySerializer(study).data)

    @extend_schema(request=None, responses=StudySerializer)
    @action(detail=True, methods=["post"])
    def close(self, request, slug=None):
        study = _service_call(services.close_study, self.get_object(), request.user)
        return ApiResponse(StudySerializer(study).data)

    @extend_schema(responses=inline_serializer("Problems", {"problems": serializers.ListField()}))
    @action(detail=True, methods=["get"])
    def problems(self, request, slug=None):
        return ApiResponse({"problems": services.study_problems(self.get_object())})

    @extend_schema(
        parameters=[
            OpenApiParameter("table", str, enum=["answers", "participants"]),
            OpenApiParameter("raw_ids", bool),
        ],
        responses={(200, "text/csv"): str},
    )
    @action(detail=True, methods=["get"])
    def export(self, request, slug=None):
        study = self.get_object()
        table = request.query_params.get("table", "answers")
        if table not in ("answers", "participants"):
            raise ApiValidationError({"table": ["answers or participants"]})
        raw_ids = request.query_params.get("raw_ids") in ("1", "true")
        if raw_ids and not request.user.has_perm(RAW_IDS_PERMISSION):
            raise PermissionDenied("Exporting raw Prolific ids needs the permission 'Can export raw Prolific ids'.")
        buffer = io.StringIO()
        writer = export.write_answers_csv if table == "answers" else export.write_participants_csv
        writer(study, buffer, raw_ids=raw_ids)
        if raw_ids:
            services.audit(request.user, "export.raw_ids", study, study, table=table)
        response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{study.slug}-{table}.csv"'
        return response


class CaseViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    queryset = Case.objects.select_related("study")
    permission_classes = [StaffModelPermissions]
    serializer_class = CaseSerializer
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self):
        queryset = super().get_queryset()
        if study := _study_param(self.request):
            queryset = queryset.filter(study__slug=study)
        return queryset

    def perform_create(self, serializer):
        data = dict(serializer.validated_data)
        upload = data.pop("real_image")
        serializer.instance = _service_call(
            services.add_case,
            data.pop("study"),
            real_image=upload.read(),
            real_image_name=upload.name,
            by=self.request.user,
            **data,
        )


class StimulusViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    queryset = Stimulus.objects.select_related("case")
    permission_classes = [StaffModelPermissions]
    serializer_class = StimulusSerializer
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self):
        queryset = super().get_queryset()
        if study := _study_param(self.request):
            queryset = queryset.filter(case__study__slug=study)
        return queryset

    def perform_create(self, serializer):
        data = serializer.validated_data
        upload = data["image"]
        serializer.instance = _service_call(
            services.attach_stimulus,
            data["case"],
            data["source"],
            upload.read(),
            name=upload.name,
            condition=data.get("condition"),
            provenance=data.get("provenance"),
            by=self.request.user,
        )


class ParticipantViewSet(mixins.DestroyModelMixin, viewsets.ReadOnlyModelViewSet):
    queryset = Participant.objects.select_related("study")
    serializer_class = ParticipantSerializer
    permission_classes = [StaffModelPermissions]
    action_permissions = {
        "exclude": ["studyplatform.view_participant", "studyplatform.change_participant"],
        "include": ["studyplatform.view_participant", "studyplatform.change_participant"],
    }

    def get_queryset(self):
        queryset = super().get_queryset()
        if study := _study_param(self.request):
            queryset = queryset.filter(study__slug=study)
        return queryset

    def perform_destroy(self, participant):
        services.delete_participant_data(participant, by=self.request.user)

    @extend_schema(
        request=inline_serializer("Exclusion", {"reason": serializers.CharField()}), responses=ParticipantSerializer
    )
    @action(detail=True, methods=["post"])
    def exclude(self, request, pk=None):
        reason = str(request.data.get("reason", ""))
        participant = _service_call(services.exclude_participant, self.get_object(), reason, by=request.user)
        return ApiResponse(ParticipantSerializer(participant).data)

    @extend_schema(request=None, responses=ParticipantSerializer)
    @action(detail=True, methods=["post"])
    def include(self, request, pk=None):
        participant = _service_call(services.include_participant, self.get_object(), by=request.user)
        return ApiResponse(ParticipantSerializer(participant).data)


class ResponseViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Response.objects.select_related("participant", "case", "stimulus")
    serializer_class = ResponseSerializer
    permission_classes = [StaffModelPermissions]

    def get_queryset(self):
        queryset = super().get_queryset()
        if study := _study_param(self.request):
            queryset = queryset.filter(participant__study__slug=study)
        if participant := self.request.query_params.get("participant"):
            try:
                participant = uuid.UUID(participant)
            except ValueError as exc:
                raise ApiValidationError({"participant": ["a participant id (UUID)"]}) from exc
            queryset = queryset.filter(participant_id=participant)
        return queryset


# --- participant flow ----------------------------------------------------------------------------------------------

SessionStart = inline_serializer(
    "SessionStart",
    {
        "study": serializers.SlugField(),
        "consent": serializers.BooleanField(help_text="must be true: the participant agreed to the consent text"),
        "prolific_pid": serializers.CharField(required=False),
        "study_id": serializers.CharField(required=False),
        "session_id": serializers.CharField(required=False),
        "invite": serializers.CharField(required=False),
        "resume_code": serializers.CharField(
            required=False, help_text="continues an existing session started in another browser"
        ),
    },
)
Step = inline_serializer(
    "Step",
    {
        "state": serializers.ChoiceField(["instructions", "trial", "complete", "ended"]),
        "status": serializers.CharField(),
        "block": serializers.IntegerField(required=False),
        "progress": serializers.DictField(),
        "trial": serializers.DictField(required=False),
        "preload": serializers.ListField(child=serializers.CharField(), required=False),
        "completion_code": serializers.CharField(required=False),
        "completion_url": serializers.CharField(required=False),
    },
)


def _number_field(question, required):
    """A whole number; the bounds that are fixed are stated, those that are study settings the service checks."""
    fixed = [bound if isinstance(bound, int) else None for bound in question.bounds]
    return serializers.IntegerField(min_value=fixed[0], max_value=fixed[1], required=required)


def _string_field(question, required):
    """Text; the choices of a choice stored in a column of its own are that column's (the service checks them
    against the study's settings)."""
    if question.kind == questions.CHOICE and question.own_column:
        return serializers.ChoiceField(Response._meta.get_field(question.name).choices, required=required)
    return serializers.CharField(required=required, allow_blank=not required)


# The schema of each JSON type of answer (`Kind.value_type`): a new kind of question of an existing type needs none.
ANSWER_SCHEMA_FIELDS = {
    questions.STRING: _string_field,
    questions.INTEGER: _number_field,
    questions.INTEGER_LIST: lambda question, required: serializers.ListField(
        child=serializers.IntegerField(min_value=1), required=required
    ),
}


def _answer_schema_fields(question):
    """The answer fields of one question for the schema; a field is required where every phase asks its question."""
    required = question.required and questions.phases_asking(question.name) == tuple(questions.PHASE_QUESTIONS)
    fields = {question.name: ANSWER_SCHEMA_FIELDS[question.kind_of.value_type](question, required)}
    if question.moved_field:
        fields[question.moved_field] = serializers.BooleanField(required=False)
    return fields


AnswerIn = inline_serializer(
    "AnswerIn",
    {
        "trial": serializers.CharField(),
        **{name: field for question in questions.QUESTIONS for name, field in _answer_schema_fields(question).items()},
    },
)
ProblemOut = inline_serializer(
    "Problem", {"error": serializers.CharField(), "detail": serializers.CharField(), "fields": serializers.DictField()}
)


def _problem(error):
    response = ApiResponse({"error": error.code, "detail": error.message, "fields": error.errors}, status=error.status)
    if error.status == 429:
        response["Retry-After"] = str(settings.SESSION_START_LIMITS["window_seconds"])
    return response


def _json_object(request, not_an_object=services.RequestInvalid):
    """The request body as a JSON object (an empty body is an empty object). A body over the size limit, of another
    media type, not valid JSON or not an object raises the FlowError to answer with."""
    try:
        data = request.data
    except RequestDataTooBig as exc:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raise services.RequestTooLarge(f"The request body is larger than {limit} bytes.") from exc
    except UnsupportedMediaType as exc:
        raise services.UnsupportedMediaType("Send the body as JSON (Content-Type: application/json).") from exc
    except ParseError as exc:
        raise services.RequestInvalid(f"The body is not valid JSON: {exc.detail}") from exc
    if not isinstance(data, dict):
        raise not_an_object("The body must be a JSON object.")
    return data


def _step_payload(participant):
    step = services.next_step(participant)
    for key in ("trial",):
        if key in step:
            step[key]["images"] = [f"/i/{token}" for token in step[key]["images"]]
    step["preload"] = [f"/i/{token}" for token in step.get("preload", [])]
    if step["state"] == "complete":
        step["completion_code"] = participant.study.completion_code
        step["completion_url"] = participant.study.completion_url
    return step


class AlwaysJSON(BaseContentNegotiation):
    """The participant API answers JSON whatever the Accept header asks for (errors included)."""

    def select_parser(self, request, parsers):
        return DefaultContentNegotiation().select_parser(request, parsers)

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def participant_endpoint(view):
    """A participant API view: JSON in and out (never the browsable HTML page), no authentication but the token,
    every FlowError answered as the JSON problem document."""

    @functools.wraps(view)
    def handle(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except services.FlowError as error:
            return _problem(error)

    handle = parser_classes([BoundedJSONParser])(handle)
    handle = renderer_classes([JSONRenderer])(handle)
    handle.content_negotiation_class = AlwaysJSON
    handle = permission_classes([AllowAny])(handle)
    return authentication_classes([])(handle)


@extend_schema(
    request=SessionStart,
    responses={
        200: Step,
        201: Step,
        400: ProblemOut,
        403: ProblemOut,
        404: ProblemOut,
        413: ProblemOut,
        429: ProblemOut,
    },
    operation_id="participant_session_start",
)
@api_view(["POST"])
@participant_endpoint
def participant_start(request):
    data = _json_object(request)
    if not isinstance(data.get("study"), str):
        raise services.RequestInvalid("Which study? The body needs the study's slug.", {"study": "study is required"})
    study = services.find_study(data["study"])
    if data.get("consent") is not True:
        raise services.EntryRefused("Consent is required; nothing was stored.")
    entry = services.clean_entry_fields(data)
    participant, created = services.start_session(
        study,
        client=ratelimit.client_address(request),
        external_id=entry["prolific_pid"],
        prolific_study_id=entry["study_id"],
        prolific_session_id=entry["session_id"],
        invite_token=entry["invite"] or None,
        resume_code=entry["resume_code"],
    )
    payload = {
        "token": participant.token,
        "resume_code": services.format_resume_code(participant.resume_code),
        **_step_payload(participant),
    }
    return ApiResponse(payload, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@extend_schema(responses={200: Step, 404: ProblemOut}, operation_id="participant_next")
@api_view(["GET"])
@participant_endpoint
def participant_next(request, token):
    return ApiResponse(_step_payload(services.get_session(token)))


@extend_schema(
    request=inline_serializer("BeginBlock", {"block": serializers.IntegerField()}),
    responses={200: Step, 400: ProblemOut, 404: ProblemOut, 409: ProblemOut},
    operation_id="participant_begin_block",
)
@api_view(["POST"])
@participant_endpoint
def participant_begin(request, token):
    participant = services.get_session(token)
    data = _json_object(request)
    return ApiResponse(_step_payload(services.begin_block(participant, data.get("block"))))


@extend_schema(
    request=AnswerIn,
    responses={200: Step, 201: Step, 400: ProblemOut, 404: ProblemOut, 409: ProblemOut, 413: ProblemOut},
    operation_id="participant_answer",
)
@api_view(["POST"])
@participant_endpoint
def participant_answer(request, token):
    data = _json_object(request, not_an_object=services.AnswerInvalid)
    answer = {key: value for key, value in data.items() if key != "trial"}
    response, created = services.answer_session({"token": token}, data.get("trial"), answer)
    # The session as the answer left it; its next step needs no second read of the participant.
    participant = response.participant
    stored = {question.name: response.answer_to(question) for question in questions.QUESTIONS}
    payload = {"created": created, "answer": stored, "next": _step_payload(participant)}
    return ApiResponse(payload, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@extend_schema(request=None, responses={200: Step, 404: ProblemOut}, operation_id="participant_withdraw")
@api_view(["POST"])
@participant_endpoint
def participant_withdraw(request, token):
    participant = services.get_session(token)
    return ApiResponse(_step_payload(services.withdraw(participant)))


router = DefaultRouter()
router.register("studies", StudyViewSet)
router.register("cases", CaseViewSet)
router.register("stimuli", StimulusViewSet)
router.register("participants", ParticipantViewSet)
router.register("responses", ResponseViewSet)

urlpatterns = [
    path("participant/sessions/", participant_start, name="participant-start"),
    path("participant/<str:token>/", participant_next, name="participant-next"),
    path("participant/<str:token>/begin/", participant_begin, name="participant-begin"),
    path("participant/<str:token>/answers/", participant_answer, name="participant-answer"),
    path("participant/<str:token>/withdraw/", participant_withdraw, name="participant-withdraw"),
    *router.urls,
]
