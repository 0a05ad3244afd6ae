"""Every state change of a study, its stimulus set and its participants.

Each function is one transaction that locks the rows it changes (`select_for_update`) and writes an AuditLog row.
Participant submissions are idempotent: the (participant, sequence) unique constraint allows one answer per trial,
and a repeated submission returns the stored answer instead of storing a second one. Views and the API only parse
input, call one function here and render the result; errors are raised as `FlowError` subclasses that carry the
HTTP status a view should answer with.
"""

import contextlib
import json
import logging
import re
import secrets
import uuid
import weakref
from collections import Counter
from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, connections, router, transaction
from django.db.models import Count, F, Q, sql
from django.db.models.signals import post_save, pre_save
from django.utils import timezone
from django.utils.crypto import constant_time_compare, get_random_string

from studycolumns import questions
from studyplatform import counterbalance, images, ratelimit
from studyplatform.models import AuditLog, Case, Invite, Participant, Response, Stimulus, Study
from studyplatform.models.study import CONDITIONS

logger = logging.getLogger(__name__)

EXTERNAL_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
# Tokens (participant, invite) are URL-safe base64; slugs are Django slugs. Anything else finds nothing, without a
# database query (PostgreSQL refuses NUL characters in a query parameter).
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SLUG_PATTERN = re.compile(r"^[-a-zA-Z0-9_]{1,60}$")
# Entry fields other than the PROLIFIC_PID (Prolific's STUDY_ID and SESSION_ID): printable text without control
# characters, at most 100 characters.
ENTRY_TEXT_PATTERN = re.compile(r"^[^\x00-\x1f\x7f]{0,100}$")
# Resume codes: 8 characters a person can read out and type (no 0/O, 1/I/L), shown as two groups of four.
RESUME_CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
RESUME_CODE_LENGTH = 8
CASE_FIELDS = {"label", "source_id", "position", "true_condition", "cf_condition"}


class FlowError(Exception):
    """A participant request the study cannot accept; nothing was stored."""

    status = 400
    code = "invalid"

    def __init__(self, message, errors=None):
        super().__init__(message)
        self.message = message
        self.errors = errors or {}


class AnswerInvalid(FlowError):
    code = "invalid_answer"


class RequestInvalid(FlowError):
    """The request itself is malformed: not a JSON object, a required field missing, a field of the wrong type."""

    code = "invalid_request"


class RequestTooLarge(FlowError):
    status = 413
    code = "request_too_large"


class UnsupportedMediaType(FlowError):
    status = 415
    code = "unsupported_media_type"


class EntryRefused(FlowError):
    status = 403
    code = "entry_refused"


class ResumeRequired(EntryRefused):
    """The session exists but this browser does not hold it: continuing needs Prolific's SESSION_ID of that session
    or the resume code shown when it started."""

    code = "resume_required"


class TooManyRequests(FlowError):
    status = 429
    code = "rate_limited"


class SessionNotFound(FlowError):
    status = 404
    code = "session_not_found"


class TrialNotFound(FlowError):
    status = 404
    code = "trial_not_found"


class StudyNotOpen(FlowError):
    status = 409
    code = "study_not_open"


class SessionEnded(FlowError):
    status = 409
    code = "session_ended"


class TrialOutOfOrder(FlowError):
    status = 409
    code = "trial_out_of_order"


# --- audit ------------------------------------------------------------------------------------------------------


def audit(actor, action, obj, study=None, **details):
    """Write one audit row. `actor` is a user, a Participant or None (the system)."""
    return AuditLog.objects.create(**_audit_fields(actor, action, obj, study, **details))


def _audit_fields(actor, action, obj, study=None, **details):
    user, label = None, "system"
    if isinstance(actor, Participant):
        label = f"participant {actor.label}"
    elif actor is not None and getattr(actor, "is_authenticated", False):
        user, label = actor, actor.get_username()
    return {
        "actor": user,
        "actor_label": label,
        "action": action,
        "study": study,
        "object_type": type(obj).__name__.lower(),
        "object_id": str(obj.pk),
        "details": details,
    }


# --- stimulus set -----------------------------------------------------------------------------------------------


def _lock_draft(study):
    study = Study.objects.select_for_update().get(pk=study.pk)
    if study.status != Study.Status.DRAFT:
        raise ValidationError(f"study {study.slug!r} is {study.status}: its stimulus set can only change in draft")
    return study


def _check_condition(value, what):
    if value not in CONDITIONS:
        raise ValidationError(f"{what} must be one of {', '.join(CONDITIONS)} (got {value!r})")


# Once a study is open, these settings shape every session (its trials, scales, time limit, links) or the meaning of
# a stored answer (the diagnosis labels, the numbering of the reasons); they stay as they were when it opened.
FROZEN_WHEN_OPEN = (
    "slug",
    "diagnosis_labels",
    "reasons",
    "realness_min",
    "realness_max",
    "confidence_min",
    "confidence_max",
    "attention_checks",
    "block1_design",
    "block1_patients",
    "block2_cases",
    "working_size",
    "display_size",
    "time_limit_minutes",
)
# Texts and settings that may change while participants take part; each change is recorded with the old and the new
# value in the audit log.
EDITABLE_WHEN_OPEN = (
    "title",
    "consent_text",
    "instructions_block1",
    "instructions_block2",
    "debrief_text",
    "prolific_study_id",
    "completion_code",
    "completion_url",
)


class StudyFrozen(ValidationError):
    """A change to a setting that is frozen because the study is open or closed; `fields` names each one."""

    def __init__(self, study, fields):
        self.fields = {
            name: f"{name} cannot change once the study has opened (it is {study.status})" for name in fields
        }
        super().__init__(
            f"Study {study.slug!r} is {study.status}: {', '.join(fields)} cannot change once the study has opened "
            f"(only {', '.join(EDITABLE_WHEN_OPEN)} can)."
        )


def frozen_changes(study, stored):
    """The frozen settings in which `study` differs from the `stored` row (none while the stored row is a draft)."""
    if stored is None or stored.status == Study.Status.DRAFT:
        return []
    return [name for name in FROZEN_WHEN_OPEN if getattr(study, name) != getattr(stored, name)]


@transaction.atomic
def save_study(study, by=None, changed=()):
    """Save researcher edits of a study's settings (not its status: see open_study / close_study).

    Once the study has opened, the settings in FROZEN_WHEN_OPEN cannot change (StudyFrozen); the others can, and the
    audit row keeps each changed value before and after."""
    _check_study_settings(study, raise_first=True)
    is_new = study.pk is None
    versions = {}
    if not is_new:
        locked = Study.objects.select_for_update().get(pk=study.pk)
        frozen = frozen_changes(study, locked)
        if frozen:
            raise StudyFrozen(locked, frozen)
        study.status = locked.status
        # Counters move with sessions, not with the researcher's form: keep the stored values.
        study.participant_counter = locked.participant_counter
        study.sessions_refused = locked.sessions_refused
        if locked.status != Study.Status.DRAFT:
            versions = {
                name: {"old": getattr(locked, name), "new": getattr(study, name)}
                for name in EDITABLE_WHEN_OPEN
                if getattr(study, name) != getattr(locked, name)
            }
    study.save()
    details = {"fields": sorted(changed)}
    if versions:
        details["changes"] = versions
    audit(by, "study.create" if is_new else "study.update", study, study, **details)
    return study


def _check_study_settings(study, raise_first=False):
    problems = []
    if sorted(study.diagnosis_labels or {}) != sorted(CONDITIONS):
        problems.append(f"diagnosis labels must be given for exactly {', '.join(CONDITIONS)}")
    reasons = study.reasons if isinstance(study.reasons, list) else None
    if not reasons or not all(isinstance(r, str) and r.strip() for r in reasons):
        problems.append("reasons must be a non-empty list of non-empty texts")
    if not study.realness_min < study.realness_max:
        problems.append("realness scale: the minimum must be below the maximum")
    if not study.confidence_min < study.confidence_max:
        problems.append("confidence scale: the minimum must be below the maximum")
    problems += _attention_check_problems(study)
    if raise_first and problems:
        raise ValidationError(problems)
    return problems


