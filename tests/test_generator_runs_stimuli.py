"""The `generate_stimuli` job makes both models' counterfactuals of a study's cases and attaches them."""

import pytest

from generator import services
from generator.data.datasets import load_splits
from studyplatform import jobs
from studyplatform import services as study_services
from studyplatform.models import Job, Stimulus
from tests.factories import StudyFactory

pytest_plugins = ["tests.generator_fixtures"]
pytestmark = [pytest.mark.django_db, pytest.mark.ml]


def png_bytes(x, tmp_path, name):
    path = tmp_path / name
    services.to_png(x, path)
    return path.read_bytes()


def test_stimuli_job_attaches_baseline_and_proposed_counterfactuals_to_every_case(
    finished_run, phantom_dataset, media_root, tmp_path
):
    import generator.tasks  # noqa: F401  (registers the job kinds)

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

    job = jobs.run_inline("generate_stimuli", study_id=study.pk, baseline_run="base", proposed_run="ours", seed=5)
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
    assert sorted(job.result["imported"]["proposed"]["attached"]) == ["C01:proposed", "P01:proposed"]
