"""Batched energy terms of a classical force field, one torch module per OpenMM force kind.

Every term is called as ``term(X, gradient=False)`` with coordinates ``X`` of shape (3, n_atoms, n) in
nm and returns ``(energy, pieces)``: energies (n,) in kJ/mol with OpenMM's functional form and
constants, and, when ``gradient`` is true, the analytic gradient in pieces ``(atoms, rows)``:
rows (3, m, n) in kJ/mol/nm, row k adding to dE/dX of atom ``atoms[k]`` (else None). The force
field adds all pieces onto one gradient (:func:`scatter`), which lets torch.compile write each
piece straight into it; forces are minus the gradient.

Why this shape: the batch is the *last*, contiguous axis, so gathering atoms copies whole rows and
every elementwise operation runs over long vectors (a 22-atom molecule is otherwise far too
small for torch to be fast). Gradients are written out by hand because autograd's backward pass
costs several times the forward pass here; the energy part uses only differentiable torch
operations, so autograd of ``energy`` is the reference the hand-written gradient is tested
against. Expensive float64 operations (sqrt, division, atan2, cos) are kept few: one rsqrt per
pair, torsions through cos/sin recurrences instead of atan2 and cos.

Parameters are buffers of shape (terms, 1) so they broadcast over the batch; ``.to(dtype)``
converts them.
"""
from __future__ import annotations

import math

import torch
from torch import nn

# 1/(4 pi eps0) in kJ mol^-1 nm e^-2, OpenMM's value (8.x).
ONE_4PI_EPS0 = 138.93545764438198


def _column(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float64).reshape(-1, 1)


def _atoms(module: nn.Module, atoms, names: tuple[str, ...]) -> None:
    """Register the columns of an (m, len(names)) atom-index array as index buffers."""
    atoms = torch.as_tensor(atoms, dtype=torch.long).reshape(-1, len(names))
    for name, column in zip(names, atoms.T):
        module.register_buffer(name, column.contiguous())


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dot product over the leading component axis: (3, m, n) x (3, m, n) -> (m, n)."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cross product over the leading component axis: (3, m, n) x (3, m, n) -> (3, m, n)."""
    return torch.stack((a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]))


def scatter(X: torch.Tensor, pieces) -> torch.Tensor:
    """The gradient (shaped like X: (3, n_atoms, n)) from pieces (atoms (m,), rows (3, m, n))."""
    grad = torch.zeros_like(X)
    for atoms, rows in pieces:
        grad = grad.index_add(1, atoms, rows)
    return grad


class HarmonicBonds(nn.Module):
    """OpenMM HarmonicBondForce: E = sum_b k_b/2 (r_b - r0_b)^2.

    Args:
        atoms: (n_bonds, 2) atom indices.
        length: (n_bonds,) equilibrium lengths r0 in nm.
        k: (n_bonds,) force constants in kJ/mol/nm^2.
    """

    def __init__(self, atoms, length, k):
        super().__init__()
        _atoms(self, atoms, ("i", "j"))
        self.register_buffer("length", _column(length))
        self.register_buffer("k", _column(k))

    def forward(self, X: torch.Tensor, gradient: bool = False):
        d = X[:, self.i] - X[:, self.j]
        inv_r = _dot(d, d).rsqrt()
        stretch = 1.0 / inv_r - self.length
        energy = (0.5 * self.k * stretch * stretch).sum(0)
        if not gradient:
            return energy, None
        g = (self.k * stretch * inv_r) * d  # dE/dd
        return energy, [(self.i, g), (self.j, -g)]