def _attention_check_problems(study):
    checks = study.attention_checks
    if checks in (None, ""):
        return []
    if not isinstance(checks, list):
        return ["attention checks must be a list"]
    problems = []
    for number, check in enumerate(checks, start=1):
        if not isinstance(check, dict) or set(check) != {"after", "instruction", "expected"}:
            problems.append(f"attention check {number} needs exactly the keys after, instruction, expected")
        elif not isinstance(check["after"], int) or not 1 <= check["after"] <= study.block1_images:
            problems.append(
                f"attention check {number}: 'after' must be a Block-1 trial number (1 to {study.block1_images} in "
                f"the {study.block1_design} design)"
            )
        elif check["expected"] not in CONDITIONS:
            problems.append(f"attention check {number}: 'expected' must be one of {', '.join(CONDITIONS)}")
    return problems


def _normalised(study, data, name):
    return images.normalise(data, name=name, working_size=study.working_size, display_size=study.display_size)


@transaction.atomic
def add_case(
    study,
    *,
    label,
    block,
    true_condition,
    real_image,
    real_image_name="real image",
    cf_condition=None,
    source_id="",
    position=None,
    by=None,
):
    """Add a patient (Block 1) or case (Block 2) with its real image. Block-2 counterfactuals are always "if healthy"
    and Block-2 cases must be diseased; a Block-1 patient's counterfactuals default to its own condition."""
    study = _lock_draft(study)
    if block not in (1, 2):
        raise ValidationError(f"case {label}: block must be 1 or 2")
    _check_condition(true_condition, f"case {label}: true condition")
    if block == 2:
        if true_condition == "healthy":
            raise ValidationError(f"case {label}: a Block-2 case must show effusion or pneumonia")
        cf_condition = "healthy"
    cf_condition = cf_condition or true_condition
    _check_condition(cf_condition, f"case {label}: counterfactual condition")
    if Case.objects.filter(study=study, label=label).exists():
        raise ValidationError(f"case {label}: the study already has a case with this label")
    png = _normalised(study, real_image, real_image_name)
    if position is None:
        position = Case.objects.filter(study=study, block=block).count()
    case = Case.objects.create(
        study=study,
        block=block,
        label=label,
        source_id=source_id,
        true_condition=true_condition,
        cf_condition=cf_condition,
        position=position,
    )
    _store_stimulus(case, Stimulus.Source.REAL, png, true_condition, real_image_name, {"source_id": source_id})
    audit(by, "case.add", case, study, label=label, block=block, true_condition=true_condition)
    return case


def _store_stimulus(case, source, png, condition, name, provenance):
    """Create or replace the case's image of this source (only drafts change, so no answer refers to it yet). The
    replaced file is removed once the new row has committed."""
    old = Stimulus.objects.filter(case=case, source=source).first()
    if old is not None:
        old_file = old.file
        old.delete()
        transaction.on_commit(lambda: images.remove(old_file))
    relative, digest = images.store(png)
    return Stimulus.objects.create(
        case=case,
        source=source,
        condition=condition,
        token=secrets.token_urlsafe(24),
        file=relative,
        sha256=digest,
        original_name=name[:300],
        provenance=provenance or {},
    )


@transaction.atomic
def attach_stimulus(case, source, image, *, name="upload", condition=None, provenance=None, by=None):
    """Attach (or replace) a counterfactual or real image of a case. Counterfactuals show the case's cf_condition."""
    study = _lock_draft(case.study)
    case = Case.objects.select_for_update().get(pk=case.pk)
    if source not in Stimulus.Source.values:
        raise ValidationError(f"case {case.label}: unknown image source {source!r}")
    expected = case.true_condition if source == Stimulus.Source.REAL else case.cf_condition
    condition = condition or expected
    if condition != expected:
        raise ValidationError(
            f"case {case.label}: the {source} image must show {expected} (got {condition}); both counterfactuals of "
            "a case show the same condition"
        )
    png = _normalised(study, image, name)
    stimulus = _store_stimulus(case, source, png, condition, name, provenance)
    audit(by, "stimulus.attach", stimulus, study, case=case.label, source=source, name=name)
    return stimulus


@transaction.atomic
def update_case(case, *, by=None, **fields):
    """Change a case's label, source id, position or conditions (draft only; images stay as they are)."""
    _lock_draft(case.study)
    case = Case.objects.select_for_update().get(pk=case.pk)
    if set(fields) - CASE_FIELDS:
        raise ValidationError(f"case {case.label}: cannot change {', '.join(sorted(set(fields) - CASE_FIELDS))}")
    for name in ("true_condition", "cf_condition"):
        if name in fields:
            _check_condition(fields[name], f"case {case.label}: {name.replace('_', ' ')}")
    has_counterfactuals = case.stimuli.exclude(source=Stimulus.Source.REAL).exists()
    if has_counterfactuals and fields.get("cf_condition", case.cf_condition) != case.cf_condition:
        raise ValidationError(f"case {case.label}: remove its counterfactuals before changing their condition")
    for name, value in fields.items():
        setattr(case, name, value)
    if case.block == 2 and (case.cf_condition != "healthy" or case.true_condition == "healthy"):
        raise ValidationError(f"case {case.label}: Block-2 cases show disease and have 'if healthy' counterfactuals")
    case.save()
    case.stimuli.filter(source=Stimulus.Source.REAL).update(condition=case.true_condition)
    audit(by, "case.update", case, case.study, fields=sorted(fields))
    return case


@transaction.atomic
def delete_case(case, by=None):
    _lock_draft(case.study)
    files = list(case.stimuli.values_list("file", flat=True))
    audit(by, "case.delete", case, case.study, label=case.label)
    case.delete()
    transaction.on_commit(lambda: [images.remove(f) for f in files])


@transaction.atomic
def record_case_source(case, *, split, screening=None, by=None):
    """Record where a case's source image comes from (its data-set split) and the stimulus screening it got; the
    screening result is kept in the provenance of the case's real image and shown with the case in the admin."""
    Case.objects.filter(pk=case.pk).update(split=split or "")
    case.split = split or ""
    if screening is not None:
        real = case.stimuli.filter(source=Stimulus.Source.REAL).first()
        if real is not None:
            real.provenance = {**real.provenance, "screening": screening}
            real.save(update_fields=["provenance"])
    reasons = (screening or {}).get("reasons", [])
    audit(by, "case.source", case, case.study, split=case.split, screening_reasons=reasons)
    return case


