"""Attack and drift alarm: a one-sided binomial CUSUM on the stream of the detector's flags.

The detector was calibrated at a known false-positive rate p0, so on clean traffic each input is flagged
with probability about p0. An attack (or a shift of the data) raises that rate. Page's CUSUM of the
log-likelihood ratio of Bernoulli(p1) against Bernoulli(p0),

    S_t = max(0, S_{t-1} + x_t log(p1/p0) + (1 - x_t) log((1 - p1)/(1 - p0))),   x_t = 1 if flagged,

raises the alarm when S_t >= h. With h = log(1 / false_alarm_rate) the expected number of clean inputs
between false alarms is at least exp(h) = 1 / false_alarm_rate (Lorden, "Procedures for reacting to a
change in distribution", Ann. Math. Statist. 1971, Thm. 2), whatever the stream's length.

What an operator can live with (issue 38): the alarm stays raised until S_t falls below `rearm` x h (hysteresis:
a steady rate near the boundary raises it once, not every few dozen inputs), S_t never exceeds `ceiling` x h (so
after hostile traffic a bounded number of clean inputs clears it), and `reset()` clears it by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class AlarmConfig:
    """Settings of the alarm (`latentdefence serve --alarm-*` flags map onto these)."""

    p0: float | None = None                # null flag rate; None: the detector's calibrated FPR (see `null_rate`)
    shift: float = 0.05                    # alternative p1 = p0 + shift: the extra flag rate worth an alarm
    false_alarm_rate: float = 1e-6         # per clean input: >= 1 / rate clean inputs between false alarms
    rearm: float = 0.5                     # a raised alarm clears only once S falls below rearm x h
    ceiling: float = 2.0                   # S is capped at ceiling x h


def null_rate(calibration_fpr: float, calibration_size: int) -> float:
    """The flag rate of clean traffic: the calibration FPR, floored at 1/(n + 1), the least n clean points resolve."""
    return max(calibration_fpr, 1.0 / (calibration_size + 1))


@dataclass
class FlagRateCUSUM:
    """Page's one-sided CUSUM for a rise of a Bernoulli rate from p0 to p1 (see the module docstring)."""

    p0: float
    p1: float
    false_alarm_rate: float = 1e-6
    rearm: float = 0.5
    ceiling: float = 2.0
    statistic: float = field(default=0.0, init=False)
    observed: int = field(default=0, init=False)     # inputs seen
    flagged: int = field(default=0, init=False)      # of which flagged
    alarms: int = field(default=0, init=False)       # times the alarm was raised
    in_alarm: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if not 0 < self.p0 < self.p1 < 1:
            raise ValueError(f"need 0 < p0 < p1 < 1, got p0={self.p0}, p1={self.p1}")
        if not 0 < self.false_alarm_rate < 1:
            raise ValueError(f"false_alarm_rate must be in (0, 1), got {self.false_alarm_rate}")
        if not 0 <= self.rearm < 1 <= self.ceiling:
            raise ValueError(f"need 0 <= rearm < 1 <= ceiling, got rearm={self.rearm}, ceiling={self.ceiling}")
        self._up = math.log(self.p1 / self.p0)                       # increment for a flag (> 0)
        self._down = math.log((1 - self.p1) / (1 - self.p0))         # for an unflagged input (< 0)

    @classmethod
    def from_config(cls, config: AlarmConfig, p0: float) -> "FlagRateCUSUM":
        """The CUSUM for `config`, with `p0` unless the config fixes one."""
        p0 = config.p0 if config.p0 is not None else p0
        return cls(p0, min(p0 + config.shift, 1 - 1e-9), config.false_alarm_rate, config.rearm, config.ceiling)

    @property
    def threshold(self) -> float:
        """h = log(1 / false_alarm_rate)."""
        return -math.log(self.false_alarm_rate)

    def update(self, flags: list[bool]) -> int:
        """Feed flags in arrival order; how many times this call raised the alarm (0 when it did not)."""
        raised, h = 0, self.threshold
        for flag in flags:
            self.statistic = min(self.ceiling * h, max(0.0, self.statistic + (self._up if flag else self._down)))
            if not self.in_alarm and self.statistic >= h:
                self.in_alarm, raised = True, raised + 1
            elif self.in_alarm and self.statistic < self.rearm * h:
                self.in_alarm = False
        self.alarms += raised
        self.observed += len(flags)
        self.flagged += sum(flags)
        return raised

    def reset(self) -> None:
        """Clear the alarm and the statistic (an operator's decision, e.g. after an attack was handled)."""
        self.statistic, self.in_alarm = 0.0, False

    def state(self) -> dict[str, float | int | bool]:
        """What an operator reads: the statistic against its threshold, counts, and the rates tested."""
        return {"statistic": self.statistic, "threshold": self.threshold, "in_alarm": self.in_alarm,
                "alarms": self.alarms, "observed": self.observed, "flagged": self.flagged, "p0": self.p0,
                "p1": self.p1, "false_alarm_rate": self.false_alarm_rate, "rearm_below": self.rearm * self.threshold,
                "ceiling": self.ceiling * self.threshold}