class HarmonicAngles(nn.Module):
    """OpenMM HarmonicAngleForce: E = sum_a k_a/2 (theta_a - theta0_a)^2.

    Args:
        atoms: (n_angles, 3) atom indices (the middle one is the vertex).
        angle: (n_angles,) equilibrium angles in radians.
        k: (n_angles,) force constants in kJ/mol/rad^2.
    """

    def __init__(self, atoms, angle, k):
        super().__init__()
        _atoms(self, atoms, ("i", "j", "k_atom"))
        self.register_buffer("angle", _column(angle))
        self.register_buffer("k", _column(k))

    def forward(self, X: torch.Tensor, gradient: bool = False):
        vertex = X[:, self.j]
        a, b = X[:, self.i] - vertex, X[:, self.k_atom] - vertex
        aa, bb, ab = _dot(a, a), _dot(b, b), _dot(a, b)
        inv_norms = (aa * bb).rsqrt()
        cos = (ab * inv_norms).clamp(-1.0, 1.0)
        bend = torch.acos(cos) - self.angle
        energy = (0.5 * self.k * bend * bend).sum(0)
        if not gradient:
            return energy, None
        # dE/dcos = -k bend / sin(theta); dcos/da = (b - (ab/aa) a) / (|a||b|), likewise for b.
        f = -self.k * bend * inv_norms * (1.0 - cos * cos).rsqrt()
        ga, gb = f * (b - (ab / aa) * a), f * (a - (ab / bb) * b)
        return energy, [(self.i, ga), (self.j, -ga - gb), (self.k_atom, gb)]


class PeriodicTorsions(nn.Module):
    """OpenMM PeriodicTorsionForce (propers and impropers): E = sum_t k_t (1 + cos(n_t phi - phase_t)).

    The Fourier terms of each distinct atom quadruple are folded into one series
    E_q(phi) = c_q + sum_m (A_qm cos(m phi) + B_qm sin(m phi)), evaluated from cos(phi) and
    sin(phi) by the angle-addition recurrence (phi in OpenMM's (IUPAC) sign convention).

    Args:
        atoms: (n_dihedrals, 4) distinct atom quadruples.
        dihedral: (n_terms,) index into ``atoms`` of each term's quadruple.
        periodicity: (n_terms,) integer multiplicities n_t >= 0.
        phase: (n_terms,) phases in radians.
        k: (n_terms,) amplitudes in kJ/mol.
    """

    def __init__(self, atoms, dihedral, periodicity, phase, k):
        super().__init__()
        _atoms(self, atoms, ("a0", "a1", "a2", "a3"))
        dihedral = torch.as_tensor(dihedral, dtype=torch.long).reshape(-1)
        n = torch.as_tensor(periodicity, dtype=torch.long).reshape(-1)
        phase = torch.as_tensor(phase, dtype=torch.float64).reshape(-1)
        k = torch.as_tensor(k, dtype=torch.float64).reshape(-1)
        shape = (int(n.max()) + 1, self.a0.numel())
        cos_part = torch.zeros(shape, dtype=torch.float64).index_put_((n, dihedral), k * torch.cos(phase), accumulate=True)
        sin_part = torch.zeros(shape, dtype=torch.float64).index_put_((n, dihedral), k * torch.sin(phase), accumulate=True)
        # Multiplicity 0 is a constant; so is the "1 +" of every term.
        self.register_buffer("constant", (k.sum() + cos_part[0].sum()).reshape(1))
        self.register_buffer("A", cos_part.unsqueeze(-1))  # (max multiplicity + 1, n_dihedrals, 1)
        self.register_buffer("B", sin_part.unsqueeze(-1))

    def forward(self, X: torch.Tensor, gradient: bool = False):
        b1 = X[:, self.a1] - X[:, self.a0]
        b2 = X[:, self.a2] - X[:, self.a1]
        b3 = X[:, self.a3] - X[:, self.a2]
        n1, n2 = _cross(b1, b2), _cross(b2, b3)
        n11, n22, b22 = _dot(n1, n1), _dot(n2, n2), _dot(b2, b2)
        norm_b2 = b22.sqrt()
        inv_norms = (n11 * n22).rsqrt()
        cos1 = _dot(n1, n2) * inv_norms  # cos(phi)
        sin1 = _dot(b1, n2) * norm_b2 * inv_norms  # sin(phi)
        cos_m, sin_m = torch.ones_like(cos1), torch.zeros_like(cos1)
        series = torch.zeros_like(cos1)
        slope = torch.zeros_like(cos1)  # dE/dphi
        for m in range(1, self.A.shape[0]):
            cos_m, sin_m = cos_m * cos1 - sin_m * sin1, sin_m * cos1 + cos_m * sin1
            series = series + self.A[m] * cos_m + self.B[m] * sin_m
            slope = slope + m * (self.B[m] * cos_m - self.A[m] * sin_m)
        energy = series.sum(0) + self.constant
        if not gradient:
            return energy, None
        # dphi/dx0 = -|b2|/|n1|^2 n1, dphi/dx3 = |b2|/|n2|^2 n2; the middle atoms follow from
        # translation and rotation invariance (Blondel and Karplus, J. Comput. Chem. 17, 1132 (1996)).
        g0 = (-slope * norm_b2 / n11) * n1
        g3 = (slope * norm_b2 / n22) * n2
        p, q = _dot(b1, b2) / b22, _dot(b3, b2) / b22
        g1 = q * g3 - (1.0 + p) * g0
        g2 = p * g0 - (1.0 + q) * g3
        return energy, [(self.a0, g0), (self.a1, g1), (self.a2, g2), (self.a3, g3)]


