"""A small model of where Kubernetes places a Deployment's pods: enough to check a placement rule.

`explore` follows every order in which the Deployment controller may add and remove pods during a
rollout or scale-up, and every node the scheduler may pick for each pod, and returns the states in
which nothing more can happen. The filters follow Kubernetes 1.34 (pkg/scheduler/framework/plugins):

- TaintToleration: a node with a NoSchedule or NoExecute taint the pod does not tolerate is out;
- InterPodAffinity: required anti-affinity terms (labelSelector + matchLabelKeys, whose values come
  from the incoming pod's labels) of the incoming pod and of every pod already on the node;
- PodTopologySpread, DoNotSchedule: matching pods in the node's domain + 1 - the global minimum must
  not exceed maxSkew; the minimum is taken over eligible domains (nodeTaintsPolicy Ignore, the
  default, keeps tainted nodes; Honor drops those with untolerated taints) and is 0 when fewer than
  minDomains are eligible (podtopologyspread/filtering.go, common.go).

Pods are Ready as soon as they are placed and gone as soon as they are deleted (the spread filter
skips terminating pods). Resources are not modelled: the test workloads fit any node. A template
field that could change placement and is not modelled raises, so no rule passes unexamined.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HOSTNAME = "kubernetes.io/hostname"
REVISION = "pod-template-hash"
PLACEMENT_EFFECTS = ("NoSchedule", "NoExecute")
CONTROL_PLANE_TAINT = ("node-role.kubernetes.io/control-plane", "NoSchedule")  # kubeadm's default
NOT_READY_TAINT = ("node.kubernetes.io/not-ready", "NoSchedule")  # a node whose kubelet is not Ready yet
# Pod spec fields that do not take part in placement; any other field must be modelled first.
INERT_POD_FIELDS = {"containers", "volumes"}
# A toleration the model understands: (key, effect), operator Exists.
Toleration = tuple[str, str]

Labels = Mapping[str, str]
# A pod: (revision, node); node "" while it is pending.
Pod = tuple[str, str]
State = tuple[Pod, ...]


@dataclass(frozen=True)
class Node:
    name: str
    taints: tuple[tuple[str, str], ...] = ()

    def repels(self, tolerations: tuple[Toleration, ...] = ()) -> bool:
        """True when a pod with these tolerations may not be placed here."""
        return any(effect in PLACEMENT_EFFECTS and (key, effect) not in tolerations for key, effect in self.taints)


@dataclass(frozen=True)
class Selector:
    match_labels: tuple[tuple[str, str], ...]
    match_label_keys: tuple[str, ...]

    def selects(self, owner: Labels, other: Labels) -> bool:
        """Whether the term of a pod labelled `owner` selects a pod labelled `other`."""
        wanted = dict(self.match_labels) | {key: owner[key] for key in self.match_label_keys if key in owner}
        return all(other.get(key) == value for key, value in wanted.items())


@dataclass(frozen=True)
class Spread:
    max_skew: int
    selector: Selector
    honor_taints: bool
    min_domains: int


@dataclass(frozen=True)
class Rules:
    """The placement rules of one pod template; every revision of the Deployment shares them."""

    labels: tuple[tuple[str, str], ...]
    anti_affinity: tuple[Selector, ...]
    spread: tuple[Spread, ...]
    tolerations: tuple[Toleration, ...] = ()

    def pod_labels(self, revision: str) -> dict[str, str]:
        return dict(self.labels) | {REVISION: revision}


@dataclass(frozen=True)
class Strategy:
    max_surge: int
    max_unavailable: int


def _only(mapping: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = set(mapping) - known
    if unknown:
        raise ValueError(f"{where}: the placement model does not know {sorted(unknown)}")


def _selector(term: Mapping[str, Any], where: str) -> Selector:
    selector = term.get("labelSelector") or {}
    _only(selector, {"matchLabels"}, f"{where}.labelSelector")
    if term.get("topologyKey") != HOSTNAME:
        raise ValueError(f"{where}: the placement model knows only topologyKey {HOSTNAME}")
    return Selector(tuple(sorted(selector.get("matchLabels", {}).items())), tuple(term.get("matchLabelKeys", ())))


def _anti_affinity(affinity: Mapping[str, Any]) -> tuple[Selector, ...]:
    _only(affinity, {"podAntiAffinity"}, "affinity")
    anti = affinity.get("podAntiAffinity", {})
    # Preferred terms only score nodes; they never keep a pod off one.
    _only(
        anti,
        {"requiredDuringSchedulingIgnoredDuringExecution", "preferredDuringSchedulingIgnoredDuringExecution"},
        "podAntiAffinity",
    )
    terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    for term in terms:
        _only(term, {"labelSelector", "matchLabelKeys", "topologyKey"}, "podAntiAffinity term")
    return tuple(_selector(term, "podAntiAffinity term") for term in terms)


def _spread(constraints: Sequence[Mapping[str, Any]]) -> tuple[Spread, ...]:
    known = {"maxSkew", "topologyKey", "whenUnsatisfiable", "labelSelector", "matchLabelKeys"}
    known |= {"nodeTaintsPolicy", "nodeAffinityPolicy", "minDomains"}
    rules = []
    for constraint in constraints:
        _only(constraint, known, "topologySpreadConstraint")
        if constraint.get("whenUnsatisfiable", "DoNotSchedule") != "DoNotSchedule":
            continue  # ScheduleAnyway only scores nodes
        rules.append(
            Spread(
                max_skew=int(constraint["maxSkew"]),
                selector=_selector(constraint, "topologySpreadConstraint"),
                honor_taints=constraint.get("nodeTaintsPolicy", "Ignore") == "Honor",
                min_domains=int(constraint.get("minDomains", 1)),
            )
        )
    return tuple(rules)


def _tolerations(tolerations: Sequence[Mapping[str, Any]]) -> tuple[Toleration, ...]:
    known = []
    for toleration in tolerations:
        _only(toleration, {"key", "operator", "effect"}, "toleration")
        if toleration.get("operator") != "Exists" or "key" not in toleration or "effect" not in toleration:
            raise ValueError("the placement model knows only tolerations with a key, an effect and operator Exists")
        known.append((str(toleration["key"]), str(toleration["effect"])))
    return tuple(known)


def rules_of(template: Mapping[str, Any]) -> Rules:
    """The placement rules of a Deployment's `spec.template`."""
    spec = template["spec"]
    _only(spec, INERT_POD_FIELDS | {"affinity", "topologySpreadConstraints", "tolerations"}, "pod spec")
    return Rules(
        labels=tuple(sorted(template["metadata"]["labels"].items())),
        anti_affinity=_anti_affinity(spec.get("affinity", {})),
        spread=_spread(spec.get("topologySpreadConstraints", [])),
        tolerations=_tolerations(spec.get("tolerations", [])),
    )


