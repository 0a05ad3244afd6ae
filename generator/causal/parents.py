"""Pyro model of the patient variables, built from a declared causal graph.

Every node is a mechanism x_k = f_k(pa_k, u_k) with its own exogenous noise u_k:

- continuous nodes: a (conditional) rational-quadratic spline flow applied to standard-normal noise; abduction runs
  the flow backwards, so the noise is recovered exactly;
- binary and categorical nodes: Gumbel-max, x_k = argmax(logits_k(pa_k) + g_k) with g_k ~ Gumbel(0, 1). Abduction
  draws g_k from its exact posterior given the observed class (Maddison et al. 2014, "top-down" truncated Gumbels),
  so intervening on nothing gives back the observed class and intervening on a parent changes the class only as far
  as the new logits outrun the same noise.

Values use the data set's units: continuous floats in raw units, binary floats 0/1, categorical int64 indices.
"""

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

from generator.data.graph import BINARY, CONTINUOUS


def sample_gumbel(shape, generator=None, device=None):
    uniform = torch.rand(shape, generator=generator, device=device).clamp(1e-12, 1 - 1e-7)
    return -torch.log(-torch.log(uniform))


def truncated_gumbel(location, upper, generator=None):
    """Gumbel(location, 1) samples conditioned on being below `upper` (exact inverse-CDF construction)."""
    g = location + sample_gumbel(location.shape, generator, location.device)
    return -torch.log(torch.exp(-upper) + torch.exp(-g))


def abduct_gumbel(logits, observed, generator=None):
    """Exact posterior sample of the Gumbel noise g given that argmax(logits + g) == observed.

    The maximum of logits + g is Gumbel(logsumexp(logits)) and independent of which class attains it; the other
    perturbed logits are Gumbels truncated below that maximum.
    """
    top = torch.logsumexp(logits, dim=-1, keepdim=True) + sample_gumbel(
        logits.shape[:-1] + (1,), generator, logits.device
    )
    others = truncated_gumbel(logits, top, generator)
    is_observed = nn.functional.one_hot(observed.long(), logits.shape[-1]).bool()
    perturbed = torch.where(is_observed, top.expand_as(logits), others)
    return perturbed - logits


def encode_parents(graph, pa, names):
    """Features of the given nodes for a network input: continuous scaled to [-1, 1], discrete one-hot."""
    columns = []
    for name in names:
        node = graph[name]
        value = pa[name]
        if node.kind == CONTINUOUS:
            columns.append((2 * (value.float() - node.low) / (node.high - node.low) - 1).unsqueeze(-1))
        else:
            columns.append(nn.functional.one_hot(value.long(), node.cardinality).float())
    return torch.cat(columns, dim=-1)


def encoded_width(graph, names):
    return sum(1 if graph[n].kind == CONTINUOUS else graph[n].cardinality for n in names)


class ContinuousMechanism(nn.Module):
    """Spline flow on a standardised value, conditioned on the parents when there are any."""

    def __init__(self, graph, node, count_bins=8, hidden=16):
        super().__init__()
        self.graph = graph
        self.node = node
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))
        if node.parents:
            context = encoded_width(graph, node.parents)
            self.flow = T.conditional_spline(1, context, hidden_dims=[hidden, hidden], count_bins=count_bins, bound=4.0)
        else:
            self.flow = T.Spline(1, count_bins=count_bins, bound=4.0)

    def transform(self, pa):
        if self.node.parents:
            return self.flow.condition(encode_parents(self.graph, pa, self.node.parents))
        return self.flow

    def distribution(self, pa, n):
        base = dist.Normal(torch.zeros(n, 1, device=self.mean.device), 1.0).to_event(1)
        return dist.TransformedDistribution(base, [self.transform(pa)])

    def standardise(self, value):
        return ((value.float() - self.mean) / self.std).unsqueeze(-1)

    def log_prob(self, value, pa):
        # change of variables for the standardisation keeps the likelihood in raw units
        return self.distribution(pa, value.shape[0]).log_prob(self.standardise(value)) - torch.log(self.std)

    def abduct(self, value, pa, generator=None):
        return self.transform(pa).inv(self.standardise(value)).squeeze(-1)

    def mechanism(self, noise, pa):
        return self.transform(pa)(noise.unsqueeze(-1)).squeeze(-1) * self.std + self.mean