class PairNonbonded(nn.Module):
    """OpenMM NonbondedForce without cutoff, as one list of interacting pairs.

    E = sum_p qq_p / r_p + 4 eps_p ((sigma_p/r_p)^12 - (sigma_p/r_p)^6), where the pair list holds
    every atom pair with its combined parameters (Lorentz-Berthelot, qq = q_i q_j / (4 pi eps0)),
    exceptions replacing them; pairs with qq = eps = 0 (exclusions) are left out.

    Args:
        atoms: (n_pairs, 2) atom indices.
        charge_product: (n_pairs,) qq_p in kJ/mol nm (the Coulomb constant included).
        sigma: (n_pairs,) in nm.
        epsilon: (n_pairs,) in kJ/mol.
    """

    def __init__(self, atoms, charge_product, sigma, epsilon):
        super().__init__()
        _atoms(self, atoms, ("i", "j"))
        sigma = _column(sigma)
        self.register_buffer("charge_product", _column(charge_product))
        self.register_buffer("sigma2", sigma * sigma)
        self.register_buffer("four_epsilon", 4.0 * _column(epsilon))

    def forward(self, X: torch.Tensor, gradient: bool = False):
        d = X[:, self.i] - X[:, self.j]
        inv_r = _dot(d, d).rsqrt()
        inv_r2 = inv_r * inv_r
        s6 = (self.sigma2 * inv_r2) ** 3
        coulomb = self.charge_product * inv_r
        dispersion = self.four_epsilon * s6
        energy = (coulomb + dispersion * (s6 - 1.0)).sum(0)
        if not gradient:
            return energy, None
        g = (-(coulomb + dispersion * (12.0 * s6 - 6.0)) * inv_r2) * d  # dE/dd = (dE/dr / r) d
        return energy, [(self.i, g), (self.j, -g)]


