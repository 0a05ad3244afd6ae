import base64
import io
import json
import re

import pandas as pd
import pytest
from django.core.management import CommandError, call_command

from analysis.simulate import Profile, simulate_answers

REQUIRED_KEYS = [
    "n_participants",
    "n_excluded",
    "exclusions",
    *[f"block1.accuracy_by_source.{s}" for s in ("real", "baseline", "proposed")],
    *[
        f"block1.accuracy_by_source_condition.{s}.{c}"
        for s in ("real", "baseline", "proposed")
        for c in ("healthy", "effusion", "pneumonia")
    ],
    *[f"block1.realness_mean.{s}" for s in ("real", "baseline", "proposed")],
    *[
        f"block1.realness_ttest.{t}.{k}"
        for t in ("proposed_vs_baseline", "proposed_vs_real")
        for k in ("t", "df", "p", "mean_diff", "ci95", "dz", "p_holm")
    ],
    *[f"block1.reasons_mean.{s}" for s in ("real", "baseline", "proposed")],
    *[f"block1.reasons_ttest.{t}.{k}" for t in ("proposed_vs_real", "proposed_vs_baseline") for k in ("t", "df", "p")],
    "block2.first_accuracy",
    *[f"block2.correction_rate.{m}" for m in ("baseline", "proposed")],
    *[f"block2.correction_rate_excluding_top_case.{m}" for m in ("baseline", "proposed")],
    *[
        f"block2.confidence_accuracy_r.{d}.{m}.{k}"
        for d in ("first", "final")
        for m in ("baseline", "proposed")
        for k in ("r", "df", "p")
    ],
    *[
        f"block2.confidence_accuracy_r_by_condition.{d}.{m}.{c}.{k}"
        for d in ("first", "final")
        for m in ("baseline", "proposed")
        for c in ("effusion", "pneumonia")
        for k in ("r", "df", "p")
    ],
    "models.glmm_block1",
    "models.glmm_block2",
]


def lookup(document, path):
    for key in path.split("."):
        document = document[key]
    return document


@pytest.fixture
def exported(tmp_path):
    """A simulated export: 12 participants with a planted realness effect, one of them timed out."""
    answers = simulate_answers(Profile().with_realness_shift("proposed", 10), 12, seed=4, n_block1=6, n_block2=6)
    answers_path = tmp_path / "answers.csv"
    answers.to_csv(answers_path, index=False)
    participants = pd.DataFrame(
        {
            "participant": sorted(answers["participant"].unique()),
            "external_id": "",
            "status": ["completed"] * 11 + ["timed_out"],
            "seed": 1,
            "order": "",
            "started_at": "",
            "completed_at": "",
            "duration_s": "",
            "excluded": 0,
            "exclusion_reason": "",
            "cf_assignment": "",
            "simulated": 1,
        }
    )
    participants_path = tmp_path / "participants.csv"
    participants.to_csv(participants_path, index=False)
    return answers_path, participants_path


def test_from_csv_writes_json_tables_figures_and_a_self_contained_report(exported, tmp_path):
    answers_path, participants_path = exported
    out = tmp_path / "out"
    stdout = io.StringIO()
    call_command(
        "run_analysis",
        "--from-csv",
        str(answers_path),
        "--participants",
        str(participants_path),
        "--out",
        str(out),
        "--no-models",
        "--readers",
        "simulated",
        stdout=stdout,
        verbosity=0,
    )
    document = json.loads((out / "analysis.json").read_text())
    for key in REQUIRED_KEYS:
        lookup(document, key)
    assert document["n_participants"] == 11 and document["n_excluded"] == 1
    assert document["exclusions"][0] == {
        "participant": "sim012",
        "status": "timed_out",
        "reason": "did not complete (status timed_out)",
    }
    primary = document["block1"]["realness_ttest"]["proposed_vs_baseline"]
    assert primary["p_holm"] >= primary["p"] and primary["ci95"][0] > 0
    assert document["multiplicity"]["primary_endpoint"] == "block1.realness_ttest.proposed_vs_baseline"

    summary = stdout.getvalue()
    assert "Participants analysed: 11, excluded: 1" in summary
    assert "excluded sim012: did not complete (status timed_out)" in summary
    assert "Primary endpoint" in summary

    for name in ("accuracy_block1", "tests", "realness_per_participant", "switch_table", "accuracy_change_per_case"):
        assert (out / f"{name}.csv").stat().st_size > 0
    imrmc = pd.read_csv(out / "imrmc_realness.csv")
    assert list(imrmc.columns) == ["reader", "case", "modality", "score", "truth"]
    assert len(imrmc) == 11 * 6 * 4  # per reader: 6 real + 6 synthetic images in each of the two modalities

    html = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 4
    assert all(base64.b64decode(image).startswith(b"\x89PNG") for image in images)
    assert not re.search(r'(src|href)="(http|/)', html)  # nothing to fetch: the file stands alone
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "accuracy_by_source_condition.png",
        "accuracy_change_by_case.png",
        "confidence_accuracy.png",
        "realness_by_source.png",
    ]


