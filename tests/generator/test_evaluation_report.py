"""The Table-1-style report: its columns, values and the three files it writes."""

import csv
import json

import pytest

from generator.evaluation import evaluate
from generator.evaluation.report import TABLE1, table_rows, write_report
from tests.generator.test_evaluation_evaluate import (
    CodeReader,
    CodingModel,
    Expert,
    IdentityModel,
    OtherCodeReader,
    make_split,
)


def summary(mean, low, high):
    return {"mean": mean, "ci95": [low, high], "n": 10}


def hand_made_result(auroc, seed):
    return {
        "seed": seed,
        "n": 10,
        "effectiveness": {"evaluation_predictors": {"disease": {"auroc": summary(auroc, auroc - 0.05, auroc + 0.05)}}},
        "composition": {"repeats_1": {"ssim": summary(0.95, 0.94, 0.96), "fid": summary(0.5, 0.4, 0.6)}},
        "reversibility": {"cycles_1": {"ssim": summary(0.9, 0.88, 0.92), "fid": summary(0.7, 0.6, 0.8)}},
    }


def test_rows_carry_table1_means_and_intervals_and_mark_missing_figures():
    rows, columns = table_rows({"Baseline": hand_made_result(0.85, 1), "Ours+10%": hand_made_result(0.9, 2)})
    assert [c.name for c in columns[:5]] == list(TABLE1)
    baseline, ours = rows
    assert baseline["model"] == "Baseline" and ours["seed"] == 2
    assert baseline["effectiveness_disease_auroc"] == 0.85
    assert ours["effectiveness_disease_auroc_lo"] == pytest.approx(0.85)
    assert baseline["reversibility_fid_hi"] == 0.8
    assert baseline["effect_localisation"] is None  # not evaluated: no phantom


def test_write_report_writes_csv_json_and_markdown_from_real_evaluations(tmp_path):
    split, scm = make_split(n=24, with_noise=True)
    kwargs = {"n": 24, "n_boot": 20, "fid_boot": 10, "phantom_scm": scm}
    results = {
        "Baseline": evaluate.evaluate_model(IdentityModel(), split, CodeReader(), seed=1, **kwargs),
        "Ours+10%": evaluate.evaluate_model(
            CodingModel(), split, CodeReader(), expert=Expert(), training_predictors=OtherCodeReader(), seed=2, **kwargs
        ),
    }
    paths = write_report(results, tmp_path / "report")

    with open(paths["csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["model"] for row in rows] == ["Baseline", "Ours+10%"]
    for name in TABLE1:
        assert {name, f"{name}_lo", f"{name}_hi"} <= set(rows[0])
        assert all(row[name] != "" for row in rows)
    assert float(rows[1]["effectiveness_disease_auroc"]) == pytest.approx(1.0)
    assert float(rows[0]["composition_ssim"]) == pytest.approx(1.0)
    assert "removal_l1_identity" in rows[0] and "addition_effusion_iou_model" in rows[0]
    assert rows[0]["expert_p_pneumonia_do_disease_pneumonia"] == ""  # the baseline was evaluated without an expert

    with open(paths["json"]) as handle:
        stored = json.load(handle)
    assert stored["table1"] == list(TABLE1)
    assert stored["results"]["Ours+10%"]["seed"] == 2
    assert {c["name"] for c in stored["columns"]} >= set(TABLE1)

    with open(paths["markdown"]) as handle:
        text = handle.read()
    assert "| Model | Effectiveness (disease, AUROC) | Composition SSIM |" in text
    assert "| Ours+10% | 1.0000 [1.0000, 1.0000] |" in text
    assert "Effectiveness by the TRAINING predictors" in text
    assert "Baseline: seed 1" in text


def test_an_empty_comparison_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        write_report({}, tmp_path)