def import_counterfactual_manifest(study, manifest_dir, *, model_role=None, by=None):
    """Attach a generator's counterfactuals (manifest.json + PNGs in `manifest_dir`) to the study's cases.

    An item is attached to every case whose source_id equals the item's and whose counterfactual condition equals
    the item's intervention. The model role comes from the argument or the manifest. The whole manifest is checked
    first and imported in one transaction: a bad item changes nothing. Returns {"attached": [...], "unmatched": [...]}.
    """
    manifest_dir = Path(manifest_dir)
    manifest_path = manifest_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError as exc:
        raise ValidationError(f"{manifest_path}: no manifest.json in this folder") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"{manifest_path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("items"), list):
        raise ValidationError(f"{manifest_path}: expected an object with an 'items' list")
    role = model_role or manifest.get("model_role")
    if role not in counterbalance.MODELS:
        raise ValidationError(f"{manifest_path}: model role must be baseline or proposed (got {role!r})")

    cases = list(Case.objects.filter(study=study))
    planned, unmatched = [], []
    for number, item in enumerate(manifest["items"], start=1):
        where = f"{manifest_path} item {number}"
        if not isinstance(item, dict) or not isinstance(item.get("file"), str) or "source_id" not in item:
            raise ValidationError(f"{where}: needs 'file' and 'source_id'")
        disease = (item.get("intervention") or {}).get("disease")
        if disease not in CONDITIONS:
            raise ValidationError(f"{where}: intervention.disease must be one of {', '.join(CONDITIONS)}")
        file_path = (manifest_dir / item["file"]).resolve()
        if manifest_dir.resolve() not in file_path.parents:
            raise ValidationError(f"{where}: file {item['file']!r} lies outside the manifest folder")
        matches = [c for c in cases if c.source_id == str(item["source_id"]) and c.cf_condition == disease]
        if not matches:
            unmatched.append(str(item["source_id"]))
            continue
        try:
            data = file_path.read_bytes()
        except OSError as exc:
            raise ValidationError(f"{where}: cannot read {item['file']} ({exc.strerror})") from exc
        try:
            _normalised(study, data, f"{where} ({item['file']})")
        except images.ImageRejected as exc:
            raise ValidationError(str(exc)) from exc
        provenance = {
            "run": manifest.get("run", ""),
            "checkpoint": manifest.get("checkpoint", ""),
            "source_id": str(item["source_id"]),
            "intervention": item["intervention"],
            "seed": item.get("seed"),
            "expert_probabilities": item.get("expert_probabilities", {}),
        }
        planned += [(case, data, item["file"], disease, provenance) for case in matches]
    if not planned:
        raise ValidationError(
            f"{manifest_path}: no item matches a case of study {study.slug!r} (by source_id and intervened condition)"
        )
    with transaction.atomic():
        attached = [
            attach_stimulus(case, role, data, name=name, condition=disease, provenance=provenance, by=by)
            for case, data, name, disease, provenance in planned
        ]
        audit(
            by,
            "stimulus.import_manifest",
            study,
            study,
            run=manifest.get("run", ""),
            role=role,
            attached=len(attached),
            unmatched=len(unmatched),
        )
    return {"attached": [f"{s.case.label}:{s.source}" for s in attached], "unmatched": unmatched}


def study_problems(study):
    """Everything that stops the study from opening, as readable sentences (empty when it can open)."""
    problems = []
    if not study.consent_text.strip():
        problems.append("consent text is empty")
    if not study.instructions_block1.strip() or not study.instructions_block2.strip():
        problems.append("instructions for Block 1 and Block 2 are required")
    if not study.completion_code.strip():
        problems.append("the completion code is empty")
    problems += _check_study_settings(study)
    if study.block1_patients < 2:
        problems.append("Block 1 needs at least 2 patients (images of one patient are never shown back to back)")

    cases = list(Case.objects.filter(study=study).prefetch_related("stimuli"))
    problems += _block1_design_problems(study, [c for c in cases if c.block == 1])
    for block, wanted, sources in (
        (1, study.block1_patients, ("real", "baseline", "proposed")),
        (2, study.block2_cases, ("real", "baseline", "proposed")),
    ):
        block_cases = [c for c in cases if c.block == block]
        if len(block_cases) != wanted:
            problems.append(f"Block {block} needs {wanted} cases, has {len(block_cases)}")
        for case in block_cases:
            by_source = {s.source: s for s in case.stimuli.all()}
            missing = [s for s in sources if s not in by_source]
            if missing:
                problems.append(f"case {case.label}: missing {', '.join(missing)} image")
            for stimulus in by_source.values():
                if not images.stored_path(stimulus.file).is_file():
                    problems.append(f"case {case.label}: the {stimulus.source} image file is missing on disk")
            if block == 2 and case.true_condition == "healthy":
                problems.append(f"case {case.label}: Block-2 cases must show effusion or pneumonia")
            synthetic = {by_source[s].condition for s in ("baseline", "proposed") if s in by_source}
            if len(synthetic) > 1:
                problems.append(f"case {case.label}: the two counterfactuals show different conditions")
    return problems


# "You will see 36 chest X-rays": a number of Block-1 images stated in the instructions.
STATED_IMAGE_COUNT = re.compile(r"\b(\d+)\s+(?:chest\s+)?(?:x-rays|radiographs|images)\b", re.IGNORECASE)


def _block1_design_problems(study, block1_cases):
    """What stops the chosen Block-1 design: the instructions must state the number of images the design shows, and
    the counterbalanced Latin square needs a multiple of 3 patients (each participant sees every source on a third
    of them) whose real images show the conditions in the same proportions as their counterfactuals (so that no
    source shows a condition more often than another)."""
    problems = []
    stated = {int(number) for number in STATED_IMAGE_COUNT.findall(study.instructions_block1)}
    if stated - {study.block1_images}:
        problems.append(
            f"the Block-1 instructions speak of {', '.join(map(str, sorted(stated)))} images, but each participant "
            f"sees {study.block1_images} in the {study.block1_design} design"
        )
    if study.block1_design != Study.Block1Design.COUNTERBALANCED:
        return problems
    if study.block1_patients % 3:
        problems.append(
            f"the counterbalanced design needs a number of Block-1 patients divisible by 3 (each participant sees "
            f"each source on a third of them); it has {study.block1_patients}"
        )
    real = Counter(case.true_condition for case in block1_cases)
    synthetic = Counter(case.cf_condition for case in block1_cases)
    if real != synthetic:

        def shown(counts):
            return ", ".join(f"{condition} {counts[condition]}" for condition in CONDITIONS)

        problems.append(
            "the counterbalanced design needs every source to show the conditions in the same proportions: the real "
            f"images show {shown(real)}, the counterfactuals {shown(synthetic)}"
        )
    return problems


@transaction.atomic
def open_study(study, by=None):
    study = Study.objects.select_for_update().get(pk=study.pk)
    if study.status == Study.Status.OPEN:
        return study
    problems = study_problems(study)
    if problems:
        raise ValidationError([f"Study {study.slug!r} cannot open: {p}" for p in problems])
    study.status = Study.Status.OPEN
    study.opened_at = timezone.now()
    study.save(update_fields=["status", "opened_at"])
    audit(by, "study.open", study, study)
    return study


@transaction.atomic
def close_study(study, by=None):
    study = Study.objects.select_for_update().get(pk=study.pk)
    if study.status != Study.Status.CLOSED:
        study.status = Study.Status.CLOSED
        study.closed_at = timezone.now()
        study.save(update_fields=["status", "closed_at"])
        audit(by, "study.close", study, study)
    return study


@transaction.atomic
def create_invites(study, count, note="", by=None):
    study = Study.objects.select_for_update().get(pk=study.pk)
    if not 1 <= count <= 1000:
        raise ValidationError("between 1 and 1000 invites at a time")
    invites = [Invite.objects.create(study=study, token=secrets.token_urlsafe(24), note=note) for _ in range(count)]
    audit(by, "invite.create", study, study, count=count, note=note)
    return invites


def participant_counts(study):
    """How many participants of the study are in each status, in total, and excluded from the analysis."""
    return study.participants.aggregate(
        total=Count("pk"),
        excluded_from_analysis=Count("pk", filter=Q(excluded=True)),
        **{status: Count("pk", filter=Q(status=status)) for status in Participant.Status.values},
    )


# --- researcher actions on participants ---------------------------------------------------------------------------


