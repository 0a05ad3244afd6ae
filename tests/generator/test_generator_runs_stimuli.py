"""The `generate_stimuli` job makes both models' counterfactuals of a study's cases and attaches them."""

import pytest

from generator.causal.production import to_png
from generator.data import load_splits
from jobs import runner
from jobs.models import Job
from studyplatform import services as study_services
from studyplatform.models import Stimulus
from tests.study.factories import StudyFactory

pytestmark = [pytest.mark.django_db, pytest.mark.ml]


def png_bytes(x, tmp_path, name):
    path = tmp_path / name
    to_png(x, path)
    return path.read_bytes()


def test_stimuli_job_attaches_baseline_and_proposed_counterfactuals_to_every_case(
    finished_run, phantom_dataset, media_root, tmp_path
):
    baseline, proposed = finished_run("base"), finished_run("ours", variant="expert")
    test = load_splits("phantom", phantom_dataset.root, 32, phantom_dataset.options)["test"]
    classes = test.graph["disease"].categories
    study = StudyFactory()
    diseased = [i for i in range(len(test.ids)) if int(test.pa["disease"][i]) != 0]
    block1 = study_services.add_case(
        study, label="P01", block=1, true_condition=classes[int(test.pa["disease"][0])], cf_condition="pneumonia",
        real_image=png_bytes(test.x[0], tmp_path, "p01.png"), source_id=test.ids[0],
    )  # fmt: skip
    block2 = study_services.add_case(
        study, label="C01", block=2, true_condition=classes[int(test.pa["disease"][diseased[0]])],
        real_image=png_bytes(test.x[diseased[0]], tmp_path, "c01.png"), source_id=test.ids[diseased[0]],
    )  # fmt: skip

    job = runner.run_inline("generate_stimuli", study_id=study.pk, baseline_run="base", proposed_run="ours", seed=5)
    assert job.status == Job.Status.SUCCEEDED, job.error
    for case, condition in ((block1, "pneumonia"), (block2, "healthy")):
        by_source = {s.source: s for s in Stimulus.objects.filter(case=case)}
        assert set(by_source) == {"real", "baseline", "proposed"}
        for role, run in (("baseline", baseline), ("proposed", proposed)):
            provenance = by_source[role].provenance
            assert by_source[role].condition == condition
            assert provenance["run"] == run.name and provenance["source_id"] == case.source_id
            assert provenance["intervention"] == {"disease": condition}
        # both models saw the same image under the same seed
        assert by_source["baseline"].provenance["seed"] == by_source["proposed"].provenance["seed"]
    assert job.result["imported"]["baseline"]["unmatched"] == []
    # Both images come from the held-out test split and pass the default screening.
    assert job.result["splits"] == {"P01": "test", "C01": "test"} and job.result["skipped"] == {}
    block1.refresh_from_db()
    assert block1.split == "test"
    assert sorted(job.result["imported"]["proposed"]["attached"]) == ["C01:proposed", "P01:proposed"]


def test_stimulus_sources_come_from_the_test_split_and_pass_screening_unless_the_researcher_says_otherwise(
    finished_run, phantom_dataset, media_root, tmp_path, admin_client
):
    finished_run("base")
    finished_run("ours", variant="expert")
    splits = load_splits("phantom", phantom_dataset.root, 32, phantom_dataset.options)
    train, test = splits["train"], splits["test"]
    classes = test.graph["disease"].categories
    by_age = sorted(range(len(test.ids)), key=lambda i: float(test.pa["age"][i]))
    oldest, youngest = by_age[-1], by_age[0]
    study = StudyFactory()

    def add(label, data, row):
        return study_services.add_case(
            study, label=label, block=1, true_condition=classes[int(data.pa["disease"][row])],
            cf_condition="healthy", real_image=png_bytes(data.x[row], tmp_path, f"{label}.png"),
            source_id=data.ids[row],
        )  # fmt: skip

    held_out, from_training, too_young = add("P01", test, oldest), add("P02", train, 0), add("P03", test, youngest)
    age = float(test.pa["age"][youngest])
    limit = (age + float(test.pa["age"][oldest])) / 2  # a stricter age limit that only P03's patient fails

    job = runner.run_inline("generate_stimuli", study_id=study.pk, baseline_run="base", proposed_run="ours",
                          screening={"min_age": limit})  # fmt: skip
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.result["splits"] == {"P01": "test", "P02": "train", "P03": "test"}
    assert job.result["skipped"] == {
        "P02": ["from the train split, which the models were trained on (not held out)"],
        "P03": [f"age {age:g} is under {limit:g}"],
    }
    assert "skipped P02: from the train split" in job.log_tail and "skipped P03: age" in job.log_tail
    sources = {case.label: set(case.stimuli.values_list("source", flat=True)) for case in study.cases.all()}
    assert sources == {"P01": {"real", "baseline", "proposed"}, "P02": {"real"}, "P03": {"real"}}
    from_training.refresh_from_db()
    assert from_training.split == "train"

    # The admin shows each case's split and its screening result, in the list and on the case page.
    listing = admin_client.get(f"/admin/studyplatform/case/?study__id__exact={study.pk}").content.decode()
    assert "column-split" in listing and "skipped: from the train split" in listing
    assert "passed (blank border 0%)" in listing
    page = admin_client.get(f"/admin/studyplatform/case/{too_young.pk}/change/").content.decode()
    assert "field-split" in page and f"skipped: age {age:g} is under {limit:g}" in page

    # Allowing the training split and turning screening off: every case gets its counterfactuals.
    job = runner.run_inline("generate_stimuli", study_id=study.pk, baseline_run="base", proposed_run="ours",
                          splits=["test", "train"], screening=False)  # fmt: skip
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.result["skipped"] == {}
    assert all(case.stimuli.count() == 3 for case in study.cases.all())
    held_out.refresh_from_db()
    assert held_out.split == "test"


def test_a_study_whose_every_case_fails_is_refused_with_the_reasons(
    finished_run, phantom_dataset, media_root, tmp_path
):
    finished_run("base")
    finished_run("ours", variant="expert")
    train = load_splits("phantom", phantom_dataset.root, 32, phantom_dataset.options)["train"]
    study = StudyFactory()
    case = study_services.add_case(
        study, label="P01", block=1, true_condition=train.graph["disease"].categories[int(train.pa["disease"][0])],
        cf_condition="healthy", real_image=png_bytes(train.x[0], tmp_path, "p01.png"), source_id=train.ids[0],
    )  # fmt: skip
    job = runner.run_inline("generate_stimuli", study_id=study.pk, baseline_run="base", proposed_run="ours")
    assert job.status == Job.Status.FAILED
    assert "no case of study" in job.message and "P01: from the train split" in job.message
    assert list(case.stimuli.values_list("source", flat=True)) == ["real"]