class _OBCGeneralizedBorn(nn.Module):
    """The OBC generalized-Born energy shared by GBSAOBCForce and the CustomGBForce OBC models.

    Born radii: I_i = sum_{j != i} the HCT integral of atom j's scaled sphere (radius sr_j) over
    r > rho_i (offset radius rho = R - 0.009 nm), optionally with Tinker's correction when i lies
    inside j's sphere; psi_i = rho_i I_i / 2,
    B_i = 1 / (1/rho_i - tanh(alpha psi - beta psi^2 + gamma psi^3) / R_i).
    Polar energy: -k [sum_{i<j} q_i q_j g(f_ij) / f_ij + sum_i q_i^2 g(B_i) / (2 B_i)],
    g(x) = 1/eps_solute - exp(-kappa x)/eps_solvent, f_ij = sqrt(r^2 + B_i B_j exp(-r^2 / (4 B_i B_j))).
    Nonpolar (ACE) energy: sum_i surface_i (R_i / B_i)^6.

    Args (all per atom, (n_atoms,)): charge (e), offset_radius rho (nm), scaled_radius sr (nm),
    radius R (nm), surface (the ACE prefactor of (R/B)^6 in kJ/mol; zeros for no surface term).
    Keywords: alpha, beta, gamma (the OBC tanh coefficients), coulomb (k in kJ/mol nm e^-2),
    inner = 1/eps_solute and outer = 1/eps_solvent (both 0 switch the polar energy off), kappa
    (Debye screening in 1/nm; 0 for no salt), buried_correction (Tinker's correction term of
    OpenMM's GBSAOBCForce, absent from the CustomGBForce models).
    """

    def __init__(self, charge, offset_radius, scaled_radius, radius, surface, *, alpha: float, beta: float,
                 gamma: float, coulomb: float, inner: float, outer: float, kappa: float = 0.0,
                 buried_correction: bool):
        super().__init__()
        charge, rho, scaled, radius = (torch.as_tensor(v, dtype=torch.float64).reshape(-1)
                                       for v in (charge, offset_radius, scaled_radius, radius))
        n_atoms = charge.numel()
        i, j = torch.triu_indices(n_atoms, n_atoms, offset=1)
        self.register_buffer("i", i.contiguous())
        self.register_buffer("j", j.contiguous())
        self.register_buffer("rho", rho.reshape(-1, 1))
        self.register_buffer("radius", radius.reshape(-1, 1))
        # Both directions of each pair's Born integral: atom i inside j's field, then j inside i's.
        self.register_buffer("rho_pair", torch.stack((rho[i], rho[j])).unsqueeze(-1))  # (2, n_pairs, 1)
        self.register_buffer("scaled_pair", torch.stack((scaled[j], scaled[i])).unsqueeze(-1))
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.kappa = float(kappa)
        self.buried_correction = bool(buried_correction)
        # Without salt g is the constant inner - outer, folded into the charge products.
        self.inner, self.outer = float(inner), float(outer)
        prefactor = -coulomb * ((self.inner - self.outer) if self.kappa == 0.0 else 1.0)
        self.register_buffer("charge_product", _column(prefactor * charge[i] * charge[j]))
        self.register_buffer("half_self_charge", _column(0.5 * prefactor * charge**2))
        self.register_buffer("surface", _column(surface))

    def _born_integral(self, r: torch.Tensor, gradient: bool):
        """HCT integrals (N, n) and their pair derivatives d term/d r (2, n_pairs, n) or None."""
        rho, s = self.rho_pair, self.scaled_pair
        inv_r = 1.0 / r
        big = torch.maximum(rho, (r - s).abs())
        lower, upper = 1.0 / big, 1.0 / (r + s)
        l2_minus_u2 = lower * lower - upper * upper
        log_ratio = torch.log(upper * big)  # log(upper / lower)
        term = (lower - upper - 0.25 * r * l2_minus_u2 + 0.5 * inv_r * log_ratio
                + 0.25 * s * s * inv_r * l2_minus_u2)
        buried = rho < s - r  # atom i inside j's scaled sphere
        if self.buried_correction:
            term = term + torch.where(buried, 2.0 * (1.0 / rho - lower), 0.0)
        reaches = rho < r + s  # j's sphere overlaps the region beyond rho_i
        term = torch.where(reaches, term, 0.0)
        integral = torch.zeros((self.rho.shape[0], r.shape[-1]), dtype=r.dtype, device=r.device)
        integral = integral.index_add(0, self.i, term[0]).index_add(0, self.j, term[1])
        if not gradient:
            return integral, None
        # The derivative through upper = 1/(r + s) vanishes at the value it takes, as does the one
        # through lower = 1/max(rho, |r - s|) except for a buried atom (lower = 1/(s - r)), where
        # it is 2 d lower/dr = 2 lower^2 and Tinker's correction cancels it (as noted in OpenMM's
        # ReferenceObc.cpp). Otherwise only the explicit r dependence remains.
        inv_r2 = inv_r * inv_r
        slope = -0.25 * l2_minus_u2 * (1.0 + s * s * inv_r2) - 0.5 * log_ratio * inv_r2
        if not self.buried_correction:
            slope = slope + torch.where(buried, 2.0 * lower * lower, 0.0)
        return integral, torch.where(reaches, slope, 0.0)

    def forward(self, X: torch.Tensor, gradient: bool = False):
        d = X[:, self.i] - X[:, self.j]
        r2 = _dot(d, d)
        inv_r = r2.rsqrt()
        integral, integral_slope = self._born_integral((r2 * inv_r).unsqueeze(0), gradient)
        psi = 0.5 * self.rho * integral
        tanh = torch.tanh(psi * (self.alpha + psi * (-self.beta + psi * self.gamma)))
        born = 1.0 / (1.0 / self.rho - tanh / self.radius)
        bb = born[self.i] * born[self.j]
        screen = torch.exp(-0.25 * r2 / bb)
        f2 = r2 + bb * screen
        inv_f = f2.rsqrt()
        inv_born = 1.0 / born
        ratio2 = (self.radius * inv_born) ** 2
        ace = self.surface * ratio2 * ratio2 * ratio2
        if self.kappa == 0.0:
            pair = self.charge_product * inv_f
            single = self.half_self_charge * inv_born
        else:  # Debye screening: g(x) = inner - outer exp(-kappa x)
            salt_pair = torch.exp(-self.kappa * (f2 * inv_f))
            g_pair = self.inner - self.outer * salt_pair
            pair = self.charge_product * g_pair * inv_f
            salt_self = torch.exp(-self.kappa * born)
            g_self = self.inner - self.outer * salt_self
            single = self.half_self_charge * g_self * inv_born
        energy = pair.sum(0) + (single + ace).sum(0)
        if not gradient:
            return energy, None
        # Pair terms: dE/df^2, then dE/dr2 and dE/d(B_i B_j) at fixed Born radii; self terms dE/dB.
        if self.kappa == 0.0:
            dE_df2 = -0.5 * self.charge_product * inv_f * inv_f * inv_f
            dE_dborn = -self.half_self_charge * inv_born * inv_born
        else:
            dE_df2 = 0.5 * self.charge_product * inv_f * inv_f * (self.outer * self.kappa * salt_pair - g_pair * inv_f)
            dE_dborn = self.half_self_charge * inv_born * (self.outer * self.kappa * salt_self - g_self * inv_born)
        dE_dr2 = dE_df2 * (1.0 - 0.25 * screen)
        dE_dbb = dE_df2 * screen * (1.0 + 0.25 * r2 / bb)
        dE_dborn = dE_dborn - 6.0 * ace * inv_born
        dE_dborn = dE_dborn.index_add(0, self.i, dE_dbb * born[self.j]).index_add(0, self.j, dE_dbb * born[self.i])
        # Chain through B(psi(I)): dB/dI = B^2 (1 - tanh^2) (alpha - 2 beta psi + 3 gamma psi^2) rho / (2 R).
        dtanh = (1.0 - tanh * tanh) * (self.alpha + psi * (-2.0 * self.beta + 3.0 * self.gamma * psi))
        dE_dintegral = dE_dborn * born * born * dtanh * 0.5 * self.rho / self.radius
        dE_dr = dE_dintegral[self.i] * integral_slope[0] + dE_dintegral[self.j] * integral_slope[1]
        g = (2.0 * dE_dr2 + dE_dr * inv_r) * d
        return energy, [(self.i, g), (self.j, -g)]