@transaction.atomic
def exclude_participant(participant, reason, by=None):
    """Leave a participant out of the analysis. Their status becomes `excluded` (an active session ends) and the
    status it replaced is kept, so that `include_participant` can restore it."""
    participant = Participant.objects.select_for_update().get(pk=participant.pk)
    if not reason.strip():
        raise ValidationError("give a reason for the exclusion")
    previous = participant.status
    if participant.status != Participant.Status.EXCLUDED:
        participant.status_before_exclusion = participant.status
        participant.status = Participant.Status.EXCLUDED
    participant.excluded = True
    participant.exclusion_reason = reason.strip()[:200]
    participant.save(update_fields=["status", "status_before_exclusion", "excluded", "exclusion_reason"])
    audit(by, "participant.exclude", participant, participant.study, reason=reason, status=previous)
    return participant


@transaction.atomic
def include_participant(participant, by=None):
    """Count an excluded or timed-out participant's answers again. A researcher's exclusion is undone with the
    status it replaced (a completed participant is completed again); timed-out and withdrawn participants keep
    their status."""
    participant = Participant.objects.select_for_update().get(pk=participant.pk)
    if participant.status == Participant.Status.EXCLUDED and participant.status_before_exclusion:
        participant.status = participant.status_before_exclusion
    participant.status_before_exclusion = ""
    participant.excluded = False
    participant.exclusion_reason = ""
    participant.save(update_fields=["status", "status_before_exclusion", "excluded", "exclusion_reason"])
    audit(by, "participant.include", participant, participant.study, status=participant.status)
    return participant


@transaction.atomic
def mark_simulated(participant, by=None):
    """Flag a participant as a simulated reader (simulate_participants makes them): the admin and the export show
    it, and the analysis keeps simulated participants apart from real ones."""
    Participant.objects.filter(pk=participant.pk).update(simulated=True)
    participant.simulated = True
    audit(by, "participant.simulated", participant, participant.study)
    return participant


@transaction.atomic
def delete_participant_data(participant, by=None):
    """Delete a participant and every answer (a data-deletion request). The audit row keeps only the label."""
    participant = Participant.objects.select_for_update().get(pk=participant.pk)
    n_answers = participant.responses.count()
    audit(by, "participant.delete_data", participant, participant.study, label=participant.label, answers=n_answers)
    participant.delete()
    return n_answers


def expire_idle_sessions(study=None, now=None):
    """Mark every active session idle beyond its study's time limit as timed out. Returns how many."""
    now = now or timezone.now()
    active = Participant.objects.filter(status__in=Participant.ACTIVE).select_related("study")
    if study is not None:
        active = active.filter(study=study)
    return sum(expire_if_idle(p, now=now) for p in active if is_idle(p, now))


def is_idle(participant, now=None):
    """Whether this (loaded) session is active and has been idle longer than its study allows. Reads nothing."""
    now = now or timezone.now()
    limit = timedelta(minutes=participant.study.time_limit_minutes)
    return participant.status in Participant.ACTIVE and now - participant.last_seen_at > limit


@transaction.atomic
def expire_if_idle(participant, now=None):
    """Time out this session if it has been idle longer than the study allows; True when it did."""
    participant = _lock_participant(pk=participant.pk)
    return _time_out_if_idle(participant, now)


def _lock_participant(**lookup):
    """Read and lock the one participant row that `lookup` finds, with its study (read, not locked: answers of one
    study never wait for each other), or raise SessionNotFound. Call inside a transaction."""
    participant = read_session(lookup, lock=True)
    if participant is None:
        raise SessionNotFound("No study session belongs to this link.")
    return participant


# The lookups a session is read by, each with a sample value of its type (used to check the compiled query).
SESSION_LOOKUPS = {
    "pk": uuid.UUID(int=1),
    "token": "sample-token",
    "study_id": 1,
    "study__slug": "sample-slug",
}
_session_queries = weakref.WeakKeyDictionary()


def read_session(lookup, *, lock=False):
    """The one participant that `lookup` ({"pk": ...}, {"token": ...}, optionally with "study_id" or "study__slug")
    finds, with its study, or None; `lock` takes the participant's row lock (call inside a transaction).

    It is the ORM query `Participant.objects.select_related("study").filter(**lookup)` (with `select_for_update`
    when locking), compiled to SQL once per database connection and lookup: every request of a participant reads the
    session this way, and compiling the query (some 50 columns of two tables) would cost more than running it."""
    connection = connections[Participant.objects.db]
    names = tuple(sorted(lookup))
    queries = _session_queries.setdefault(connection, {})
    query = queries.get((names, lock))
    if query is None:
        query = queries[names, lock] = _SessionQuery(connection, names, lock)
    return query.read(lookup)


class _SessionQuery:
    """One compiled session read (see `read_session`): its SQL, the converters of its columns and the fields the
    columns fill in the participant and in the study."""

    def __init__(self, connection, names, lock):
        unknown = set(names) - SESSION_LOOKUPS.keys()
        if unknown:
            raise ValueError(f"a session is not read by {', '.join(sorted(unknown))}")
        self.connection, self.names = connection, names
        self.fields = [_lookup_field(name) for name in names]
        queryset = Participant.objects.select_related("study").order_by()
        queryset = queryset.filter(**{name: SESSION_LOOKUPS[name] for name in names})
        if lock:
            queryset = queryset.select_for_update(of=("self",))
        compiler = queryset.query.get_compiler(connection=connection)
        # Compiling a locking read outside a transaction is refused; this one only compiles.
        locking_outside = lock and connection.features.has_select_for_update and connection.get_autocommit()
        with transaction.atomic(using=connection.alias) if locking_outside else contextlib.nullcontext():
            self.sql, params = compiler.as_sql()
        # The compiled parameters are exactly the lookup values, in `names` order: a read substitutes its own.
        if list(params) != self.params({name: SESSION_LOOKUPS[name] for name in names}):
            raise RuntimeError(f"unexpected parameters {params!r} in the session query for {names}")
        self.sql = _named_placeholders(self.sql, len(params))
        columns = [column for column, _, _ in compiler.select[: compiler.col_count]]
        self.compiler, self.converters = compiler, compiler.get_converters(columns)
        study_info = compiler.klass_info["related_klass_infos"][0]
        self.participant_columns = compiler.klass_info["select_fields"]
        self.study_columns = study_info["select_fields"]
        self.participant_names = [columns[i].target.attname for i in self.participant_columns]
        self.study_names = [columns[i].target.attname for i in self.study_columns]
        # The plan is decoded by `_session_plan` (once per process and participant), with its column's converters.
        pk_name = Participant._meta.pk.attname
        self.pk_column, self.plan_column = (
            self.participant_columns[self.participant_names.index(name)] for name in (pk_name, "plan")
        )
        self.plan_converters = {0: self.converters.pop(self.plan_column)}

    def params(self, lookup):
        return [field.get_db_prep_value(lookup[name], self.connection) for name, field in zip(self.names, self.fields)]

    def decode_plan(self, stored):
        return next(self.compiler.apply_converters([[stored]], self.plan_converters))[0]

    def read(self, lookup):
        with self.connection.cursor() as cursor:
            cursor.execute(self.sql, _named_params(self.params(lookup)))
            row = cursor.fetchone()
        if row is None:
            return None
        row = next(self.compiler.apply_converters([row], self.converters))
        row[self.plan_column] = _session_plan(row[self.pk_column], row[self.plan_column], self.decode_plan)
        alias = self.connection.alias
        participant = Participant.from_db(alias, self.participant_names, [row[i] for i in self.participant_columns])
        participant.study = Study.from_db(alias, self.study_names, [row[i] for i in self.study_columns])
        return participant


def _named_placeholders(compiled_sql, count):
    """The compiled statement with its `count` positional placeholders (%s) named %(p0)s, %(p1)s, ... in order, to run
    with `_named_params`. Django's SQLite backend turns positional placeholders into SQLite's by a regular expression
    over the whole statement (some 20 µs for the 2,000 characters of the session read), named ones by one %-format;
    PostgreSQL takes either."""
    return compiled_sql.replace("%%", "%%%%") % tuple(f"%(p{i})s" for i in range(count))


