"""What an evaluation attacks with: the threat model, the attack budgets and the named versions (quick / standard /
thorough)."""

from __future__ import annotations

from dataclasses import dataclass, replace


ON_F_ALONE = ("pgd", "autoattack")                                 # know F only (transfer to the detector)
PAPER_ATTACKS = ("pgd", "adaptive_paper")                          # DLD paper's own evaluation
EPS_SWEEP_FLOOR = 0.05       # robustness at the largest eps of the sweep above this: warn (should reach ~0)


@dataclass(frozen=True)
class ThreatModel:
    """The attacker's budget: an L-inf or L2 ball of radius eps around each clean image, untargeted."""

    norm: str = "linf"
    eps: float = 0.3

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"threat model norm must be 'linf' or 'l2', got {self.norm!r}")
        if not self.eps > 0:
            raise ValueError(f"threat model eps must be > 0, got {self.eps}")


@dataclass(frozen=True)
class Budget:
    """One version's attack budgets (every attack that applies runs at these)."""

    pgd_steps: int = 100                  # PGD on F alone (the DLD paper's grey-box attack)
    pgd_restarts: int = 1
    pgd_step: float | None = None         # PGD's and the adaptive attack's step, a fraction of eps; None: 2.5 / steps
    steps: int = 100                      # detector-aware attacks: guide points, selective, orthogonal
    restarts: int = 1
    n_targets: int = 3                    # guide points' target classes
    check_every: int = 5
    refresh_every: int = 10
    adaptive_steps: int = 100             # DLD's adaptive attack: ensemble PGD, then Eq. 10 per alpha2
    centroid_steps: int = 100
    alpha1: float = 1.0
    alpha2: tuple[float, ...] = (0.25, 1.0, 4.0, 16.0)
    autoattack_steps: int = 100           # F alone: APGD-CE, APGD-T, Square
    autoattack_targets: int = 9
    autoattack_restarts: int = 1
    square_queries: int = 5000            # also Square on F + detector
    square_restarts: int = 1
    n_sanity: int = 200                   # images for the sanity checks
    eps_sweep: tuple[float, ...] = (1 / 3, 2 / 3, 1.0, 4 / 3, 5 / 3)   # multiples of eps
    batch_size: int = 250

    def doubled(self) -> "Budget":
        """Twice the steps, restarts and queries of every attack (the budget check)."""
        return replace(self, pgd_steps=2 * self.pgd_steps, pgd_restarts=2 * self.pgd_restarts, steps=2 * self.steps,
                       restarts=2 * self.restarts, adaptive_steps=2 * self.adaptive_steps,
                       centroid_steps=2 * self.centroid_steps, autoattack_steps=2 * self.autoattack_steps,
                       autoattack_restarts=2 * self.autoattack_restarts, square_queries=2 * self.square_queries,
                       square_restarts=2 * self.square_restarts)


VERSIONS: dict[str, Budget] = {
    # the cpu budgets of `reproduce dld-mnist-adaptive` (about 40 min for four detectors on one core, n = 500)
    "quick": Budget(pgd_steps=40, pgd_step=1 / 30, steps=40, n_targets=2, adaptive_steps=50, centroid_steps=50,
                    alpha1=0.01,
                    alpha2=(5.0, 15.0), autoattack_steps=50, autoattack_targets=3, square_queries=500, n_sanity=100),
    # AutoAttack's standard budget on F (100 steps, 9 targets, 5000 Square queries); 2 restarts on the detector
    "standard": Budget(pgd_restarts=2, restarts=2),
    # more targets and restarts everywhere
    "thorough": Budget(pgd_restarts=5, steps=200, restarts=5, n_targets=9, adaptive_steps=200, centroid_steps=200,
                       alpha2=(0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 16.0), autoattack_restarts=5, square_restarts=2,
                       n_sanity=500),
}
