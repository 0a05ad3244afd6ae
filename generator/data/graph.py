"""Causal graphs of the patient variables, declared once as data.

The data sets that carry these variables declare their graph here; the generator's parent model is built from the
same declaration (generator/causal), so it learns exactly the graph the data came from. This module knows nothing
about models.
"""

from dataclasses import dataclass, field

CONTINUOUS = "continuous"
BINARY = "binary"
CATEGORICAL = "categorical"
NODE_KINDS = (CONTINUOUS, BINARY, CATEGORICAL)

DISEASE_CLASSES = ("healthy", "effusion", "pneumonia")


@dataclass(frozen=True)
class Node:
    """One patient variable.

    Continuous nodes carry their plausible range (used to scale them to [-1, 1] for the image model); binary and
    categorical nodes carry the names of their values, index i meaning categories[i].
    """

    name: str
    kind: str
    parents: tuple = ()
    categories: tuple = ()
    low: float = 0.0
    high: float = 1.0
    unit: str = ""

    def __post_init__(self):
        if self.kind not in NODE_KINDS:
            raise ValueError(f"node {self.name!r}: kind must be one of {NODE_KINDS}, got {self.kind!r}")
        if self.kind == BINARY and len(self.categories) != 2:
            raise ValueError(f"binary node {self.name!r} needs exactly two category names")
        if self.kind == CATEGORICAL and len(self.categories) < 2:
            raise ValueError(f"categorical node {self.name!r} needs at least two categories")
        if self.kind == CONTINUOUS and not self.high > self.low:
            raise ValueError(f"continuous node {self.name!r} needs low < high")

    @property
    def cardinality(self):
        return len(self.categories) if self.kind != CONTINUOUS else 0


@dataclass(frozen=True)
class CausalGraph:
    """A DAG of nodes, stored in a topological order that is checked on construction."""

    name: str
    nodes: tuple = field(default_factory=tuple)

    def __post_init__(self):
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"graph {self.name!r} has duplicate node names")
        seen = set()
        for node in self.nodes:
            for parent in node.parents:
                if parent not in names:
                    raise ValueError(f"node {node.name!r} has unknown parent {parent!r}")
                if parent not in seen:
                    raise ValueError(
                        f"graph {self.name!r} is not in topological order or has a cycle at {node.name!r} <- {parent!r}"
                    )
            seen.add(node.name)

    @property
    def names(self):
        return tuple(n.name for n in self.nodes)

    def __getitem__(self, name):
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def __contains__(self, name):
        return name in self.names

    def children(self, name):
        return tuple(n.name for n in self.nodes if name in n.parents)

    def descendants(self, name):
        """All nodes reachable from `name` (excluding itself), in topological order."""
        found = set()
        frontier = [name]
        while frontier:
            for child in self.children(frontier.pop()):
                if child not in found:
                    found.add(child)
                    frontier.append(child)
        return tuple(n for n in self.names if n in found)

    def to_dict(self):
        return {
            "name": self.name,
            "nodes": [
                {
                    "name": n.name,
                    "kind": n.kind,
                    "parents": list(n.parents),
                    "categories": list(n.categories),
                    "low": n.low,
                    "high": n.high,
                    "unit": n.unit,
                }
                for n in self.nodes
            ],
        }

    @classmethod
    def from_dict(cls, data):
        nodes = tuple(
            Node(
                name=n["name"],
                kind=n["kind"],
                parents=tuple(n.get("parents", ())),
                categories=tuple(n.get("categories", ())),
                low=n.get("low", 0.0),
                high=n.get("high", 1.0),
                unit=n.get("unit", ""),
            )
            for n in data["nodes"]
        )
        return cls(name=data["name"], nodes=nodes)


AGE = Node("age", CONTINUOUS, low=18.0, high=90.0, unit="years")
SEX = Node("sex", BINARY, categories=("female", "male"))
RACE = Node("race", CATEGORICAL, categories=("white", "asian", "black"))
WCC = Node("wcc", CONTINUOUS, low=2.0, high=25.0, unit="10^9/L")

# MIMIC-CXR graph of the paper's code: older age raises effusion, high white-cell count raises pneumonia.
MIMIC_GRAPH = CausalGraph(
    name="mimic",
    nodes=(AGE, SEX, RACE, WCC, Node("disease", CATEGORICAL, parents=("age", "wcc"), categories=DISEASE_CLASSES)),
)

# ChestX-ray8 has no race or laboratory values: age, sex and disease (which depends on age).
CHESTXRAY8_GRAPH = CausalGraph(
    name="chestxray8",
    nodes=(
        Node("age", CONTINUOUS, low=0.0, high=100.0, unit="years"),
        SEX,
        Node("disease", CATEGORICAL, parents=("age",), categories=DISEASE_CLASSES),
    ),
)

GRAPHS = {g.name: g for g in (MIMIC_GRAPH, CHESTXRAY8_GRAPH)}