class GBSAOBC(_OBCGeneralizedBorn):
    """OpenMM GBSAOBCForce (OBC type II, no cutoff), following OpenMM's reference platform.

    Born radii: I_i = sum_{j != i} the HCT integral of atom j's scaled sphere (radius s_j rho_j)
    over r > rho_i, rho = R - 0.009 nm (with Tinker's correction when i lies inside j's sphere),
    psi_i = rho_i I_i / 2, B_i = 1 / (1/rho_i - tanh(psi - 0.8 psi^2 + 4.85 psi^3) / R_i).
    Polar energy: -(1/eps_solute - 1/eps_solvent)/(4 pi eps0) [sum_{i<j} q_i q_j / f_ij + sum_i q_i^2 / (2 B_i)],
    f_ij = sqrt(r^2 + B_i B_j exp(-r^2 / (4 B_i B_j))).
    Nonpolar (ACE) energy: sum_i 4 pi gamma_SA (R_i + 0.14 nm)^2 (R_i / B_i)^6 (OpenMM skips
    B_i <= 0, which cannot happen: |tanh| < 1 and rho_i < R_i keep B_i positive).

    Args:
        charge: (n_atoms,) charges in e.
        radius: (n_atoms,) GB radii R_i in nm.
        scale: (n_atoms,) HCT scale factors s_i.
        solute_dielectric, solvent_dielectric: relative permittivities.
        surface_area_energy: gamma_SA in kJ/mol/nm^2.
    """

    DIELECTRIC_OFFSET = 0.009  # nm
    PROBE_RADIUS = 0.14  # nm
    ALPHA, BETA, GAMMA = 1.0, 0.8, 4.85

    def __init__(self, charge, radius, scale, solute_dielectric, solvent_dielectric, surface_area_energy):
        radius, scale = (torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in (radius, scale))
        rho = radius - self.DIELECTRIC_OFFSET
        both = bool(solute_dielectric and solvent_dielectric)  # OpenMM: no polar energy if either is 0
        surface = 4.0 * math.pi * surface_area_energy * (radius + self.PROBE_RADIUS) ** 2
        super().__init__(charge, rho, rho * scale, radius, surface, alpha=self.ALPHA, beta=self.BETA,
                         gamma=self.GAMMA, coulomb=ONE_4PI_EPS0,
                         inner=1.0 / solute_dielectric if both else 0.0,
                         outer=1.0 / solvent_dielectric if both else 0.0, buried_correction=True)


