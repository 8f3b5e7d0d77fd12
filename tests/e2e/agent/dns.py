"""Pod DNS as files: the /etc/hosts, /etc/resolv.conf and /etc/hostname each pod sees.

Cluster DNS gives a pod `<hostname>.<subdomain>.<namespace>.svc.cluster.local` when a
headless Service named `<subdomain>` selects it; the agent writes those names (and the
shorter `<hostname>.<subdomain>` and `...svc` forms a search path would complete) for
every such pod it runs into each member's /etc/hosts, and rewrites the files in place as
peers come and go (in place, so the bind mount in the pod keeps showing the new text).
A pod is listed once it runs (the agent's pods are Ready when they run), or as soon as it
has an address if the Service sets publishNotReadyAddresses, as the endpoints controller does.
The resolv.conf names no server: any other name fails at once instead of timing out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class Member:
    namespace: str
    hostname: str
    subdomain: str
    labels: dict[str, str]
    ip: str
    ready: bool


def pod_hostname(pod: dict[str, Any]) -> str:
    return (pod["spec"].get("hostname") or pod["metadata"]["name"])[:63]


def selects(service: dict[str, Any], member: Member) -> bool:
    selector = service.get("spec", {}).get("selector") or {}
    return bool(selector) and all(member.labels.get(k) == v for k, v in selector.items())


def published(member: Member, services: dict[tuple[str, str], dict[str, Any]]) -> bool:
    service = services.get((member.namespace, member.subdomain))
    if service is None or not member.subdomain or not selects(service, member):
        return False
    return member.ready or bool(service["spec"].get("publishNotReadyAddresses"))


def names(member: Member) -> list[str]:
    short = f"{member.hostname}.{member.subdomain}"
    svc = f"{short}.{member.namespace}.svc"
    return [f"{svc}.{CLUSTER_DOMAIN}", svc, short]


def hosts_file(me: Member, members: list[Member], services: dict[tuple[str, str], dict[str, Any]]) -> str:
    lines = [
        "# Kubernetes-managed hosts file (kubespeed test node agent).",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
    ]
    own = names(me) if me.subdomain else []
    lines.append("\t".join([me.ip, *own, me.hostname]))
    # `members` runs oldest first; a pod that replaces one of the same name (a gang
    # restart) hides the terminating one, so a name never resolves to a stale address.
    latest = {peer.hostname: peer for peer in members
              if peer.namespace == me.namespace and peer.subdomain == me.subdomain and published(peer, services)}
    for peer in latest.values():
        if peer.hostname != me.hostname:
            lines.append("\t".join([peer.ip, *names(peer)]))
    return "\n".join(lines) + "\n"


def resolv_conf(namespace: str) -> str:
    return f"search {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\noptions ndots:5\n"