def _resolve(value: int | str, replicas: int, round_up: bool) -> int:
    if isinstance(value, int):
        return value
    share = replicas * int(value.rstrip("%")) / 100
    return math.ceil(share) if round_up else math.floor(share)


def strategy_of(deployment_spec: Mapping[str, Any]) -> Strategy:
    """spec.strategy as the Deployment controller resolves it (defaults 25 %/25 %, surge rounded up)."""
    strategy = deployment_spec.get("strategy", {})
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        raise ValueError("the placement model knows only the RollingUpdate strategy")
    rolling = strategy.get("rollingUpdate", {})
    replicas = int(deployment_spec["replicas"])
    surge = _resolve(rolling.get("maxSurge", "25%"), replicas, round_up=True)
    unavailable = _resolve(rolling.get("maxUnavailable", "25%"), replicas, round_up=False)
    return Strategy(surge, unavailable if surge or unavailable else 1)


def placeable(rules: Rules, revision: str, node: Node, nodes: Sequence[Node], state: State) -> bool:
    """Whether the scheduler may bind a pod of `revision` to `node` while `state` holds."""
    if node.repels(rules.tolerations):
        return False
    incoming = rules.pod_labels(revision)
    neighbours = [rules.pod_labels(rev) for rev, at in state if at == node.name]
    for term in rules.anti_affinity:
        if any(term.selects(incoming, other) for other in neighbours):
            return False
        if any(term.selects(other, incoming) for other in neighbours):
            return False
    return all(_within_skew(spread, incoming, node, nodes, rules, state) for spread in rules.spread)


def _within_skew(
    spread: Spread, incoming: Labels, node: Node, nodes: Sequence[Node], rules: Rules, state: State
) -> bool:
    eligible = [n.name for n in nodes if not (spread.honor_taints and n.repels(rules.tolerations))]
    counts = {
        name: sum(1 for rev, at in state if at == name and spread.selector.selects(incoming, rules.pod_labels(rev)))
        for name in eligible
    }
    minimum = min(counts.values()) if len(counts) >= spread.min_domains else 0
    itself = 1 if spread.selector.selects(incoming, incoming) else 0
    return counts.get(node.name, 0) + itself - minimum <= spread.max_skew


def _moves(
    rules: Rules, nodes: Sequence[Node], replicas: int, strategy: Strategy, new: str, state: State
) -> Iterator[State]:
    pods = list(state)
    ours = [pod for pod in pods if pod[0] == new]
    if len(ours) < replicas and len(pods) < replicas + strategy.max_surge:
        yield _sorted([*pods, (new, "")])
    for pending in {pod for pod in pods if not pod[1]}:
        rest = list(pods)
        rest.remove(pending)
        for node in nodes:
            if placeable(rules, pending[0], node, nodes, tuple(rest)):
                yield _sorted([*rest, (pending[0], node.name)])
    placed = sum(1 for _, at in pods if at)
    if placed - 1 >= replicas - strategy.max_unavailable:
        for old in {pod for pod in pods if pod[0] != new}:
            rest = list(pods)
            rest.remove(old)
            yield _sorted(rest)


def _sorted(pods: list[Pod]) -> State:
    return tuple(sorted(pods))


def explore(
    rules: Rules, nodes: Sequence[Node], replicas: int, strategy: Strategy, start: State, new: str = "new"
) -> set[State]:
    """Every state a rollout to revision `new` can end in, over all controller and scheduler choices."""
    ends: set[State] = set()
    seen: set[State] = set()
    todo = [_sorted(list(start))]
    while todo:
        state = todo.pop()
        if state in seen:
            continue
        seen.add(state)
        following = list(_moves(rules, nodes, replicas, strategy, new, state))
        if not following:
            ends.add(state)
        todo.extend(following)
    return ends


def per_node(state: State, revision: str = "new") -> Counter[str]:
    return Counter(at for rev, at in state if rev == revision and at)


def finished(state: State, replicas: int, revision: str = "new") -> bool:
    return all(rev == revision and at for rev, at in state) and len(state) == replicas
