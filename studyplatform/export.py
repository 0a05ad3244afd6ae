"""Exports of a study's answers for analysis: a tidy long CSV (one row per answer) and a participants CSV.

Prolific ids are personal data, so `external_id` is a keyed hash (HMAC-SHA256 with SECRET_KEY, per study) unless the
raw ids are asked for. Text cells that a spreadsheet would run as a formula (= + - @ at the start) are escaped.
"""

import csv
import hashlib
import hmac
from pathlib import Path

from django.conf import settings

from studycolumns import ANSWER_COLUMNS, PARTICIPANT_COLUMNS, questions
from studyplatform.models import Participant, Response

FORMULA_PREFIXES = ("=", "+", "-", "@")


def pseudonymise(study, external_id):
    if not external_id:
        return ""
    key = settings.SECRET_KEY.encode()
    digest = hmac.new(key, f"{study.slug}:{external_id}".encode(), hashlib.sha256).hexdigest()
    return f"x{digest[:16]}"


def escape_cell(value):
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def _timestamp(value):
    return value.isoformat().replace("+00:00", "Z") if value else ""


def answer_rows(study, raw_ids=False):
    """The study's answers as dicts with ANSWER_COLUMNS, in participant and serving order (attention checks are
    not answers about images and are left out). The answer cells come from the question table: each question's
    stored answer, empty where the phase did not ask it."""
    responses = (
        Response.objects.filter(participant__study=study)
        .exclude(phase=Response.Phase.ATTENTION)
        .select_related("participant", "case", "stimulus")
        .order_by("participant__index", "sequence")
    )
    for response in responses:
        participant = response.participant
        shown = response.stimulus
        # The correct answer is the condition the shown image depicts: the patient's own for a real image, the
        # intervened one for a counterfactual. Block 2 asks about the real image, also beside its counterfactual.
        true_condition = shown.condition
        row = {
            "participant": participant.label,
            "external_id": participant.external_id if raw_ids else pseudonymise(study, participant.external_id),
            "block": response.block,
            "trial_index": response.trial_index,
            "case": response.case.label,
            "image_source": shown.source,
            "true_condition": true_condition,
            "phase": response.phase,
            "cf_model": response.cf_model,
            "correct": int(response.diagnosis == true_condition),
            "answered_at": _timestamp(response.answered_at),
            "block1_design": study.block1_design,
            "simulated": int(participant.simulated),
        }
        asked = {question.name for question in questions.asked_in(response.phase)}
        for question in questions.QUESTIONS:
            row.update(
                question.export_cells(response.answer_to(question), question.name in asked, response.start_of(question))
            )
        yield row


def participant_rows(study, raw_ids=False):
    for participant in Participant.objects.filter(study=study).order_by("index"):
        order = [f"{t['block']}:{t['case']}/{t.get('source') or t['phase']}" for t in participant.plan if "case" in t]
        duration = (
            round((participant.completed_at - participant.consented_at).total_seconds(), 3)
            if participant.completed_at
            else None
        )
        yield {
            "participant": participant.label,
            "external_id": participant.external_id if raw_ids else pseudonymise(study, participant.external_id),
            "status": participant.status,
            "seed": participant.seed,
            "order": ";".join(order),
            "started_at": _timestamp(participant.consented_at),
            "completed_at": _timestamp(participant.completed_at),
            "duration_s": duration,
            "excluded": int(participant.excluded),
            "exclusion_reason": participant.exclusion_reason,
            "cf_assignment": ";".join(f"{case}:{model}" for case, model in sorted(participant.cf_assignment.items())),
            "simulated": int(participant.simulated),
        }


def write_csv(rows, columns, fileobj):
    writer = csv.DictWriter(fileobj, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow({column: escape_cell(row[column]) for column in columns})
        count += 1
    return count


def write_answers_csv(study, fileobj, raw_ids=False):
    return write_csv(answer_rows(study, raw_ids), ANSWER_COLUMNS, fileobj)


def write_participants_csv(study, fileobj, raw_ids=False):
    return write_csv(participant_rows(study, raw_ids), PARTICIPANT_COLUMNS, fileobj)


def export_study(study, out_dir, raw_ids=False):
    """Write <slug>-answers.csv and <slug>-participants.csv into out_dir; return their paths and row counts."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    answers_path = out_dir / f"{study.slug}-answers.csv"
    participants_path = out_dir / f"{study.slug}-participants.csv"
    with answers_path.open("w", newline="", encoding="utf-8") as fileobj:
        n_answers = write_answers_csv(study, fileobj, raw_ids)
    with participants_path.open("w", newline="", encoding="utf-8") as fileobj:
        n_participants = write_participants_csv(study, fileobj, raw_ids)
    return {
        "answers": answers_path,
        "participants": participants_path,
        "n_answers": n_answers,
        "n_participants": n_participants,
    }
