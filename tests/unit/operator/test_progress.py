"""Reading rank 0's Prometheus text into status.progress, without the trainer."""

from __future__ import annotations

import pytest

from kubespeed_operator.decide.progress import TrainerReading, format_eta, parse
from kubespeed_operator.run.scrape import metrics_url

TEXT = """# HELP kubespeed_step Optimizer steps done.
# TYPE kubespeed_step gauge
kubespeed_step 42.0
kubespeed_total_steps 1000.0
kubespeed_loss{split="train"} 3.25
kubespeed_loss{split="eval"} 9.0
kubespeed_tokens_per_second 1.5e+04
kubespeed_eta_seconds NaN
kubespeed_checkpoint_step -1
kubespeed_lr 0.0003
"""


def test_the_text_format_becomes_progress_first_sample_wins_nan_is_unknown():
    assert parse(TEXT) == TrainerReading(step=42, total_steps=1000, loss=3.25, tokens_per_second=15000.0, eta_seconds=None, checkpoint_step=-1)


def test_an_empty_or_foreign_endpoint_gives_no_numbers():
    assert parse("") == TrainerReading()
    assert parse("<html>not metrics</html>\n") == TrainerReading()


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (42.4, "42s"), (185, "3m05s"), (3725, "1h02m"), (-5, "0s")])
def test_eta_reads_like_kubectl(seconds, text):
    assert format_eta(seconds) == text


@pytest.mark.parametrize("ip, url", [("10.0.0.7", "http://10.0.0.7:9400/metrics"), ("fd00::7", "http://[fd00::7]:9400/metrics")])
def test_metrics_url_on_the_wired_port(ip, url):
    assert metrics_url(ip) == url