def _named_params(params):
    return {f"p{i}": value for i, value in enumerate(params)}


# {participant id: (the plan as stored, the plan)}: the plans of the sessions this process serves, oldest first.
_session_plans = {}
SESSION_PLANS_KEPT = 256


def _session_plan(participant_id, stored, decode):
    """The participant's plan, decoded from its `stored` JSON. A plan is written once, when its session starts, and
    read by every request of the session, so each process decodes it once per participant and stored text (another
    text is decoded again) and hands out copies: a caller may change its plan without changing the one kept."""
    kept = _session_plans.get(participant_id)
    if kept is None or kept[0] != stored:
        plan = decode(stored)
        # Only a list of flat trials (no list or object inside one) is kept: a copy of each trial copies it all.
        if not isinstance(stored, str) or not _flat_trials(plan):
            return plan
        if len(_session_plans) >= SESSION_PLANS_KEPT:
            _session_plans.pop(next(iter(_session_plans)), None)
        kept = _session_plans[participant_id] = (stored, plan)
    return [dict(trial) for trial in kept[1]]


def _flat_trials(plan):
    return isinstance(plan, list) and all(
        isinstance(trial, dict) and not any(isinstance(value, (dict, list)) for value in trial.values())
        for trial in plan
    )


def _lookup_field(name):
    if name == "study__slug":
        return Study._meta.get_field("slug")
    if name == "pk":
        return Participant._meta.pk
    return Participant._meta.get_field(name)


# --- the answer's writes, compiled once --------------------------------------------------------------------------
#
# An answer writes three rows: the answer, the participant's counters and the audit row. Model.save() builds and
# compiles its statement again on every call, which costs several times what the database takes to run it. These two
# write what save() writes, through the model layer's own parts: the statement is compiled by Django's compiler once
# per database connection (and model, and set of fields), every value is prepared by its field as save() prepares it
# (pre_save, then get_db_prep_save), it runs on the connection's cursor inside the caller's transaction (marked for
# rollback on an error, as save() marks it), and the pre_save and post_save signals are sent. Each call only prepares
# its values and runs the statement. `tests/study/test_session_read.py` compares their rows and statements with
# save()'s.

_compiled_writes = weakref.WeakKeyDictionary()


def insert_row(obj):
    """Insert the new model instance `obj` (its primary key assigned by the database) as `obj.save()` does; return
    it, saved, with its primary key."""
    return _compiled_write(type(obj), obj, None).insert(obj)


def update_row(obj, update_fields):
    """Write the `update_fields` of the stored instance `obj` as `obj.save(update_fields=update_fields)` does."""
    _compiled_write(type(obj), obj, frozenset(update_fields)).update(obj)


def _compiled_write(model, obj, update_fields):
    connection = connections[router.db_for_write(model, instance=obj)]
    statements = _compiled_writes.setdefault(connection, {})
    key = (model, update_fields)
    statement = statements.get(key)
    if statement is None:
        statement = statements[key] = _CompiledWrite(connection, model, update_fields, obj)
    return statement


class _CompiledWrite:
    """One INSERT of a `model` row (`update_fields` None) or one UPDATE of its `update_fields` by primary key,
    compiled by Django's compiler from the first instance written; later writes substitute their own values."""

    def __init__(self, connection, model, update_fields, obj):
        meta = model._meta
        if meta.parents or meta.proxy or meta.order_with_respect_to or meta.select_on_save:
            raise ValueError(f"{model.__name__} is saved in more than one statement; use save()")
        self.connection, self.model, self.update_fields = connection, model, update_fields
        self.adding = update_fields is None
        if self.adding:
            # The fields Model._save_table inserts when the database assigns the primary key.
            self.fields = [f for f in meta.local_concrete_fields if not f.generated and f is not meta.auto_field]
            self.returning_fields = meta.db_returning_fields
            query = sql.InsertQuery(model)
            # Compiling needs the statement's shape only: `obj`'s values as they are (raw), without pre_save().
            query.insert_values(self.fields, [obj], raw=True)
        else:
            self.fields = [
                f
                for f in meta.local_concrete_fields
                if not f.primary_key and not f.generated and (f.name in update_fields or f.attname in update_fields)
            ]
            if len(self.fields) != len(update_fields):
                raise ValueError(f"{model.__name__} has no fields {', '.join(sorted(update_fields))} to update")
            self.returning_fields = []
            query = sql.UpdateQuery(model)
            query.add_update_fields([(f, None, value) for f, value in zip(self.fields, self.values(obj))])
            query.add_q(Q(pk=obj.pk))
        compiler = query.get_compiler(connection=connection)
        compiler.returning_fields = self.returning_fields
        compiled = compiler.as_sql()
        ((self.sql, params),) = compiled if self.adding else [compiled]
        # One plain placeholder per value, in order (and the primary key last in an UPDATE): a write passes its own.
        expected = len(self.fields) + (0 if self.adding else 1)
        if len(params) != expected or self.sql.count("%s") != expected:
            raise RuntimeError(f"unexpected placeholders in the compiled {self.sql!r}")
        self.sql = _named_placeholders(self.sql, expected)
        self.returning_params = getattr(compiler, "returning_params", ())
        returned_columns = [f.get_col(meta.db_table) for f in self.returning_fields]
        self.compiler, self.converters = compiler, compiler.get_converters(returned_columns)

    def values(self, obj):
        """The fields' values as save() takes them (pre_save: e.g. auto_now_add sets the time on `obj`)."""
        values = [field.pre_save(obj, self.adding) for field in self.fields]
        if any(hasattr(value, "resolve_expression") for value in values):
            raise TypeError("a compiled write takes plain values, not expressions; use save()")
        return values

    def params(self, obj):
        return [field.get_db_prep_save(value, self.connection) for field, value in zip(self.fields, self.values(obj))]

    def insert(self, obj):
        using = self.connection.alias
        obj._prepare_related_fields_for_save(operation_name="save")
        pre_save.send(sender=self.model, instance=obj, raw=False, using=using, update_fields=None)
        with transaction.mark_for_rollback_on_error(using), self.connection.cursor() as cursor:
            cursor.execute(self.sql, _named_params(self.params(obj)))
            returned = self._returned(cursor) if self.returning_fields else ()
        if self.converters:
            returned = next(self.compiler.apply_converters([returned], self.converters))
        for value, field in zip(returned, self.returning_fields):
            setattr(obj, field.attname, value)
        obj._state.db, obj._state.adding = using, False
        post_save.send(sender=self.model, instance=obj, created=True, update_fields=None, raw=False, using=using)
        return obj

    def _returned(self, cursor):
        if self.connection.features.can_return_columns_from_insert:
            return self.connection.ops.fetch_returned_insert_columns(cursor, self.returning_params)
        column = self.returning_fields[0].column
        return (self.connection.ops.last_insert_id(cursor, self.model._meta.db_table, column),)

    def update(self, obj):
        using, fields = self.connection.alias, self.update_fields
        obj._prepare_related_fields_for_save(operation_name="save")
        pre_save.send(sender=self.model, instance=obj, raw=False, using=using, update_fields=fields)
        with transaction.mark_for_rollback_on_error(using):
            params = [*self.params(obj), self.model._meta.pk.get_db_prep_value(obj.pk, self.connection)]
            with self.connection.cursor() as cursor:
                cursor.execute(self.sql, _named_params(params))
                updated = cursor.rowcount
            if updated < 1:
                raise DatabaseError("Save with update_fields did not affect any rows.")
        obj._state.db, obj._state.adding = using, False
        post_save.send(sender=self.model, instance=obj, created=False, update_fields=fields, raw=False, using=using)


