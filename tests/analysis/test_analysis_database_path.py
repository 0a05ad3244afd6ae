import io
import json

import pytest
from django.core.management import CommandError, call_command

from studyplatform import export, services
from studyplatform.models import Participant


@pytest.mark.django_db
def test_database_and_exported_csv_give_identical_analysis(open_study, tmp_path):
    call_command("simulate_participants", open_study.slug, "--n", "5", "--seed", "7", verbosity=0, stdout=io.StringIO())
    dropout, _ = services.start_session(open_study, external_id="left-early")
    first = Participant.objects.filter(study=open_study).order_by("index").first()
    services.exclude_participant(first, "answered too fast")

    from_db = tmp_path / "db"
    stdout = io.StringIO()
    call_command(
        "run_analysis", open_study.slug, "--out", str(from_db), "--readers", "simulated", verbosity=0, stdout=stdout
    )
    files = export.export_study(open_study, tmp_path / "export")
    from_csv = tmp_path / "csv"
    call_command(
        "run_analysis",
        "--from-csv",
        str(files["answers"]),
        "--participants",
        str(files["participants"]),
        "--out",
        str(from_csv),
        "--readers",
        "simulated",
        verbosity=0,
        stdout=io.StringIO(),
    )

    db_document = json.loads((from_db / "analysis.json").read_text())
    csv_document = json.loads((from_csv / "analysis.json").read_text())
    assert db_document["settings"].pop("input") == f"study {open_study.slug}"
    assert csv_document["settings"].pop("input").startswith("CSV ")
    assert db_document == csv_document

    # The simulated readers are analysed; the real participant who left early is not among them.
    assert db_document["n_participants"] == 4
    reasons = {e["participant"]: e["reason"] for e in db_document["exclusions"]}
    assert reasons == {first.label: "answered too fast"}
    assert db_document["readers"]["n_real"] == 1 and db_document["readers"]["n_simulated"] == 5
    assert "excluded " + first.label + ": answered too fast" in stdout.getvalue()
    assert db_document["block2"]["n_pairs"] == 4 * open_study.block2_cases
    for name in ("glmm_block1", "glmm_block2"):
        assert "method" in db_document["models"][name]
    assert (from_db / "report.html").exists() and (from_csv / "report.html").exists()


@pytest.mark.django_db
def test_an_unknown_study_is_a_clear_error():
    with pytest.raises(CommandError, match="no study with the slug 'nope'"):
        call_command("run_analysis", "nope", stdout=io.StringIO())


@pytest.mark.django_db
def test_a_study_without_answers_gives_nan_results_not_a_crash(open_study, tmp_path):
    call_command(
        "run_analysis", open_study.slug, "--out", str(tmp_path), "--no-models", verbosity=0, stdout=io.StringIO()
    )
    document = json.loads((tmp_path / "analysis.json").read_text())
    assert document["n_participants"] == 0
    primary = document["block1"]["realness_ttest"]["proposed_vs_baseline"]
    assert primary["t"] is None and "at least 2" in primary["note"]
    assert document["block2"]["correction_rate"]["proposed"]["note"] == "no wrong first decisions"
