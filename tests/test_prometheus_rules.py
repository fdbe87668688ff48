"""The shipped Prometheus alerting rules are valid, fire when they should (promtool's own rule unit tests) and name
only metrics the service exports (issue 38, item 4)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from latentdefence.serving.alarm import AlarmConfig, FlagRateCUSUM, null_rate
from latentdefence.serving.metrics import ServiceMetrics

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "latentdefence-alerts.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yml"
promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                              reason="promtool is not installed (Debian's prometheus package; "
                                     "LATENTDEFENCE_SYSTEM_DEPS=1 make setup installs it, as CI does)")


def _promtool(*args: str) -> str:
    done = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@promtool
def test_the_rules_file_is_valid() -> None:
    assert "SUCCESS: 3 rules found" in _promtool("check", "rules", str(RULES))


@promtool
def test_each_alert_fires_on_an_attack_and_stays_quiet_on_clean_or_thin_traffic() -> None:
    assert "SUCCESS" in _promtool("test", "rules", str(RULE_TESTS))


def test_the_rules_name_only_metrics_the_service_exports() -> None:
    alarm = FlagRateCUSUM.from_config(AlarmConfig(), null_rate(0.02, 1000))
    exported = set(re.findall(r"^# TYPE (\S+) ", generate_latest(ServiceMetrics(10, 0.02, alarm).registry).decode(),
                              re.MULTILINE))
    named = set(re.findall(r"\blatentdefence_[a-z_]+", RULES.read_text())) - {"latentdefence_alerts"}
    assert named and named <= exported, named - exported