def _time_out_if_idle(participant, now=None):
    """Time out a participant locked by the caller's transaction if the session is idle; True when it did."""
    if not is_idle(participant, now):
        return False
    participant.status = Participant.Status.TIMED_OUT
    participant.excluded = True
    participant.exclusion_reason = f"timed out: idle for more than {participant.study.time_limit_minutes} min"
    participant.save(update_fields=["status", "excluded", "exclusion_reason"])
    audit(
        None, "participant.timeout", participant, participant.study, last_seen_at=participant.last_seen_at.isoformat()
    )
    return True


# --- participant session ------------------------------------------------------------------------------------------


def check_entry(study, external_id, prolific_study_id, session_id=None):
    """Refuse an entry link for a closed study, a malformed PROLIFIC_PID or a STUDY_ID of another study, and (when
    `session_id` is given) a Prolific link without Prolific's SESSION_ID in a study that runs on Prolific."""
    if study.status != Study.Status.OPEN:
        raise StudyNotOpen("This study is not open at the moment.")
    if external_id and not EXTERNAL_ID_PATTERN.match(external_id):
        raise EntryRefused("The participant id in this link is not valid.")
    if study.prolific_study_id and prolific_study_id != study.prolific_study_id:
        raise EntryRefused("This link belongs to a different study. Please use the link from Prolific.")
    if session_id is not None and external_id and study.prolific_study_id and not session_id:
        raise EntryRefused("This link lacks Prolific's SESSION_ID. Please open the study through Prolific.")


def new_resume_code():
    return get_random_string(RESUME_CODE_LENGTH, RESUME_CODE_ALPHABET)


def normalise_resume_code(text):
    """A typed resume code as stored: upper case, without spaces or dashes."""
    return re.sub(r"[\s-]", "", text or "").upper()


def format_resume_code(code):
    """ABCD-EFGH, as the participant is shown it."""
    half = len(code) // 2
    return f"{code[:half]}-{code[half:]}" if code else ""


def resume_session(participant, *, session_id="", resume_code=""):
    """Let a browser that does not hold `participant`'s session continue it: with the SESSION_ID Prolific gave that
    session, or with its resume code. Wrong codes are counted per session; after
    SESSION_START_LIMITS["resume_code_attempts"] in a window, no code is accepted until the window ends."""
    stored_session_id = participant.prolific_session_id
    if session_id and stored_session_id and constant_time_compare(session_id, stored_session_id):
        return participant
    if not resume_code:
        raise ResumeRequired(
            "You have already started this study in another browser or window. To continue it here, enter the "
            "resume code you were shown when you started, or open the study again through your Prolific link."
        )
    if ratelimit.resume_attempts_left(participant) <= 0:
        raise TooManyRequests("Too many wrong resume codes for this session; please try again in an hour.")
    code = normalise_resume_code(resume_code)
    if participant.resume_code and constant_time_compare(code, participant.resume_code):
        return participant
    ratelimit.wrong_resume_code(participant)
    raise ResumeRequired(
        "That resume code is not the one of this session. Please check it and try again.",
        {"resume_code": "the resume code does not match this session"},
    )


def clean_entry_fields(values):
    """The entry fields of a session start (prolific_pid, study_id, session_id, invite, resume_code) as text.

    A field that is absent or null is empty; one that is not text, holds a control character or is longer than 100
    characters is refused with RequestInvalid naming the field. The pages and the JSON API both pass through here."""
    clean, errors = {}, {}
    for name in ("prolific_pid", "study_id", "session_id", "invite", "resume_code"):
        value = values.get(name)
        if value is None:
            clean[name] = ""
        elif not isinstance(value, str):
            errors[name] = f"{name} must be text"
        elif not ENTRY_TEXT_PATTERN.match(value.strip()):
            errors[name] = f"{name} must be at most 100 characters, without control characters"
        else:
            clean[name] = value.strip()
    if errors:
        raise RequestInvalid("The entry link is not valid: " + "; ".join(errors.values()), errors)
    return clean


def find_study(slug):
    """The study behind a slug in a link or request, or SessionNotFound."""
    study = Study.objects.filter(slug=slug).first() if isinstance(slug, str) and SLUG_PATTERN.match(slug) else None
    if study is None:
        raise SessionNotFound("No study with this slug.")
    return study


def find_session(study, external_id):
    """The existing session of this Prolific participant, if any (they resume it instead of starting again)."""
    if not external_id:
        return None
    return Participant.objects.filter(study=study, external_id=external_id).first()


def find_invite(study, token):
    """The invite behind a link (used or not), or EntryRefused when there is none."""
    invite = None
    if isinstance(token, str) and TOKEN_PATTERN.match(token):
        invite = Invite.objects.filter(study=study, token=token).first()
    if invite is None:
        raise EntryRefused("This invitation link is not valid.")
    return invite


def check_invite(study, token):
    """The unused invite behind a link; EntryRefused when it is unknown, ResumeRequired when it was used (its
    session continues in another browser with the resume code only)."""
    invite = find_invite(study, token)
    if invite.used_at is not None:
        raise ResumeRequired(
            "This invitation link has already been used. If you started the study with it in another browser or "
            "on another device, enter the resume code you were shown then to continue here."
        )
    return invite


def invite_session(invite):
    return Participant.objects.filter(invite=invite).select_related("study").first()


def session_plan(study, seed, participant_index):
    """The trial plan and Block-2 model assignment of the study's participant number `participant_index` whose
    session drew `seed` (stored with the participant, so a plan can be rebuilt from it)."""
    return counterbalance.build_plan(
        seed=seed,
        participant_index=participant_index,
        block1_cases=_block1_inputs(study),
        block1_design=study.block1_design,
        block1_conditions=_block1_conditions(study),
        block2_cases=_block2_inputs(study),
        slider_ranges=questions.slider_ranges(study),
        attention_checks=study.attention_checks or (),
    )


def start_session(study, *, client=None, **entry):
    """Start the session of a participant who consented, or let them resume theirs. Returns (participant, created).

    `entry` holds external_id, prolific_study_id, prolific_session_id, invite_token and resume_code (see
    `_start_session`). `client` is the requester's address for the rate limits (None: a caller inside the server,
    counted against the study's limit only). A start over a limit raises TooManyRequests and is counted on the
    study (`sessions_refused`)."""
    try:
        return _start_session(study, client=client, **entry)
    except TooManyRequests as refusal:
        if refusal.errors.get("limit") in ("per_client", "per_study"):
            Study.objects.filter(pk=study.pk).update(sessions_refused=F("sessions_refused") + 1)
            logger.warning(
                "session start refused study=%s limit=%s client=%s", study.slug, refusal.errors["limit"], client
            )
        raise


