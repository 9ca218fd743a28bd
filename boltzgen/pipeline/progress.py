"""One progress bar over a whole SMC run, with stage names and an ETA."""
from __future__ import annotations

#: A model evaluation costs about this many force-field evaluations in the model's coordinates: in
#: `boltzgen sample alanine-dipeptide --runs 4` (IC model) the levels (200 model evaluations per
#: particle) took about as long as bridge and mixing (~570 target evaluations per particle), about
#: 2.5-3x per evaluation. So the model's levels get their share of the bar by time, not by count.
MODEL_COST = 3.0
#: The bridge's length is not known in advance: it is budgeted as this many steps.
BRIDGE_STEPS = 40


def stage_shares(settings) -> dict[str, float]:
    """Each stage's estimated cost in force-field evaluations per particle, in run order."""
    m = settings.mixing
    level_evaluations = 1 + settings.level_moves * (1 + settings.level_torsions)
    return {"levels": settings.n_levels * level_evaluations * MODEL_COST,
            "bridge": BRIDGE_STEPS * (2 + settings.bridge.moves * (1 + settings.bridge.torsions)),
            "mixing": m.moves * (1 + m.torsions.moves)}


def stage_fraction(stage, position: float) -> float:
    """How far through ``stage`` its ``position`` is, in [0, 1]: from ``stage.start`` to ``stage.total``
    (1.0 for stages without one), whichever way positions run."""
    start, end = float(stage.start), float(getattr(stage, "total", 1.0))
    if end == start:
        return 1.0
    return min(max((float(position) - start) / (end - start), 0.0), 1.0)


def describe(step) -> str:
    """The bar's text for a step record: stage, position, ESS, lineages and acceptance rates."""
    rates = ", ".join(f"{key.replace('.acceptance', '').replace('acceptance', 'moves')} acc {value:.2f}"
                      for key, value in step.moves.items() if key.endswith("acceptance"))
    return (f"{step.stage} {step.name}={step.value:.3g} ESS={step.ess_fraction:.2f} lineages={step.n_ancestors}"
            + (f", {rates}" if rates else ""))


class RunProgress:
    """One tqdm bar over a whole run (levels, bridge, mixing), with an ETA.

    Each stage owns a share of the bar by its estimated cost (:func:`stage_shares`); within a stage
    the bar follows the stage's own position (:func:`stage_fraction`). A stage the settings do not
    name (e.g. a free-energy switch) moves the text, not the bar.
    """

    def __init__(self, label: str, settings):
        from tqdm.auto import tqdm

        self.shares = stage_shares(settings)
        self.offsets, total = {}, 0.0
        for name, share in self.shares.items():
            self.offsets[name], total = total, total + share
        self.bar = tqdm(total=total, desc=label, unit="eval", leave=False, unit_scale=True,
                        bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}")

    def __call__(self, stage, position: float, step) -> None:
        if step.stage in self.shares:
            done = self.offsets[step.stage] + self.shares[step.stage] * stage_fraction(stage, position)
            self.bar.update(max(done - self.bar.n, 0.0))
        self.bar.set_postfix_str(describe(step), refresh=False)

    def close(self) -> None:
        self.bar.close()