class DiscreteMechanism(nn.Module):
    """Gumbel-max over logits that depend on the parents (a learned constant for root nodes)."""

    def __init__(self, graph, node, hidden=16):
        super().__init__()
        self.graph = graph
        self.node = node
        k = node.cardinality
        if node.parents:
            context = encoded_width(graph, node.parents)
            self.net = nn.Sequential(nn.Linear(context, hidden), nn.GELU(), nn.Linear(hidden, k))
        else:
            self.root_logits = nn.Parameter(torch.zeros(k))

    def logits(self, pa, n):
        if self.node.parents:
            return self.net(encode_parents(self.graph, pa, self.node.parents))
        return self.root_logits.expand(n, -1)

    def log_prob(self, value, pa):
        return dist.Categorical(logits=self.logits(pa, value.shape[0])).log_prob(value.long())

    def abduct(self, value, pa, generator=None):
        return abduct_gumbel(self.logits(pa, value.shape[0]).detach(), value.long(), generator)

    def mechanism(self, noise, pa):
        index = torch.argmax(self.logits(pa, noise.shape[0]) + noise, dim=-1)
        return index.float() if self.node.kind == BINARY else index


class ParentModel(nn.Module):
    """The structural causal model of the parents: fit, sample, abduct, intervene."""

    def __init__(self, graph):
        super().__init__()
        self.graph = graph
        self.mechanisms = nn.ModuleDict(
            {
                node.name: ContinuousMechanism(graph, node)
                if node.kind == CONTINUOUS
                else DiscreteMechanism(graph, node)
                for node in graph.nodes
            }
        )

    def fit_standardisation(self, pa):
        """Centre and scale continuous nodes on the training data (before maximum-likelihood training)."""
        for node in self.graph.nodes:
            if node.kind == CONTINUOUS:
                values = pa[node.name].float()
                mechanism = self.mechanisms[node.name]
                mechanism.mean.fill_(values.mean().item())
                mechanism.std.fill_(max(values.std().item(), 1e-3))

    def log_prob(self, pa):
        """Per-sample joint log-likelihood of all nodes, shape [N]."""
        return sum(self.mechanisms[n].log_prob(pa[n], pa) for n in self.graph.names)

    def nll(self, pa):
        return -self.log_prob(pa).mean()

    def model(self, n=1):
        """The Pyro program: one sample site per node, in topological order."""
        pa = {}
        for node in self.graph.nodes:
            mechanism = self.mechanisms[node.name]
            if node.kind == CONTINUOUS:
                standard = pyro.sample(node.name, mechanism.distribution(pa, n))
                pa[node.name] = standard.squeeze(-1) * mechanism.std + mechanism.mean
            else:
                index = pyro.sample(node.name, dist.Categorical(logits=mechanism.logits(pa, n)))
                pa[node.name] = index.float() if node.kind == BINARY else index
        return pa

    @torch.no_grad()
    def sample(self, n, generator=None):
        noise = {}
        device = next(self.parameters()).device
        for node in self.graph.nodes:
            if node.kind == CONTINUOUS:
                noise[node.name] = torch.randn(n, generator=generator, device=device)
            else:
                noise[node.name] = sample_gumbel((n, node.cardinality), generator, device)
        return self.intervene(noise, {})

    @torch.no_grad()
    def abduct(self, pa, generator=None, nodes=None):
        """Exogenous noise of every node (or of `nodes`) given observed values (exact for flows and Gumbel-max)."""
        names = self.graph.names if nodes is None else [n for n in self.graph.names if n in set(nodes)]
        return {n: self.mechanisms[n].abduct(pa[n], pa, generator) for n in names}

    def dependent_nodes(self):
        """Nodes with parents: the only ones an intervention can change without setting them, so the only ones whose
        noise a counterfactual needs."""
        return [node.name for node in self.graph.nodes if node.parents]

    @torch.no_grad()
    def intervene(self, noise, do, observed=None):
        """Counterfactual values: intervened nodes are set, their descendants recomputed from their (new) parents.

        With `observed` (the factual values), every node that no intervention reaches keeps its observed value
        exactly, and needs no noise: do(disease) then costs nothing for age or white-cell count, and returns them
        bit for bit. Without it, every node is recomputed from `noise` (sampling from the model)."""
        n = len(next(iter(observed.values() if observed is not None else noise.values())))
        device = next(self.parameters()).device
        out, changed = {}, set()
        for node in self.graph.nodes:
            if node.name in do:
                out[node.name] = as_batch(do[node.name], n, node, device)
                changed.add(node.name)
            elif observed is not None and not changed.intersection(node.parents):
                out[node.name] = observed[node.name]
            else:
                out[node.name] = self.mechanisms[node.name].mechanism(noise[node.name], out)
                changed.add(node.name)
        return out

    def counterfactual(self, pa, do, generator=None):
        return self.intervene(self.abduct(pa, generator, self.dependent_nodes()), do, observed=pa)


def as_batch(value, n, node, device):
    """An intervention value (scalar, category name or tensor) as a batch in the data set's dtype."""
    if isinstance(value, str):
        value = node.categories.index(value)
    value = torch.as_tensor(value, device=device)
    if value.dim() == 0:
        value = value.expand(n)
    if node.kind == CONTINUOUS or node.kind == BINARY:
        return value.float().clone()
    return value.long().clone()
