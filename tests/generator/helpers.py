"""Helpers of the generator's tests: the tiny phantom's options, random patient parents and tiny presets."""

import dataclasses

import torch

from generator.data.graph import BINARY, CONTINUOUS, MIMIC_GRAPH
from generator.training.presets import get_preset

PHANTOM_OPTIONS = {"n": 64, "seed": 0}
TINY_STEPS = 2


def random_parents(n, generator, graph=MIMIC_GRAPH, **given):
    """Parents of `n` patients, each node drawn from `generator` in the graph's order: uniform over its range when
    continuous, over its values otherwise. A node passed by name (e.g. `disease=[0, 1, 2]`) takes that value and
    draws nothing, so the other draws stay as they are."""
    parents = {}
    for node in graph.nodes:
        if node.name in given:
            parents[node.name] = torch.as_tensor(given[node.name])
        elif node.kind == CONTINUOUS:
            parents[node.name] = node.low + (node.high - node.low) * torch.rand(n, generator=generator)
        elif node.kind == BINARY:
            parents[node.name] = torch.randint(0, 2, (n,), generator=generator).float()
        else:
            parents[node.name] = torch.randint(0, node.cardinality, (n,), generator=generator)
    return parents


def tiny_preset(**changes):
    """A snapshot of the `test-32` preset with `changes`, for a test to train with: the way a run gets settings of its
    own, where editing the shared registry would change every other run."""
    return dataclasses.replace(get_preset("test-32"), **changes)
