"""An intervention do(parent := value, ...) on the parents of an image, checked against the causal graph.

`Intervention` is a read-only mapping from parent name to value, so it is passed as the `do` of
`ParentModel.intervene` and `CounterfactualModel.counterfactual` as it is. It is built from the spellings a person
uses, "disease=healthy,age=70" or {"disease": "healthy"}, and refuses names and values the graph does not know.
"""

import re
from collections.abc import Mapping


class Intervention(Mapping):
    """do(parent := value, ...): continuous parents take numbers, binary and categorical ones a category name."""

    def __init__(self, values):
        self._values = dict(values)
        if not self._values:
            raise ValueError("an intervention needs at least one parent=value")

    @classmethod
    def parse(cls, graph, spec):
        """`disease=healthy,age=70`, a {parent: value} mapping or an Intervention -> an Intervention on `graph`."""
        if isinstance(spec, str):
            pairs = [part.partition("=") for part in spec.split(",") if part.strip()]
            if not pairs or any(not sep or not value.strip() for _, sep, value in pairs):
                raise ValueError(f"intervention {spec!r}: expected parent=value[,parent=value]")
            spec = {name.strip(): value.strip() for name, _, value in pairs}
        return cls({name: _checked_value(graph, name, value) for name, value in dict(spec).items()})

    def __getitem__(self, name):
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def __repr__(self):
        return f"Intervention({self._values!r})"

    def label(self):
        """A file-name-safe description, e.g. `disease-healthy_age-70.0`."""
        action = "_".join(f"{name}-{value}" for name, value in self._values.items())
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", action)


def _checked_value(graph, name, value):
    if name not in graph:
        raise ValueError(f"intervention on {name!r}: the graph has only {', '.join(graph.names)}")
    node = graph[name]
    if node.kind == "continuous":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"intervention {name}={value!r}: expected a number ({node.unit})") from None
    if str(value) in node.categories:
        return str(value)
    raise ValueError(f"intervention {name}={value!r}: choose one of {', '.join(node.categories)}")