class CustomGBOBC(_OBCGeneralizedBorn):
    """OpenMM's Amber OBC1 / OBC2 CustomGBForce (``openmm.app.internal.customgbforces.GBSAOBC1Force``,
    ``GBSAOBC2Force``; Amber igb=2 / igb=5), as ``AmberPrmtopFile.createSystem`` builds them, no cutoff.

    The expressions of those classes, term by term: I_i = sum_{j != i} of
    step(r + sr_j - or_i) (1/L - 1/U + (r - sr_j^2/r)(1/U^2 - 1/L^2)/4 + log(L/U)/(2r)) / 2,
    U = r + sr_j, L = max(or_i, |r - sr_j|) (no Tinker correction, unlike GBSAOBCForce);
    B_i = 1/(1/or_i - tanh(alpha psi - beta psi^2 + gamma psi^3)/R_i), psi = I_i or_i, R = or + 0.009 nm,
    with (alpha, beta, gamma) = (0.8, 0, 2.909125) for OBC1 and (1, 0.8, 4.85) for OBC2;
    energy -k/2 (1/eps_solute - exp(-kappa B_i)/eps_solvent) q_i^2/B_i per atom,
    -k (1/eps_solute - exp(-kappa f)/eps_solvent) q_i q_j / f per pair (every pair, exclusions
    included), f = sqrt(r^2 + B_i B_j exp(-r^2/(4 B_i B_j))), k = 138.935485 (the constant written
    in those expressions), and with ACE 28.3919551 (R_i + 0.14)^2 (R_i/B_i)^6 per atom.

    Args:
        charge: (n_atoms,) charges in e.
        offset_radius: (n_atoms,) offset radii or = R - 0.009 in nm (the force's ``or``).
        scaled_radius: (n_atoms,) scaled offset radii sr = screen * or in nm (the force's ``sr``).
        model: "OBC1" or "OBC2".
        solute_dielectric, solvent_dielectric: relative permittivities (> 0).
        kappa: Debye screening parameter in 1/nm (0: no salt).
        surface_area: whether the ACE surface-area term is present.
    """

    OFFSET = 0.009  # nm
    PROBE_RADIUS = 0.14  # nm
    COULOMB = 138.935485  # kJ/mol nm e^-2, as written in customgbforces.py
    ACE = 28.3919551  # kJ/mol/nm^2, 4 pi * 2.25936
    MODELS = {"OBC1": (0.8, 0.0, 2.909125), "OBC2": (1.0, 0.8, 4.85)}  # alpha, beta, gamma

    def __init__(self, charge, offset_radius, scaled_radius, model: str, solute_dielectric: float,
                 solvent_dielectric: float, kappa: float = 0.0, surface_area: bool = True):
        if model not in self.MODELS:
            raise ValueError(f"model must be one of {sorted(self.MODELS)}, got {model!r}")
        if not (solute_dielectric > 0 and solvent_dielectric > 0):
            raise ValueError("solute_dielectric and solvent_dielectric must be positive, got "
                             f"{solute_dielectric} and {solvent_dielectric}")
        if not kappa >= 0:
            raise ValueError(f"kappa must be >= 0 (1/nm), got {kappa}")
        rho = torch.as_tensor(offset_radius, dtype=torch.float64).reshape(-1)
        radius = rho + self.OFFSET
        surface = self.ACE * (radius + self.PROBE_RADIUS) ** 2 if surface_area else torch.zeros_like(radius)
        alpha, beta, gamma = self.MODELS[model]
        super().__init__(charge, rho, scaled_radius, radius, surface, alpha=alpha, beta=beta, gamma=gamma,
                         coulomb=self.COULOMB, inner=1.0 / solute_dielectric, outer=1.0 / solvent_dielectric,
                         kappa=kappa, buried_correction=False)
        self.model = model
