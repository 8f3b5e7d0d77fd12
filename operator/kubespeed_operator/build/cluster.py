"""What the builders know of the cluster besides the job: where the operator runs, who else may
scrape the trainers' metrics, and the RuntimeClass GPU pods get when their job names none.

The operator takes these from its flags (which the chart sets from its values);
`kubespeed render` takes the same flags with the same defaults, so it still prints
exactly what the operator creates.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from kubespeed import wiring

DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
LABEL_KEY = r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
LABEL_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"


@dataclass(frozen=True)
class Scraper:
    """Pods that may read the trainers' metrics port: those with `pod_labels` in `namespace` (e.g. Prometheus)."""

    namespace: str
    pod_labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Scraper:
        """`NAMESPACE:KEY=VALUE,...` (the labels may be left out: every pod of the namespace)."""
        namespace, _, selector = text.partition(":")
        if not re.fullmatch(DNS_LABEL, namespace):
            raise ValueError(f"{text!r}: {namespace!r} is not a namespace name; write NAMESPACE:KEY=VALUE,...")
        labels = []
        for pair in filter(None, selector.split(",")):
            key, equals, value = pair.partition("=")
            if not equals or not re.fullmatch(LABEL_KEY, key) or not re.fullmatch(LABEL_VALUE, value):
                raise ValueError(f"{text!r}: {pair!r} is not a label KEY=VALUE")
            labels.append((key, value))
        return cls(namespace, tuple(labels))


@dataclass(frozen=True)
class Cluster:
    operator_namespace: str = wiring.OPERATOR_NAMESPACE
    metrics_scrapers: tuple[Scraper, ...] = ()
    # For jobs with gpu true that name no spec.runtimeClassName: on CPU-only nodes a GPU runtime may not exist.
    gpu_runtime_class: str | None = None


def namespace_selector(namespace: str) -> dict[str, dict[str, str]]:
    """Selects one namespace by the label the API server sets on every namespace (and nobody can change)."""
    return {"matchLabels": {wiring.NAMESPACE_NAME_LABEL: namespace}}


def _scraper_flag(text: str) -> Scraper:
    try:
        return Scraper.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def add_flags(parser: argparse.ArgumentParser, operator_namespace: str = wiring.OPERATOR_NAMESPACE) -> None:
    """The flags `kubespeed operator` and `kubespeed render` share (`from_flags` reads them)."""
    parser.add_argument("--operator-namespace", default=operator_namespace,
                        help=f"namespace of the operator's pods, whose scrapes a job's NetworkPolicy admits (default: {operator_namespace})")
    parser.add_argument("--metrics-scraper", dest="metrics_scrapers", action="append", default=[], type=_scraper_flag,
                        metavar="NAMESPACE:KEY=VALUE,...", help="pods that may also scrape the trainers' metrics, e.g. monitoring:app.kubernetes.io/name=prometheus (repeatable)")
    parser.add_argument("--gpu-runtime-class", default=None, metavar="NAME",
                        help="RuntimeClass of GPU jobs' pods when the job names none, e.g. nvidia")


def from_flags(args: argparse.Namespace) -> Cluster:
    return Cluster(args.operator_namespace, tuple(args.metrics_scrapers), args.gpu_runtime_class)
