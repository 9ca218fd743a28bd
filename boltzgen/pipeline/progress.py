"""One progress bar over a whole SMC run, with stage names and an ETA."""
from __future__ import annotations


class RunProgress:
    """One tqdm bar over a whole run (levels, bridge, mixing), in estimated energy evaluations, with an ETA.

    Levels cost 1 + level_moves evaluations per step, mixing 1 + torsion moves per move; the bridge's
    length is not known in advance, so it is budgeted as 40 steps and advanced by its lambda.
    """

    _BRIDGE_STEPS = 40

    def __init__(self, label: str, settings):
        from tqdm.auto import tqdm

        m = settings.mixing
        self.level_cost = 1 + settings.level_moves
        self.bridge_cost = self._BRIDGE_STEPS * (2 + settings.bridge.moves)
        self.mixing_cost = 1 + m.torsions.moves
        total = settings.n_levels * self.level_cost + self.bridge_cost + m.moves * self.mixing_cost
        self.bar = tqdm(total=total, desc=label, unit="eval", leave=False, unit_scale=True,
                        bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}")
        self.bridge_done = 0.0

    def __call__(self, stage, position: float, step) -> None:
        if step.stage == "levels":
            self.bar.update(self.level_cost)
            self.bar.set_postfix_str(f"levels t={step.value:.3f} ESS={step.ess_fraction:.2f} "
                                     f"lineages={step.n_ancestors}", refresh=False)
        elif step.stage == "bridge":
            self.bar.update(self.bridge_cost * (position - self.bridge_done))
            self.bridge_done = position
            self.bar.set_postfix_str(f"bridge lambda={step.value:.3f} ESS={step.ess_fraction:.2f}", refresh=False)
        elif step.stage == "mixing":
            block = getattr(stage, "block", 0)
            self.bar.update(block * self.mixing_cost)
            self.bar.set_postfix_str(f"mixing {int(step.value)} moves, torsion acceptance "
                                     f"{step.moves.get('torsion.acceptance', float('nan')):.2f}", refresh=False)

    def close(self) -> None:
        self.bar.close()
