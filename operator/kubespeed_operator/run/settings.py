"""kopf's settings for the kubespeed operator, set once at startup; each non-default says why."""

from __future__ import annotations

import kopf

from kubespeed import wiring


class NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base, never built, since only change and daemon handlers read it and the operator has none.

    kopf would deep-copy every watched job on every event to build it.
    tests/unit/operator/test_handlers.py fails if such a handler appears.
    """

    def build(self, *, body: kopf.Body, extra_fields: object = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None


def configure(settings: kopf.OperatorSettings) -> None:
    # Leader election is a Lease (leader.py), taken before kopf starts; kopf's own
    # peering would need its KopfPeering CRDs and RBAC on them.
    settings.peering.standalone = True
    # The CRD is installed by the chart/manifests, and the namespaces are given on the
    # command line: no need to watch CRDs or namespaces cluster-wide (less RBAC).
    settings.scanning.disabled = True
    # kopf would turn every handler log line into a Kubernetes Event; the operator
    # posts its own Events, one per lifecycle transition.
    settings.posting.enabled = False
    # The operator registers no change-detecting handlers, so kopf stores nothing;
    # should it ever, keep it in annotations: the CRD's status schema prunes
    # `status.kopf`, and kopf would loop re-writing it.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=wiring.API_GROUP)
    settings.persistence.diffbase_storage = NoDiffBase(prefix=wiring.API_GROUP)
    # Restart every watch now and then and give up on a silent connection: after an
    # API server restart the watches come back within a minute instead of hanging.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 10
    # A restarting API server is not hammered with reconnects (default 0.1 s).
    settings.watching.reconnect_backoff = 1.0
    # Keep retrying a watch through an API server restart or upgrade (about 4 minutes)
    # instead of giving up after kopf's default ~1 minute.
    settings.networking.error_backoffs = (1, 1, 2, 3, 5, 8, 13, 21, 30, 30, 30, 30, 30, 30)
    # API calls that hang (an overloaded server) fail in a minute, not five.
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