@transaction.atomic
def _start_session(
    study,
    *,
    client=None,
    external_id="",
    prolific_study_id="",
    prolific_session_id="",
    invite_token=None,
    resume_code="",
):
    """A Prolific participant is identified by PROLIFIC_PID; a second start with it continues their session only
    with the same SESSION_ID or the session's resume code (`resume_session`). An invite link starts one session;
    once used, it continues that session with the resume code only. The study row is locked so participant indexes
    (the counterbalancing) are dense."""
    study = Study.objects.select_for_update().get(pk=study.pk)
    external_id = (external_id or "").strip()
    prolific_session_id = (prolific_session_id or "").strip()
    check_entry(study, external_id, (prolific_study_id or "").strip(), None if invite_token else prolific_session_id)
    invite = None
    if invite_token:
        if external_id and find_session(study, external_id) is not None:
            raise EntryRefused(
                "This participant id already has a session in this study; continue it through its own link."
            )
        invite = find_invite(study, invite_token)
        if invite.used_at is not None and resume_code:
            participant = invite_session(invite)
            if participant is not None:
                return resume_session(participant, resume_code=resume_code), False
        invite = check_invite(study, invite_token)
        invite = Invite.objects.select_for_update().get(pk=invite.pk)
    elif not external_id:
        raise EntryRefused("Please open the study through the link you were given.")
    else:
        existing = find_session(study, external_id)
        if existing is not None:
            return resume_session(existing, session_id=prolific_session_id, resume_code=resume_code), False

    refused_by = ratelimit.take_session_start(study, client)
    if refused_by is not None:
        raise TooManyRequests(
            "Too many new sessions have been started from here in a short time; please try again later.",
            {"limit": refused_by},
        )

    study.participant_counter += 1
    study.save(update_fields=["participant_counter"])
    seed = counterbalance.new_seed()
    plan, assignment = session_plan(study, seed, study.participant_counter)
    now = timezone.now()
    participant = Participant.objects.create(
        study=study,
        index=study.participant_counter,
        token=secrets.token_urlsafe(32),
        resume_code=new_resume_code(),
        external_id=external_id,
        prolific_study_id=(prolific_study_id or "")[:100],
        prolific_session_id=(prolific_session_id or "")[:100],
        invite=invite,
        seed=seed,
        plan=plan,
        cf_assignment=assignment,
        consented_at=now,
        last_seen_at=now,
    )
    if invite is not None:
        invite.used_at = now
        invite.save(update_fields=["used_at"])
    audit(participant, "participant.start", participant, study, seed=seed, via="invite" if invite else "prolific")
    return participant, True


def _block1_inputs(study):
    cases = Case.objects.filter(study=study, block=1).prefetch_related("stimuli")
    return [(case.label, {s.source: s.pk for s in case.stimuli.all()}) for case in cases]


def _block1_conditions(study):
    """The Latin square's input in the counterbalanced design: (label, position, true and cf condition)."""
    if study.block1_design != Study.Block1Design.COUNTERBALANCED:
        return []
    return list(
        Case.objects.filter(study=study, block=1).values_list("label", "position", "true_condition", "cf_condition")
    )


def _block2_inputs(study):
    inputs = []
    for position, case in enumerate(Case.objects.filter(study=study, block=2).prefetch_related("stimuli")):
        by_source = {s.source: s.pk for s in case.stimuli.all()}
        cfs = {model: by_source[model] for model in counterbalance.MODELS}
        inputs.append((case.label, position, by_source["real"], cfs))
    return inputs


def get_session(token=None, *, study=None, pk=None, slug=None):
    """The participant behind a token (the JSON API) or, within `study` (or the study with this `slug`), behind the
    id that a browser's signed cookie names (the pages), read once with its study. An idle session is timed out here,
    on its first request after the limit; only then does this take a lock and write."""
    participant = None
    if study is not None and pk is not None:
        participant = read_session({"pk": pk, "study_id": study.pk})
        if participant is not None:
            participant.study = study
    elif slug is not None and pk is not None:
        participant = read_session({"pk": pk, "study__slug": slug})
    elif isinstance(token, str) and TOKEN_PATTERN.match(token):
        participant = read_session({"token": token})
    if participant is None:
        raise SessionNotFound("No study session belongs to this link.")
    if is_idle(participant) and expire_if_idle(participant):
        participant.refresh_from_db()
    return participant


def _lock_active(participant):
    return _check_active(_lock_participant(pk=participant.pk))


def _check_active(participant):
    if participant.study.status != Study.Status.OPEN:
        raise StudyNotOpen("This study is closed; no more answers can be recorded.")
    if participant.status not in Participant.ACTIVE:
        raise SessionEnded(f"This session has ended ({participant.get_status_display()}).")
    return participant


def _block_trials(participant, block):
    return [t for t in participant.plan if t["block"] == block]


@transaction.atomic
def begin_block(participant, block):
    """The participant has read the instructions of `block` (the integer 1 or 2). Repeating it changes nothing."""
    if type(block) is not int or block not in (1, 2):
        raise RequestInvalid("block must be 1 or 2", {"block": "block must be 1 or 2"})
    participant = _lock_active(participant)
    started_field = {1: "block1_started_at", 2: "block2_started_at"}[block]
    if getattr(participant, started_field):
        return participant
    if block == 2 and participant.n_answers < len(_block_trials(participant, 1)):
        raise TrialOutOfOrder("Block 1 is not finished yet.")
    now = timezone.now()
    setattr(participant, started_field, now)
    participant.status = Participant.Status.BLOCK1 if block == 1 else Participant.Status.BLOCK2
    participant.last_seen_at = now
    participant.save(update_fields=[started_field, "status", "last_seen_at"])
    audit(participant, f"participant.begin_block{block}", participant, participant.study)
    return participant


def validate_answer(study, trial, data):
    """Check a submitted answer against the questions of the trial's phase (`questions.PHASE_QUESTIONS`) and the
    study's scales; return the values to store or raise AnswerInvalid with one message per field."""
    if not isinstance(data, dict):
        raise AnswerInvalid("The answer must be an object of fields.")
    errors = {}
    unknown = sorted(set(data) - questions.ANSWER_FIELDS)
    if unknown:
        errors["unknown"] = f"unknown fields: {', '.join(map(str, unknown))}"
    clean = questions.clean_answer(study, trial["phase"], data, errors)
    if errors:
        raise AnswerInvalid("Please check your answer: " + "; ".join(errors.values()), errors)
    return clean


def submit_answer(participant, trial_id, data):
    """Store the answer to one trial and return (response, created).

    A trial already answered returns its stored answer (created False) whatever is sent: double clicks, reloads and
    replays never store a second answer and never change the first. Only the next unanswered trial of an active
    session in an open study can be answered.
    """
    return answer_session({"pk": participant.pk}, trial_id, data)


def answer_session(session, trial_id, data):
    """`submit_answer` for the session that `session` finds: {"token": ...} (the JSON API) or {"pk": ...,
    "study__slug": ...} (the id a browser's signed cookie names).

    One transaction reads and locks the participant row once, times the session out there if it has been idle too
    long, and stores the answer. The returned response's `participant` is that row as it is afterwards, holding the
    image tokens of its next step, so the caller builds the next step without reading the session again."""
    if not isinstance(trial_id, str):
        raise AnswerInvalid(
            "The answer does not say which question it is for.", {"trial": "trial (the question's id) is required"}
        )
    token = session.get("token", "")
    if not isinstance(token, str) or (token and not TOKEN_PATTERN.match(token)):
        raise SessionNotFound("No study session belongs to this link.")
    participant = refusal = None
    try:
        with transaction.atomic():
            participant = _lock_participant(**session)
            timed_out = _time_out_if_idle(participant)
            try:
                return _record_answer(participant, trial_id, data)
            except FlowError as error:
                if not timed_out:
                    raise
                # Nothing of the answer was written: the time-out commits, the answer is refused below.
                refusal = error
    except IntegrityError:
        # A concurrent request stored this trial first (databases without row locks): answer with that one.
        response = Response.objects.get(participant=participant, sequence=find_trial(participant, trial_id)["sequence"])
        participant.refresh_from_db()
        response.participant = participant
        return response, False
    if isinstance(refusal, SessionEnded):
        raise SessionEnded("This session timed out because it was idle for too long.")
    raise refusal


def find_trial(participant, trial_id):
    for trial in participant.plan:
        if trial["id"] == trial_id:
            return trial
    raise TrialNotFound("This question does not belong to your session.")


