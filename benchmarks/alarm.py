"""Detection delay and false alarms of the flag-rate alarm (`serving.alarm.FlagRateCUSUM`), one run.

Run: .venv/bin/python benchmarks/alarm.py [--runs 100] [--clean 200000] [--only delay|operator]
Streams are Bernoulli flags: clean traffic is flagged at the calibrated FPR p0; from the change point
on, a fraction `attack` of the traffic is adversarial and the detector flags it with probability
`recall` (1.0: the detector sees every adversarial input; 0.5: half). Prints, per setting, the median
and 90th percentile of the delay (inputs from the change to the alarm) against the h / KL(p1 || p0)
approximation (Lorden's asymptotic delay were the alternative p1 the true rate), and the false alarms
over `--clean` clean inputs (Lorden's bound: at most clean * rate expected). Then what an operator lives with,
against the alarm as first shipped (re-armed the moment S fell below h, no ceiling): raises in 20,000 inputs at a
steady flag rate near the boundary (flapping), and clean inputs needed to clear after hostile traffic.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch

from latentdefence.serving.alarm import AlarmConfig, FlagRateCUSUM


def delay(p0: float, rate: float, config: AlarmConfig, seed: int, limit: int = 50_000) -> int | None:
    """Inputs until the alarm on a stream flagged at `rate` (None: not raised within `limit`)."""
    alarm = FlagRateCUSUM.from_config(config, p0)
    flags = (torch.rand(limit, generator=torch.Generator().manual_seed(seed)) < rate).tolist()
    for step, flag in enumerate(flags, 1):
        if alarm.update([flag]):
            return step
    return None


def kl(p1: float, p0: float) -> float:
    return p1 * math.log(p1 / p0) + (1 - p1) * math.log((1 - p1) / (1 - p0))


FIRST_SHIPPED = AlarmConfig(rearm=0.999999, ceiling=1e12)     # no hysteresis, no ceiling: the alarm as first shipped


def raises(p0: float, rate: float, config: AlarmConfig, seed: int, n: int = 20_000) -> int:
    """Alarms raised over `n` inputs flagged at a steady `rate`."""
    alarm = FlagRateCUSUM.from_config(config, p0)
    return sum(alarm.update([flag]) for flag in
               (torch.rand(n, generator=torch.Generator().manual_seed(seed)) < rate).tolist())


def to_clear(p0: float, config: AlarmConfig, seed: int, hostile: int = 5000, rate: float = 0.2) -> int | None:
    """Clean inputs (flagged at p0) until the alarm clears after `hostile` inputs flagged at `rate`."""
    alarm = FlagRateCUSUM.from_config(config, p0)
    gen = torch.Generator().manual_seed(seed)
    alarm.update((torch.rand(hostile, generator=gen) < rate).tolist())
    for step, flag in enumerate((torch.rand(200_000, generator=gen) < p0).tolist(), 1):
        alarm.update([flag])
        if not alarm.in_alarm:
            return step
    return None


def mean_ci(values: list[int]) -> str:
    """Mean with its normal-approximation 95% interval."""
    mean, half = statistics.mean(values), 1.96 * statistics.stdev(values) / math.sqrt(len(values))
    return f"{mean:.1f} [{mean - half:.1f}, {mean + half:.1f}]"


def median_ci(values: list[int]) -> str:
    """Median with its distribution-free 95% interval (order statistics, normal approximation of the binomial)."""
    ranked, n = sorted(values), len(values)
    lo, hi = int(n / 2 - 0.98 * math.sqrt(n)), int(math.ceil(n / 2 + 0.98 * math.sqrt(n)))
    return f"{statistics.median(ranked):.0f} [{ranked[max(lo, 0)]}, {ranked[min(hi, n - 1)]}]"


def operator_view(runs: int) -> None:
    """Flapping and clearing, the shipped alarm against the first one (95% intervals over the seeded streams)."""
    print(f"\n{'p0':>6} {'flag rate':>9} {'raises in 20k, mean (now)':>28} {'(first shipped)':>22}")
    for p0, rate in ((0.02, 0.03), (0.02, 0.04), (0.02, 0.05), (0.05, 0.08)):
        now = [raises(p0, rate, AlarmConfig(), seed) for seed in range(runs)]
        before = [raises(p0, rate, FIRST_SHIPPED, seed) for seed in range(runs)]
        print(f"{p0:6.3f} {rate:9.3f} {mean_ci(now):>28} {mean_ci(before):>22}")
    print(f"\n{'p0':>6} {'clean inputs to clear after 5,000 at 20%, median (now)':>56} {'(first shipped)':>24}")
    for p0 in (0.02, 0.05):
        now = [d for d in (to_clear(p0, AlarmConfig(), seed) for seed in range(runs)) if d is not None]
        before = [d for d in (to_clear(p0, FIRST_SHIPPED, seed) for seed in range(runs)) if d is not None]
        print(f"{p0:6.3f} {median_ci(now):>56} {median_ci(before):>24}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--clean", type=int, default=200_000)
    parser.add_argument("--only", choices=("delay", "operator"), default=None)
    args = parser.parse_args()
    if args.only != "delay":
        operator_view(args.runs)
    if args.only == "operator":
        return
    config = AlarmConfig()
    print(f"alarm: shift {config.shift}, false-alarm rate {config.false_alarm_rate:g} per input "
          f"(h = {-math.log(config.false_alarm_rate):.2f})")
    print(f"{'p0':>6} {'attack':>7} {'recall':>6} {'flag rate':>9} {'median delay':>12} {'p90':>7} "
          f"{'h/KL':>7} {'missed':>6}")
    for p0 in (0.02, 0.05):
        for attack, recall in ((0.02, 1.0), (0.05, 1.0), (0.05, 0.5), (0.10, 1.0), (0.20, 1.0)):
            rate = p0 + attack * recall * (1 - p0)          # clean inputs swapped for adversarial ones
            delays = [delay(p0, rate, config, seed) for seed in range(args.runs)]
            hit = sorted(d for d in delays if d is not None)
            p1 = p0 + config.shift
            approx = -math.log(config.false_alarm_rate) / kl(rate, p0)   # Lorden: delay ~ h / KL for p1 = rate
            p90 = hit[int(0.9 * (len(hit) - 1))] if hit else float("nan")
            print(f"{p0:6.3f} {attack:7.2f} {recall:6.2f} {rate:9.4f} "
                  f"{statistics.median(hit) if hit else float('nan'):12.0f} {p90:7.0f} {approx:7.0f} "
                  f"{len(delays) - len(hit):6d}   (alternative p1 = {p1:.3f})")
        alarm = FlagRateCUSUM.from_config(config, p0)
        flags = (torch.rand(args.clean, generator=torch.Generator().manual_seed(10_000)) < p0).tolist()
        for step in range(0, args.clean, 4096):
            alarm.update(flags[step:step + 4096])
        print(f"{p0:6.3f} clean: {alarm.alarms} false alarms in {args.clean} inputs "
              f"(bound: at most {args.clean * config.false_alarm_rate:.2f} expected)")


if __name__ == "__main__":
    main()
