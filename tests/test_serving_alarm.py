"""The flag-rate alarm: the CUSUM alone on seeded Bernoulli streams, then inside the service with the real
detector on clean traffic and on traffic with a few percent PGD examples."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from guard_artifact import artifact, blobs  # noqa: F401 (shared fixtures)

from latentdefence.attacks import PGD
from latentdefence.serving import GuardedClassifier, SQLiteAuditLog
from latentdefence.serving.alarm import AlarmConfig, FlagRateCUSUM, null_rate
from latentdefence.serving.app import ServeConfig, create_app


def _stream(p: float, n: int, seed: int) -> list[bool]:
    return (torch.rand(n, generator=torch.Generator().manual_seed(seed)) < p).tolist()


def test_clean_bernoulli_p0_stream_stays_quiet_over_many_steps() -> None:
    for seed in range(3):
        alarm = FlagRateCUSUM(0.02, 0.07, false_alarm_rate=1e-6)
        assert not any(alarm.update(chunk) for chunk in _chunks(_stream(0.02, 60_000, seed), 64))
        assert alarm.alarms == 0 and not alarm.in_alarm and alarm.statistic < alarm.threshold
        assert alarm.observed == 60_000 and abs(alarm.flagged / 60_000 - 0.02) < 0.003


def test_a_few_percent_extra_flags_raise_it_and_it_clears_when_they_stop() -> None:
    alarm = FlagRateCUSUM(0.02, 0.07, false_alarm_rate=1e-6)
    alarm.update(_stream(0.02, 5_000, 10))
    assert alarm.alarms == 0
    raised = [alarm.update([flag]) for flag in _stream(0.07, 3_000, 11)]
    delay = raised.index(True) + 1
    # expected delay ~ h / KL(p1 || p0) = 13.8 / 0.039 ~ 350 inputs
    kl = 0.07 * math.log(0.07 / 0.02) + 0.93 * math.log(0.93 / 0.98)
    assert 0.3 * alarm.threshold / kl < delay < 3 * alarm.threshold / kl
    assert raised.count(True) == alarm.alarms >= 1 and alarm.state()["flagged"] > 0
    alarm.update(_stream(0.0, 2_000, 12))
    assert not alarm.in_alarm and alarm.statistic == 0.0


def test_settings_are_checked_and_p0_comes_from_calibration() -> None:
    with pytest.raises(ValueError, match="0 < p0 < p1 < 1"):
        FlagRateCUSUM(0.1, 0.05)
    with pytest.raises(ValueError, match="false_alarm_rate"):
        FlagRateCUSUM(0.1, 0.2, false_alarm_rate=0.0)
    assert null_rate(0.0, 149) == 1 / 150 and null_rate(0.05, 149) == 0.05
    alarm = FlagRateCUSUM.from_config(AlarmConfig(shift=0.1, false_alarm_rate=1e-3), 0.02)
    assert (alarm.p0, alarm.p1, alarm.threshold) == (0.02, pytest.approx(0.12), pytest.approx(math.log(1e3)))
    assert FlagRateCUSUM.from_config(AlarmConfig(p0=0.3), 0.02).p0 == 0.3


def _chunks(items: list[bool], size: int) -> list[list[bool]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


# -- with the real detector, inside the service -------------------------------------------------------------

@pytest.fixture(scope="module")
def pgd(artifact: Path) -> torch.Tensor:
    """PGD (L-inf, eps 0.1) examples that fool F: what an attacker who got through would send."""
    guard = GuardedClassifier.load(artifact)
    x = blobs(240, 8)
    result = PGD(0.1, steps=20, generator=torch.Generator().manual_seed(0))(guard.classifier, x.images, x.labels)
    assert result.success.sum() >= 60
    return result.images[result.success]


def _serve(artifact: Path, db: Path, traffic: torch.Tensor) -> tuple[dict, dict]:  # type: ignore[type-arg]
    """Send `traffic` in requests of 32 images (.npy); the alarm's state in /v1/model and the /metrics text."""
    with TestClient(create_app(GuardedClassifier.load(artifact), ServeConfig(audit_db=db))) as client:
        for i in range(0, len(traffic), 32):
            buf = io.BytesIO()
            np.save(buf, traffic[i:i + 32].numpy())
            response = client.post("/v1/predict", content=buf.getvalue(), headers={"content-type": "application/x-npy"})
            assert response.status_code == 200
        return client.get("/v1/model").json()["alarm"], client.get("/metrics").text


def test_clean_traffic_is_quiet_and_a_few_percent_pgd_raise_the_alarm(artifact: Path, pgd: torch.Tensor,
                                                                      tmp_path: Path) -> None:
    clean = blobs(1200, 20).images
    state, text = _serve(artifact, tmp_path / "clean.sqlite", clean)
    assert state["observed"] == 1200 and state["alarms"] == 0 and not state["in_alarm"]
    assert "latentdefence_alarm_active 0.0" in text and SQLiteAuditLog(tmp_path / "clean.sqlite").alarms() == []

    mixed = clean.clone()
    where = torch.randperm(len(mixed), generator=torch.Generator().manual_seed(1))[:60]      # 5% PGD
    mixed[where] = pgd[:60]
    state, text = _serve(artifact, tmp_path / "mixed.sqlite", mixed)
    assert state["alarms"] >= 1 and state["flagged"] >= 60
    assert f"latentdefence_alarm_raised {float(state['alarms'])}" in text
    alarms = SQLiteAuditLog(tmp_path / "mixed.sqlite").alarms()
    assert len(alarms) == state["alarms"] and alarms[0]["statistic"] >= alarms[0]["threshold"]
    assert alarms[0]["p0"] == state["p0"] == pytest.approx(null_rate(0.0, 150))


