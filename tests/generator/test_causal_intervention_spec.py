"""`Intervention` reads do(...) as a person writes it, refuses what the graph does not know, and is the `do` the
models take."""

import pytest
import torch

from generator.causal.intervention import Intervention
from generator.causal.parents import ParentModel
from generator.data import MIMIC_GRAPH


def test_text_and_mappings_give_the_same_checked_intervention():
    parsed = Intervention.parse(MIMIC_GRAPH, "disease=healthy, age=70")
    assert dict(parsed) == {"disease": "healthy", "age": 70.0}
    assert parsed == Intervention.parse(MIMIC_GRAPH, {"disease": "healthy", "age": "70"})
    assert Intervention.parse(MIMIC_GRAPH, parsed) == parsed
    assert parsed.label() == "disease-healthy_age-70.0"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "expected parent=value"),
        ("disease", "expected parent=value"),
        ("disease=", "expected parent=value"),
        ("colour=red", "the graph has only age, sex, race, wcc, disease"),
        ("disease=flu", "choose one of healthy, effusion, pneumonia"),
        ("age=old", "expected a number"),
        ({}, "at least one parent=value"),
    ],
)
def test_malformed_or_unknown_interventions_are_refused_with_the_reason(spec, message):
    with pytest.raises(ValueError, match=message):
        Intervention.parse(MIMIC_GRAPH, spec)


def test_the_parent_model_takes_an_intervention_as_its_do():
    torch.manual_seed(0)
    model = ParentModel(MIMIC_GRAPH)
    pa = model.sample(4)
    do = Intervention.parse(MIMIC_GRAPH, "disease=pneumonia")
    counterfactual = model.counterfactual(pa, do)
    assert counterfactual["disease"].tolist() == [2, 2, 2, 2]
    assert torch.equal(counterfactual["age"], pa["age"])
