"""The one object that owns a molecule's sampling space: :class:`MolecularSpace`.

A molecule's Boltzmann density exp(-u(x)) is invariant to translations, so it is sampled (and
modelled) on the centre-free subspace: positions with zero centroid, dimension 3 n_atoms - 3.
Models and samplers work on *flat* vectors in *model units*,

    y = (x - centroid(x)) / scale,   x: (n, n_atoms, 3) in nm,   y: (n, 3 n_atoms), dimensionless,

with ``scale`` (nm) chosen so that the data have about unit variance per coordinate. Everything
that touches the subspace takes this object: the training losses (noise is projected), the
proposal (:meth:`MolecularSpace.proposal`), the SMC kernels (``project=space.project``), the score
samplers and the target wrapper (:meth:`MolecularSpace.flat_energy`), so it is declared once.

Densities. The linear map y -> x on the subspace has Jacobian determinant scale^(3 n_atoms - 3),
so the target in model units is u_y(y) = u(scale y) - (3 n_atoms - 3) ln(scale) and
integral exp(-u_y) dy = integral exp(-u) dx over centre-free positions: log Z keeps the
target's units (nm^(3 n_atoms - 3)), whatever the scale.

The centroid (unweighted mean) defines the subspace because its projection is orthogonal in
flat coordinates, which the MCMC kernels need; the physical (mass-weighted) centre of mass would
give a different but equivalent subspace (see :mod:`boltzgen.coordinates`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import as_tensor, check_count, check_flat, check_positions

# A sample counts as in the subspace when its centroid is below this, relative to its size.
_SUBSPACE_TOLERANCE = 1e-5
# A fold onto L is exact only if the force field is mirror symmetric: the largest energy change
# (kT) a reflection may cause before a run is refused.
MIRROR_TOLERANCE_KT = 1e-3


@dataclass(frozen=True)
class MolecularSpace:
    """Centre-free flat coordinates of a molecule with ``n_atoms`` atoms, in units of ``scale`` nm.

    Attributes:
        n_atoms: number of atoms (>= 2).
        scale: nm per model unit (> 0); :meth:`fit` picks it from data.
    """

    n_atoms: int
    scale: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "n_atoms", check_count(self.n_atoms, "n_atoms", minimum=2))
        try:
            scale = float(self.scale)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"scale must be a number (nm per model unit), got {type(self.scale).__name__}") from exc
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be a finite positive length in nm, got {self.scale!r}")
        object.__setattr__(self, "scale", scale)

    @classmethod
    def fit(cls, positions) -> "MolecularSpace":
        """The space whose scale makes ``positions`` (n, n_atoms, 3) in nm unit-variance per coordinate."""
        x = check_positions(positions, "positions")
        if x.shape[0] == 0 or not torch.isfinite(x).all():
            raise ValueError("positions must hold at least one configuration and only finite values (nm)")
        centred = x - x.mean(dim=1, keepdim=True)
        d = 3 * x.shape[1] - 3
        rms = math.sqrt(float((centred.to(torch.float64) ** 2).sum()) / (x.shape[0] * d))
        return cls(x.shape[1], rms)

    # --- sizes -----------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """3 n_atoms: the length of a flat vector."""
        return 3 * self.n_atoms

    @property
    def subspace_dim(self) -> int:
        """3 n_atoms - 3: the dimension of the centre-free subspace."""
        return 3 * self.n_atoms - 3

    @property
    def log_jacobian(self) -> float:
        """ln |det dx/dy| = (3 n_atoms - 3) ln(scale): add to -log densities in y to get them in x."""
        return self.subspace_dim * math.log(self.scale)

    # --- maps ------------------------------------------------------------------------------
    def project(self, v: torch.Tensor) -> torch.Tensor:
        """Orthogonal projection of flat (..., 3 n_atoms) vectors onto zero centroid; same shape."""
        if v.shape[-1] != self.dim:
            raise ValueError(f"v must have last dimension {self.dim} (flat {self.n_atoms}-atom vectors), got {tuple(v.shape)}")
        r = v.reshape(*v.shape[:-1], self.n_atoms, 3)
        return (r - r.mean(dim=-2, keepdim=True)).reshape(v.shape)

    def to_flat(self, positions) -> torch.Tensor:
        """Positions (n, n_atoms, 3) in nm -> centre-free flat vectors (n, 3 n_atoms) in model units."""
        x = check_positions(positions, "positions", self.n_atoms)
        return ((x - x.mean(dim=1, keepdim=True)) / self.scale).reshape(x.shape[0], self.dim)

    def to_positions(self, y) -> torch.Tensor:
        """Flat vectors (n, 3 n_atoms) in model units -> positions (n, n_atoms, 3) in nm (centroid 0)."""
        y = check_flat(y, "y", self.dim)
        return y.reshape(y.shape[0], self.n_atoms, 3) * self.scale

    def flat_energy(self, reduced_energy):
        """The target in model units: y -> u(scale y) - log_jacobian, so that log Z is unchanged.

        Args:
            reduced_energy: callable on positions (n, n_atoms, 3) in nm -> (n,) energies in kT
                (e.g. a target's ``reduced_energy``).
        Returns:
            callable on flat (n, 3 n_atoms) vectors -> (n,) energies in kT.
        """
        if not callable(reduced_energy):
            raise TypeError("reduced_energy must be callable on positions (n, n_atoms, 3) in nm")
        log_jacobian = self.log_jacobian

        def energy(y: torch.Tensor) -> torch.Tensor:
            return reduced_energy(self.to_positions(y)) - log_jacobian

        return energy

    # --- the coordinate-space protocol ------------------------------------------------------
    @property
    def projection(self):
        """The orthogonal projection onto the centre-free subspace (noise, moves and gradients stay there)."""
        return self.project

    @property
    def periodic(self) -> torch.Tensor:
        """(dim,) bool: no coordinate is periodic."""
        return torch.zeros(self.dim, dtype=torch.bool)

    def log_det_jacobian(self, y) -> torch.Tensor:
        """(n,) float64 ln |det dx/dy|: the constant :attr:`log_jacobian` for every sample."""
        y = check_flat(y, "y", self.dim)
        return torch.full((y.shape[0],), self.log_jacobian, dtype=torch.float64, device=y.device)

    def check_target(self, reduced_energy, positions) -> None:
        """Refuse a target that folding could not serve, before any sampling.

        The model sees only distances, so it cannot tell mirror images apart; its samples are folded
        onto L afterwards (:meth:`finish`), which is exact only if u is mirror symmetric. Checked on
        ``positions`` (n, n_atoms, 3) nm, e.g. the structure: a reflection may change u by at most
        1e-3 kT.
        """
        x = torch.as_tensor(positions, dtype=torch.float64)
        x = x[None] if x.ndim == 2 else x
        with torch.no_grad():
            shift = (reduced_energy(-x) - reduced_energy(x)).abs()
        worst = float(shift[torch.isfinite(shift)].max()) if torch.isfinite(shift).any() else 0.0
        if worst > MIRROR_TOLERANCE_KT:
            raise ValueError(f"the force field is not mirror symmetric (a reflection changes u by {worst:.3g} kT): "
                             "mirror images of a Cartesian model cannot be folded onto L; use internal coordinates")

    def finish(self, positions: torch.Tensor, topology) -> tuple[torch.Tensor, float]:
        """Samples (n, n_atoms, 3) nm folded onto L, and the fraction that were mirror images (D).

        Exact because the force field is mirror symmetric (:meth:`check_target`). A molecule with no
        amino-acid stereocentre is returned as it is (fraction nan).
        """
        from . import alpha_carbon_centers, fold_to_l

        if len(alpha_carbon_centers(topology)) == 0:
            return positions, float("nan")
        folded = fold_to_l(positions, topology)
        return folded.positions, float(folded.mirror_fraction)

    def torsion_kernel(self, topology, reflect: float = 0.5):
        """Rigid turns of the molecule's rotatable bonds (:class:`~boltzgen.smc.torsion.TorsionKernel`), or None without any."""
        from ..smc.torsion import TorsionKernel, rotatable_torsions_or_none

        torsions = rotatable_torsions_or_none(topology)
        return None if torsions is None else TorsionKernel(torsions, reflect)

    # --- checks and helpers ----------------------------------------------------------------
    def contains(self, y) -> bool:
        """Whether every flat vector of ``y`` (n, 3 n_atoms) lies in the centre-free subspace."""
        y = as_tensor(y, "y")
        if y.ndim != 2 or y.shape[1] != self.dim:
            return False
        offset = (y - self.project(y)).abs().amax()
        return bool(offset <= _SUBSPACE_TOLERANCE * (1.0 + y.abs().amax()))

    def rotate(self, y: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
        """Flat vectors y (n, 3 n_atoms) (positions or forces) rotated by rotations (n, 3, 3)."""
        y = check_flat(y, "y", self.dim)
        if rotations.shape != (y.shape[0], 3, 3):
            raise ValueError(f"rotations must have shape ({y.shape[0]}, 3, 3), got {tuple(rotations.shape)}")
        r = y.reshape(y.shape[0], self.n_atoms, 3)
        return torch.einsum("nij,naj->nai", rotations.to(y), r).reshape(y.shape)

    def random_rotation(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Each flat vector of ``y`` (n, 3 n_atoms) rotated by its own uniform random rotation.

        Rotations keep the centroid at zero and leave the Boltzmann density unchanged: training
        data augmented this way is exactly rotation invariant, as an invariant model assumes.
        """
        y = check_flat(y, "y", self.dim)
        return self.rotate(y, random_rotations(y.shape[0], generator, y.dtype).to(y.device))

    def proposal(self, variance: float = 1.0, dtype: torch.dtype = torch.float64, device=None):
        """The isotropic Gaussian N(0, variance I) on the subspace, normalised there (model units)."""
        from ..smc.proposal import GaussianProposal

        return GaussianProposal(self.dim, 0.0, variance, project=self.project, subspace_dim=self.subspace_dim,
                                dtype=dtype, device=device)

    def config(self) -> dict:
        """Plain-type description (for model files); :meth:`from_config` inverts it."""
        return {"kind": "molecular", "n_atoms": self.n_atoms, "scale": self.scale}

    @classmethod
    def from_config(cls, config: dict) -> "MolecularSpace":
        """Inverse of :meth:`config`."""
        c = dict(config)
        if c.pop("kind", "molecular") != "molecular":
            raise ValueError(f"not a molecular space config: {config!r}")
        return cls(**c)


def random_rotations(n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
    """n uniform random rotation matrices (n, 3, 3) (QR of Gaussian matrices, sign-fixed, det +1)."""
    n = check_count(n, "n", minimum=0)
    device = generator.device if generator is not None else None
    a = torch.randn(n, 3, 3, generator=generator, dtype=torch.float64, device=device)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]  # Haar measure
    flip = torch.linalg.det(q) < 0
    q[flip, :, 0] = -q[flip, :, 0]
    return q.to(dtype)
