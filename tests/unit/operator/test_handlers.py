"""What the kopf registration promises the rest of the operator."""

from __future__ import annotations

import kopf

import kubespeed_operator.run.handlers  # noqa: F401  (registers the handlers)
from kubespeed_operator.run.settings import NoDiffBase, configure


def test_no_handler_reads_kopfs_diff_base() -> None:
    # settings.NoDiffBase skips building the diff base; only change and daemon
    # handlers (on.create/update/resume/field, daemons, timers) would read it.
    registry = kopf.get_default_registry()
    assert not registry._changing.get_all_handlers()
    assert not registry._spawning.get_all_handlers()
    assert registry._watching.get_all_handlers()


def test_the_settings_never_build_a_diff_base() -> None:
    settings = kopf.OperatorSettings()
    configure(settings)
    storage = settings.persistence.diffbase_storage
    assert isinstance(storage, NoDiffBase)
    body = kopf.Body({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}})
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None