def test_format_option_limits_what_is_written(exported, tmp_path):
    answers_path, _ = exported
    out = tmp_path / "json-only"
    call_command(
        "run_analysis",
        "--from-csv",
        str(answers_path),
        "--out",
        str(out),
        "--format",
        "json",
        "--no-models",
        "--readers",
        "simulated",
        verbosity=0,
        stdout=io.StringIO(),
    )
    assert [p.name for p in out.iterdir()] == ["analysis.json"]
    with pytest.raises(CommandError, match="--format"):
        call_command("run_analysis", "--from-csv", str(answers_path), "--format", "pdf", stdout=io.StringIO())


def test_a_broken_csv_stops_with_the_row_and_column_and_writes_nothing(exported, tmp_path):
    answers_path, _ = exported
    text = answers_path.read_text().splitlines()
    text[3] = text[3].replace(",block1,", ",blok1,")
    answers_path.write_text("\n".join(text) + "\n")
    out = tmp_path / "never"
    with pytest.raises(CommandError, match=r"row 3 \(line 4\), column phase = 'blok1'"):
        call_command("run_analysis", "--from-csv", str(answers_path), "--out", str(out), stdout=io.StringIO())
    assert not out.exists()


def test_either_a_study_or_a_csv_is_required():
    with pytest.raises(CommandError, match="exactly one"):
        call_command("run_analysis", stdout=io.StringIO())


def test_simulated_answers_are_analysed_only_on_request_and_every_report_says_so(exported, tmp_path):
    answers_path, participants_path = exported
    with pytest.raises(CommandError, match="no real participants to analyse.*12 simulated.*--readers simulated"):
        call_command(
            "run_analysis", "--from-csv", str(answers_path), "--out", str(tmp_path / "x"), stdout=io.StringIO()
        )
    assert not (tmp_path / "x").exists()

    out, stdout = tmp_path / "simulated", io.StringIO()
    call_command(
        "run_analysis", "--from-csv", str(answers_path), "--participants", str(participants_path), "--out", str(out),
        "--no-models", "--readers", "simulated", stdout=stdout, verbosity=0,
    )  # fmt: skip
    document = json.loads((out / "analysis.json").read_text())
    assert document["readers"]["analysed"] == "simulated" and document["readers"]["n_simulated"] == 12
    assert stdout.getvalue().splitlines()[0].startswith("*** SIMULATED DATA ***")
    html = (out / "report.html").read_text()
    assert "<title>Reader study analysis (simulated data)</title>" in html
    assert html.index('class="readers-warning"><strong>SIMULATED DATA</strong>') < html.index("<h1>")


def test_real_participants_are_analysed_apart_from_simulated_ones_and_mixing_is_labelled(exported, tmp_path):
    answers_path, _ = exported
    answers = pd.read_csv(answers_path, dtype=str, keep_default_na=False)
    real = answers["participant"].isin(["sim001", "sim002", "sim003"])
    answers.loc[real, "simulated"] = "0"
    answers.to_csv(answers_path, index=False)

    out, stdout = tmp_path / "real", io.StringIO()
    call_command("run_analysis", "--from-csv", str(answers_path), "--out", str(out), "--no-models", stdout=stdout)
    document = json.loads((out / "analysis.json").read_text())
    assert document["n_participants"] == 3 and document["readers"]["analysed"] == "real"
    assert document["readers"]["note"] == "9 simulated participant(s) left out (--readers simulated analyses them)"
    assert "Real participants only; 9 simulated participant(s) left out" in stdout.getvalue()
    html = (out / "report.html").read_text()
    assert 'class="readers-warning"' not in html and "<title>Reader study analysis</title>" in html

    mixed = tmp_path / "mixed"
    call_command(
        "run_analysis", "--from-csv", str(answers_path), "--out", str(mixed), "--no-models", "--readers", "all",
        stdout=io.StringIO(),
    )  # fmt: skip
    document = json.loads((mixed / "analysis.json").read_text())
    assert document["n_participants"] == 12
    html = (mixed / "report.html").read_text()
    assert "SIMULATED DATA MIXED IN</strong>: this analysis pools 3 real and 9 simulated participants" in html
