"""REST API: the staff API (studies, cases, stimuli, participants, responses; admin users only) and the participant
flow as JSON under the participant's token, for custom front ends and simulated participants.

Both call the same services as the pages; the OpenAPI schema is served at /api/schema/.
"""

import io

from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.urls import path
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action, api_view, authentication_classes, permission_classes
from rest_framework.exceptions import ValidationError as ApiValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response as ApiResponse
from rest_framework.routers import DefaultRouter

from studyplatform import export, images, services
from studyplatform.models import Case, Participant, Response, Stimulus, Study
from studyplatform.models.study import CONDITION_CHOICES


def _service_call(fn, *args, **kwargs):
    """Translate a service's ValidationError into a 400 with its messages."""
    try:
        return fn(*args, **kwargs)
    except ValidationError as exc:
        raise ApiValidationError({"detail": exc.messages}) from exc
    except images.ImageRejected as exc:
        raise ApiValidationError({"detail": [str(exc)]}) from exc


# --- staff API -----------------------------------------------------------------------------------------------------


class StudySerializer(serializers.ModelSerializer):
    participant_counts = serializers.SerializerMethodField()

    class Meta:
        model = Study
        exclude = ["participant_counter"]
        read_only_fields = ["status", "created_at", "opened_at", "closed_at"]

    def get_participant_counts(self, study) -> dict:
        return services.participant_counts(study)


class CaseSerializer(serializers.ModelSerializer):
    real_image = serializers.ImageField(write_only=True, help_text="any image PIL reads; it is normalised")

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
        exclude = ["token", "plan"]


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
            "answered_at",
        ]


class StudyViewSet(viewsets.ModelViewSet):
    queryset = Study.objects.all()
    serializer_class = StudySerializer
    lookup_field = "slug"

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
    serializer_class = CaseSerializer
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self):
        queryset = super().get_queryset()
        if study := self.request.query_params.get("study"):
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
    serializer_class = StimulusSerializer
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self):
        queryset = super().get_queryset()
        if study := self.request.query_params.get("study"):
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

    def get_queryset(self):
        queryset = super().get_queryset()
        if study := self.request.query_params.get("study"):
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

    def get_queryset(self):
        queryset = super().get_queryset()
        if study := self.request.query_params.get("study"):
            queryset = queryset.filter(participant__study__slug=study)
        if participant := self.request.query_params.get("participant"):
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
AnswerIn = inline_serializer(
    "AnswerIn",
    {
        "trial": serializers.CharField(),
        "diagnosis": serializers.ChoiceField(CONDITION_CHOICES),
        "rt_ms": serializers.IntegerField(min_value=0),
        "realness": serializers.IntegerField(required=False),
        "slider_moved": serializers.BooleanField(required=False),
        "reasons": serializers.ListField(child=serializers.IntegerField(), required=False),
        "confidence": serializers.IntegerField(required=False),
    },
)
ProblemOut = inline_serializer(
    "Problem", {"error": serializers.CharField(), "detail": serializers.CharField(), "fields": serializers.DictField()}
)


def _problem(error):
    return ApiResponse({"error": error.code, "detail": error.message, "fields": error.errors}, status=error.status)


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


def _session_or_problem(token):
    try:
        return services.get_session(token), None
    except services.FlowError as error:
        return None, _problem(error)


@extend_schema(
    request=SessionStart,
    responses={200: Step, 201: Step, 400: ProblemOut, 403: ProblemOut},
    operation_id="participant_session_start",
)
@api_view(["POST"])
@authentication_classes([])
@permission_classes([AllowAny])
def participant_start(request):
    data = request.data if isinstance(request.data, dict) else {}
    study = Study.objects.filter(slug=str(data.get("study", ""))).first()
    if study is None:
        return _problem(services.SessionNotFound("No study with this slug."))
    if data.get("consent") is not True:
        return _problem(services.EntryRefused("Consent is required; nothing was stored."))
    try:
        participant, created = services.start_session(
            study,
            external_id=str(data.get("prolific_pid", "")),
            prolific_study_id=str(data.get("study_id", "")),
            prolific_session_id=str(data.get("session_id", "")),
            invite_token=str(data["invite"]) if data.get("invite") else None,
        )
    except services.FlowError as error:
        return _problem(error)
    payload = {"token": participant.token, **_step_payload(participant)}
    return ApiResponse(payload, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@extend_schema(responses={200: Step, 404: ProblemOut}, operation_id="participant_next")
@api_view(["GET"])
@authentication_classes([])
@permission_classes([AllowAny])
def participant_next(request, token):
    participant, problem = _session_or_problem(token)
    return problem or ApiResponse(_step_payload(participant))


@extend_schema(
    request=inline_serializer("BeginBlock", {"block": serializers.IntegerField()}),
    responses={200: Step, 404: ProblemOut, 409: ProblemOut},
    operation_id="participant_begin_block",
)
@api_view(["POST"])
@authentication_classes([])
@permission_classes([AllowAny])
def participant_begin(request, token):
    participant, problem = _session_or_problem(token)
    if problem:
        return problem
    block = request.data.get("block") if isinstance(request.data, dict) else None
    if block not in (1, 2):
        return _problem(services.FlowError("block must be 1 or 2"))
    try:
        participant = services.begin_block(participant, block)
    except services.FlowError as error:
        return _problem(error)
    return ApiResponse(_step_payload(participant))


@extend_schema(
    request=AnswerIn,
    responses={200: Step, 201: Step, 400: ProblemOut, 404: ProblemOut, 409: ProblemOut},
    operation_id="participant_answer",
)
@api_view(["POST"])
@authentication_classes([])
@permission_classes([AllowAny])
def participant_answer(request, token):
    participant, problem = _session_or_problem(token)
    if problem:
        return problem
    if not isinstance(request.data, dict):
        return _problem(services.AnswerInvalid("The answer must be a JSON object."))
    answer = {key: value for key, value in request.data.items() if key != "trial"}
    try:
        response, created = services.submit_answer(participant, str(request.data.get("trial", "")), answer)
    except services.FlowError as error:
        return _problem(error)
    participant.refresh_from_db()
    stored = {
        "diagnosis": response.diagnosis,
        "realness": response.realness,
        "reasons": response.reasons,
        "confidence": response.confidence,
        "rt_ms": response.rt_ms,
    }
    payload = {"created": created, "answer": stored, "next": _step_payload(participant)}
    return ApiResponse(payload, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@extend_schema(request=None, responses={200: Step, 404: ProblemOut}, operation_id="participant_withdraw")
@api_view(["POST"])
@authentication_classes([])
@permission_classes([AllowAny])
def participant_withdraw(request, token):
    participant, problem = _session_or_problem(token)
    if problem:
        return problem
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
