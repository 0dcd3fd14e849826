"""Whether NetworkPolicies let one endpoint reach another on a port, as the Kubernetes API defines it.

A connection is allowed when the destination's ingress side and the source's egress side both
allow it. A side is open while no policy of its namespace selects the pod for that direction;
once one does, only what one of those policies' rules admits gets through.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Object = dict[str, Any]


@dataclass(frozen=True)
class Endpoint:
    """A pod (labels, its namespace's labels, its named ports) or an address outside any pod."""

    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)
    ip: str | None = None

    @property
    def is_pod(self) -> bool:
        return self.ip is None


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions) against a set of labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(peer: Mapping[str, Any], policy_namespace: str, endpoint: Endpoint) -> bool:
    if "ipBlock" in peer:
        if endpoint.ip is None:
            return False
        address = ipaddress.ip_address(endpoint.ip)
        block = peer["ipBlock"]
        network = ipaddress.ip_network(block["cidr"])
        if address.version != network.version or address not in network:
            return False
        return not any(
            address in ipaddress.ip_network(excepted)
            for excepted in block.get("except", [])
            if ipaddress.ip_network(excepted).version == address.version
        )
    if not endpoint.is_pod:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], endpoint.namespace_labels):
            return False
    elif endpoint.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector", {}), endpoint.labels)


def _port_matches(rule_ports: Iterable[Mapping[str, Any]] | None, target: Endpoint, port: int) -> bool:
    """`port` on `target`; a named port in a rule means the target pod's container port of that name."""
    entries = list(rule_ports or [])
    if not entries:
        return True
    for entry in entries:
        if entry.get("protocol", "TCP") != "TCP":
            continue
        wanted = entry.get("port")
        if wanted is None:
            return True
        if isinstance(wanted, str):
            if target.ports.get(wanted) == port:
                return True
        elif wanted <= port <= entry.get("endPort", wanted):
            return True
    return False


def _side_allows(
    policies: Iterable[Object],
    pod: Endpoint,
    other: Endpoint,
    port: int,
    direction: str,
    port_owner: Endpoint,
) -> bool:
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    isolating = [
        policy
        for policy in policies
        if policy["metadata"].get("namespace") == pod.namespace
        and direction in policy["spec"].get("policyTypes", ["Ingress"])
        and selects(policy["spec"].get("podSelector", {}), pod.labels)
    ]
    if not isolating:
        return True
    for policy in isolating:
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(
                _peer_matches(peer, policy["metadata"]["namespace"], other) for peer in peers
            )
            if peer_ok and _port_matches(rule.get("ports"), port_owner, port):
                return True
    return False


def allowed(policies: Iterable[Object], source: Endpoint, destination: Endpoint, port: int) -> bool:
    """Whether a TCP connection from `source` to `destination:port` gets through both sides."""
    policies = list(policies)
    ingress_ok = not destination.is_pod or _side_allows(
        policies, destination, source, port, "Ingress", destination
    )
    egress_ok = not source.is_pod or _side_allows(policies, source, destination, port, "Egress", destination)
    return ingress_ok and egress_ok