def _record_answer(participant, trial_id, data):
    """Store the answer of a participant whose row the caller's transaction holds locked: one read of the images
    (those of this trial and of the next step), the answer, the participant's counters and the audit row."""
    trial = find_trial(participant, trial_id)
    if trial["sequence"] < participant.n_answers:
        response = Response.objects.get(participant=participant, sequence=trial["sequence"])
        response.participant = participant
        return response, False
    _check_active(participant)
    study = participant.study
    if trial["sequence"] > participant.n_answers:
        raise TrialOutOfOrder("Please answer the questions in the order they are shown.")
    if (
        trial["block"] == 1
        and not participant.block1_started_at
        or trial["block"] == 2
        and not (participant.block2_started_at)
    ):
        raise TrialOutOfOrder(f"Please read the instructions of Block {trial['block']} first.")
    clean = validate_answer(study, trial, data)

    ids = _step_stimulus_ids(participant.plan, trial["sequence"] + 1)
    ids.update(i for i in (trial.get("stimulus"), trial.get("cf_stimulus")) if i)
    stimuli = study_stimuli(study, ids)
    participant.stimulus_tokens = {pk: token for pk, (token, _) in stimuli.items()}
    stimulus_id = trial.get("stimulus") if trial.get("stimulus") in stimuli else None
    cf_stimulus_id = trial.get("cf_stimulus") if trial.get("cf_stimulus") in stimuli else None
    response = Response(
        participant=participant,
        sequence=trial["sequence"],
        block=trial["block"],
        phase=trial["phase"],
        trial_index=trial["trial_index"],
        case_id=stimuli[stimulus_id][1] if stimulus_id else None,
        stimulus_id=stimulus_id,
        cf_stimulus_id=cf_stimulus_id,
        cf_model=trial.get("cf_model", ""),
        **Response.answer_fields(clean, trial),
    )
    insert_row(response)
    now = timezone.now()
    participant.n_answers += 1
    participant.last_seen_at = now
    fields = ["n_answers", "last_seen_at"]
    if trial["phase"] == "attention" and clean["diagnosis"] != trial["expected"] and not participant.excluded:
        participant.excluded = True
        participant.exclusion_reason = f"failed attention check {trial['trial_index']}"
        fields += ["excluded", "exclusion_reason"]
    if participant.n_answers == len(participant.plan):
        participant.status = Participant.Status.COMPLETED
        participant.completed_at = now
        fields += ["status", "completed_at"]
    update_row(participant, fields)
    answered = _audit_fields(
        participant, "answer.submit", response, study, sequence=trial["sequence"], phase=trial["phase"]
    )
    if participant.status == Participant.Status.COMPLETED:
        # The last answer and the completion are recorded in one statement.
        completed = _audit_fields(participant, "participant.complete", participant, study)
        AuditLog.objects.bulk_create([AuditLog(**answered), AuditLog(**completed)])
    else:
        insert_row(AuditLog(**answered))
    return response, True


@transaction.atomic
def withdraw(participant):
    """The participant leaves the study: their answers are deleted and the session ends. Repeating is harmless."""
    participant = Participant.objects.select_for_update().select_related("study").get(pk=participant.pk)
    if participant.status == Participant.Status.WITHDRAWN:
        return participant
    deleted, _ = participant.responses.all().delete()
    participant.status = Participant.Status.WITHDRAWN
    participant.excluded = True
    participant.exclusion_reason = "withdrew from the study"
    participant.n_answers = 0
    participant.save(update_fields=["status", "excluded", "exclusion_reason", "n_answers"])
    audit(participant, "participant.withdraw", participant, participant.study, answers_deleted=deleted)
    return participant


# --- what the participant sees next ------------------------------------------------------------------------------


def progress(participant):
    block_of_next = (
        participant.plan[participant.n_answers]["block"] if participant.n_answers < len(participant.plan) else 2
    )
    in_block = _block_trials(participant, block_of_next)
    done_in_block = sum(1 for t in in_block if t["sequence"] < participant.n_answers)
    return {
        "answered": participant.n_answers,
        "total": len(participant.plan),
        "block": block_of_next,
        "block_answered": done_in_block,
        "block_total": len(in_block),
        "percent": round(100 * participant.n_answers / max(1, len(participant.plan))),
    }


def public_trial(participant, trial, tokens):
    """What a participant may know about a trial: its id, its question and opaque image ids (never the source)."""
    shown = {
        "id": trial["id"],
        "block": trial["block"],
        "phase": trial["phase"],
        "number": trial["trial_index"],
        "images": [tokens[trial["stimulus"]]] if trial.get("stimulus") else [],
    }
    if trial.get("cf_stimulus"):
        shown["images"].append(tokens[trial["cf_stimulus"]])
    # A slider's random start is part of its question (the page sets the slider there).
    shown.update(
        (question.start_field, trial[question.start_field])
        for question in questions.asked_in(trial["phase"])
        if question.start_field
    )
    if trial["phase"] == "attention":
        shown["instruction"] = trial["instruction"]
    return shown


# {(study id, opened_at): {stimulus id: (token, case id)}}: the stimulus set of each open study this process serves.
_open_study_stimuli = {}
OPEN_STUDY_STIMULI_KEPT = 32


def study_stimuli(study, ids):
    """{stimulus id: (token, case id)} of the stimuli `ids` (those that exist).

    The stimulus set of an open study cannot change (it changes only in draft, see `_lock_draft`), so it is read
    once per process and opening of the study (keyed by the study's id and opened_at) and kept; for a study that is
    not open, one read of `ids`."""
    if study.status != Study.Status.OPEN or study.opened_at is None:
        rows = Stimulus.objects.filter(pk__in=ids).order_by().values_list("pk", "token", "case")
        return {pk: (token, case) for pk, token, case in rows}
    key = (study.pk, study.opened_at)
    index = _open_study_stimuli.get(key)
    if index is None:
        rows = Stimulus.objects.filter(case__study_id=study.pk).order_by().values_list("pk", "token", "case")
        index = {pk: (token, case) for pk, token, case in rows}
        if len(_open_study_stimuli) >= OPEN_STUDY_STIMULI_KEPT:
            _open_study_stimuli.clear()
        _open_study_stimuli[key] = index
    return {pk: index[pk] for pk in ids if pk in index}


def _step_stimulus_ids(plan, done):
    """The images of the step after `done` answers: its trial's image (and counterfactual) and the next trial's image,
    which is preloaded."""
    if done >= len(plan):
        return set()
    trial, following = plan[done], plan[done + 1] if done + 1 < len(plan) else {}
    return {i for i in (trial.get("stimulus"), trial.get("cf_stimulus"), following.get("stimulus")) if i}


def next_step(participant):
    """The server's decision of what the participant sees now.

    state: instructions (with block), trial, complete or ended (withdrawn, timed out, excluded, study closed)."""
    step = {"progress": progress(participant), "status": participant.status}
    plan, done = participant.plan, participant.n_answers
    if participant.status == Participant.Status.COMPLETED:
        return {**step, "state": "complete"}
    if participant.status not in Participant.ACTIVE:
        return {**step, "state": "ended"}
    if participant.study.status != Study.Status.OPEN:
        return {**step, "state": "ended", "status": "study_closed"}
    trial = plan[done]
    if trial["block"] == 1 and not participant.block1_started_at:
        return {**step, "state": "instructions", "block": 1}
    if trial["block"] == 2 and not participant.block2_started_at:
        return {**step, "state": "instructions", "block": 2}
    # The next trial's images are preloaded, except a counterfactual: its token is issued only with its own trial,
    # i.e. once the Block-2 first answer it follows is stored, so it cannot be fetched (or seen) any earlier.
    following = plan[done + 1] if done + 1 < len(plan) else None
    preload_ids = [following["stimulus"]] if following and following.get("stimulus") else []
    ids = _step_stimulus_ids(plan, done)
    # An answer has read these tokens already in its transaction (`_record_answer`).
    tokens = getattr(participant, "stimulus_tokens", {})
    if not ids <= tokens.keys():
        tokens = {pk: token for pk, (token, _) in study_stimuli(participant.study, ids).items()}
    return {
        **step,
        "state": "trial",
        "trial": public_trial(participant, trial, tokens),
        "preload": [tokens[i] for i in preload_ids],
    }