def test_request_metrics_have_a_closed_label_set_and_count_disconnects_apart() -> None:
    """Issue 38: made-up HTTP methods grew /metrics without bound (5,000 of them: 21 KB -> 962 KB), and clients that
    hung up were counted as server errors (500)."""
    import asyncio

    from starlette.requests import ClientDisconnect

    from latentdefence.serving.metrics import ServiceMetrics

    metrics = ServiceMetrics(k=10, calibrated_fpr=0.02, alarm=FlagRateCUSUM(0.02, 0.07))

    async def answers(scope, receive, send) -> None:   # noqa: ANN001 - ASGI
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def hangs_up(scope, receive, send) -> None:  # noqa: ANN001 - ASGI
        raise ClientDisconnect()

    async def sink(message: object) -> None:
        return None

    def call(app, method: str) -> None:  # noqa: ANN001
        scope = {"type": "http", "method": method, "path": "/nowhere"}
        asyncio.run(metrics.middleware(app)(scope, None, sink))

    for i in range(50):
        call(answers, f"MADEUP{i}")
    call(answers, "GET")
    with pytest.raises(ClientDisconnect):
        call(hangs_up, "POST")
    samples = {tuple(sorted(s.labels.items())): s.value for m in metrics.registry.collect()
               if m.name == "latentdefence_requests" for s in m.samples if s.name.endswith("_total")}
    methods = {dict(k)["method"] for k in samples}
    assert methods == {"other", "GET", "POST"}
    assert samples[(("method", "other"), ("route", "unmatched"), ("status", "200"))] == 50
    assert samples[(("method", "POST"), ("route", "unmatched"), ("status", "client_disconnect"))] == 1
    assert not any(dict(k)["status"] == "500" for k in samples)


def test_a_steady_rate_near_the_boundary_raises_the_alarm_once_or_twice_not_every_few_dozen_inputs() -> None:
    """Issue 38: without hysteresis a steady 4% flag rate (p0 2%, p1 7%) raised a new alarm every few dozen
    inputs; re-arming only below half the threshold raises it at most twice in 20,000."""
    stream = _stream(0.04, 20_000, 1)
    flapping = FlagRateCUSUM(0.02, 0.07, rearm=0.999999)              # the old behaviour: clear as soon as S < h
    steady = FlagRateCUSUM(0.02, 0.07)
    old = sum(flapping.update(chunk) for chunk in _chunks(stream, 64))
    new = sum(steady.update(chunk) for chunk in _chunks(stream, 64))
    assert old >= 20 and 1 <= new <= 2 and steady.alarms == new


def test_the_statistic_has_a_ceiling_and_an_operator_can_reset_it() -> None:
    alarm = FlagRateCUSUM(0.02, 0.07)
    assert alarm.update([True] * 2000) == 1                            # hostile traffic: raised once
    assert alarm.statistic == pytest.approx(2 * alarm.threshold)       # capped (was 2,505 uncapped)
    cleared_after = next(i for i in range(1, 10_000) if alarm.update([False]) == 0 and not alarm.in_alarm)
    assert cleared_after < 500                                         # ~ (2h - h/2) / 0.052 clean inputs
    alarm.update([True] * 2000)
    alarm.reset()
    assert alarm.statistic == 0.0 and not alarm.in_alarm and alarm.state()["alarms"] == 2
    with pytest.raises(ValueError, match="rearm"):
        FlagRateCUSUM(0.02, 0.07, rearm=1.0)


def test_two_raises_in_one_batch_are_two(tmp_path: Path) -> None:
    alarm = FlagRateCUSUM(0.02, 0.07)
    batch = [True] * 400 + [False] * 600 + [True] * 400               # raise, clear below h/2, raise again
    assert alarm.update(batch) == 2 and alarm.alarms == 2


def test_an_operator_resets_a_raised_alarm_through_the_admin_route(artifact: Path, pgd: torch.Tensor,
                                                                   tmp_path: Path) -> None:
    with TestClient(create_app(GuardedClassifier.load(artifact), ServeConfig(audit_db=tmp_path / "a.sqlite"))) as client:
        buf = io.BytesIO()
        np.save(buf, pgd[:64].numpy())
        assert client.post("/v1/predict", content=buf.getvalue(),
                           headers={"content-type": "application/x-npy"}).status_code == 200
        assert client.get("/v1/model").json()["alarm"]["in_alarm"]
        after = client.post("/v1/audit/alarms/reset").json()
        assert not after["in_alarm"] and after["statistic"] == 0.0 and after["alarms"] >= 1
        assert not client.get("/v1/model").json()["alarm"]["in_alarm"]
