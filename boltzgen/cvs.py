"""Collective variables, basins and free energies declared with a molecule (its system YAML).

What a molecule's interesting coordinates are is a fact about the molecule, so it lives next to it:
a system YAML (or a molecule file shared by the set-ups of one molecule, see ``systems/README.md``)
may declare

    collective_variables:          # dihedral angles, each by four atoms
      phi: [ACE1-C, ALA2-N, ALA2-CA, ALA2-C]
      psi: [ALA2-N, ALA2-CA, ALA2-C, NME3-N]
    basins_deg:                    # populations reported; arcs [low, high) in degrees per CV
      alpha_R: {phi: [-180, 0], psi: [-100, 0]}
      alpha_L/C7ax: {phi: [0, 180]}
    states_deg:                    # more regions, used only by free_energies
      phi>0: {phi: [0, 180]}
      phi<0: {phi: [-180, 0]}
    free_energies:                 # dF = F(state) - F(reference) = -ln(P(state) / P(reference)), kT
      phi_positive: {state: phi>0, reference: phi<0}
    transition_cores_deg:          # optional MD diagnostic: transitions between two cores of one CV
      phi: {phi<0: [-180, -28.6], phi>0: [28.6, 114.6]}

**Atoms** are named ``RESNAME<resnum>-ATOM`` (``ALA2-CA``: atom CA of residue ALA number 2, the
residue number as in the structure file, PDB resSeq), ``<resnum>-ATOM`` (``2-CA``), ``RESNAME-ATOM``
(``ALA-CA``, when one residue has that name) or ``ATOM`` alone (``C1``, when one atom of the molecule
has that name); digits at the end of the residue part are its number. An integer is a 0-based atom
index. A dihedral follows the IUPAC/mdtraj sign convention (:mod:`boltzgen.analysis.dihedrals`),
values in (-180, 180] degrees (radians inside the package).

**Regions** (basins and states) are products of arcs: each ``cv: [low, high]`` is the half-open arc
[low, high) in degrees with -180 <= low, high <= 180 and low != high; when low > high it runs through
180 ((120, -120) is |phi| > 120 deg); [-180, 180] is the whole circle, as is a CV the region does not
name. **Free energies** name two regions (basins or states) by their names; the key names the result
(``phi_positive`` -> ``delta_f_phi_positive_kT`` in summaries). **Transition cores** are closed
intervals [low, high] (low < high, no wrapping) of one CV.

Degrees are read here and turned into radians once; every class below holds radians. Nothing here
evaluates a CV on positions: :mod:`boltzgen.analysis.runs` does (data flows one way).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

#: The keys a system YAML or a molecule file may use to declare collective variables.
CV_KEYS = ("collective_variables", "basins_deg", "states_deg", "free_energies", "transition_cores_deg")

_ATOM_REF = re.compile(r"^(?:(?P<res>[A-Za-z][A-Za-z0-9']*?)?(?P<num>\d+)?-)?(?P<atom>[^-\s]+)$")
_TWO_PI = 2.0 * math.pi


def in_arc(a: np.ndarray, low: float, high: float) -> np.ndarray:
    """Mask of angles (radians, any shape) on the half-open arc [low, high), through +-pi when low > high.

    Angles are first mapped into [-pi, pi) (pi counts as -pi); values already there are untouched.
    """
    inside = (a >= -math.pi) & (a < math.pi)
    a = np.where(inside, a, -math.pi + np.mod(a + math.pi, _TWO_PI))
    return (a >= low) & (a < high) if low < high else (a >= low) | (a < high)


# ---- declarations (radians) -------------------------------------------------------------------
@dataclass(frozen=True)
class Dihedral:
    """A dihedral-angle collective variable.

    Attributes:
        name: its name (e.g. "phi").
        atoms: four atom references (strings such as "ALA2-CA", or 0-based int indices), see the module
            docstring; resolved against a topology by :func:`atom_indices`.
    """

    name: str
    atoms: tuple

    def __post_init__(self):
        atoms = tuple(self.atoms)
        if len(atoms) != 4:
            raise ValueError(f"collective variable {self.name!r}: a dihedral needs four atoms, got {len(atoms)}")
        for a in atoms:
            if isinstance(a, bool) or not isinstance(a, (int, str)):
                raise ValueError(f"collective variable {self.name!r}: atom {a!r} must be a name such as ALA2-CA "
                                 "or a 0-based atom index")
            if isinstance(a, int) and a < 0:
                raise ValueError(f"collective variable {self.name!r}: atom index {a} must be >= 0")
            if isinstance(a, str) and not _ATOM_REF.match(a):
                raise ValueError(f"collective variable {self.name!r}: atom {a!r} is not RESNAME<resnum>-ATOM, "
                                 "<resnum>-ATOM, RESNAME-ATOM or ATOM")
        object.__setattr__(self, "atoms", atoms)


@dataclass(frozen=True)
class Region:
    """A named region of CV space: the product of one half-open arc [low, high) per named CV (radians).

    Attributes:
        name: the region's name (a basin or state name).
        arcs: ((cv name, low, high), ...) in radians, -pi <= low, high <= pi, low != high; low > high
            wraps through pi. CVs not named are unrestricted.
    """

    name: str
    arcs: tuple

    def __post_init__(self):
        arcs = []
        for item in self.arcs:
            try:
                cv, low, high = item
                low, high = float(low), float(high)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"region {self.name!r}: each arc must be (cv, low, high) in radians, "
                                 f"got {item!r}") from exc
            if not (-math.pi <= low <= math.pi and -math.pi <= high <= math.pi and low != high):
                raise ValueError(f"region {self.name!r}: arc of {cv!r} must have low and high in [-180, 180] deg "
                                 f"and low != high (low > high wraps through 180), got [{math.degrees(low):.6g}, "
                                 f"{math.degrees(high):.6g}] deg")
            arcs.append((str(cv), low, high))
        if len({a[0] for a in arcs}) != len(arcs):
            raise ValueError(f"region {self.name!r} names a collective variable twice")
        object.__setattr__(self, "arcs", tuple(arcs))

    @property
    def cvs(self) -> tuple[str, ...]:
        return tuple(a[0] for a in self.arcs)

    def contains(self, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """Boolean mask (n,): which samples lie in the region, from CV values {name: (n,) radians}.

        NaN values lie in no region; a region that restricts nothing holds every sample.
        """
        if not self.arcs:
            n = len(next(iter(values.values()))) if values else 0
            return np.ones(n, dtype=bool)
        mask = None
        for cv, low, high in self.arcs:
            inside = in_arc(np.asarray(values[cv], dtype=np.float64), low, high)
            mask = inside if mask is None else mask & inside
        return mask

    def arcs_rad(self, cvs=None) -> dict[str, list[float]]:
        """{cv: [low, high]} in radians, for JSON; with ``cvs``, every one of them (whole circle if unnamed)."""
        named = {cv: [low, high] for cv, low, high in self.arcs}
        if cvs is None:
            return named
        return {cv: named.get(cv, [-math.pi, math.pi]) for cv in cvs}


@dataclass(frozen=True)
class FreeEnergy:
    """dF = F(state) - F(reference) = -ln(P(state) / P(reference)) in kT, reported as ``delta_f_<key>_kT``."""

    key: str
    state: str
    reference: str


@dataclass(frozen=True)
class TransitionCores:
    """Two closed intervals [low, high] (radians, low < high) of one CV; an MD run's transitions are counted
    between them (frames outside both keep the last core: no recrossing noise)."""

    cv: str
    cores: tuple  # ((name, low, high), (name, low, high))


@dataclass(frozen=True)
class MoleculeCVs:
    """Everything a molecule declares about its collective variables (empty: none declared).

    Attributes:
        dihedrals: the CVs, in declaration order.
        basins: regions whose populations are reported.
        states: further regions, used by free energies only.
        free_energies: the differences to report.
        transitions: transition cores for MD runs, or None.
        source: where the declaration was read (a file path), or None.
    """

    dihedrals: tuple = ()
    basins: tuple = ()
    states: tuple = ()
    free_energies: tuple = ()
    transitions: TransitionCores | None = None
    source: str | None = field(default=None, compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        """The CV names, in declaration order."""
        return tuple(d.name for d in self.dihedrals)

    @property
    def is_empty(self) -> bool:
        return not self.dihedrals

    def region(self, name: str) -> Region:
        """The basin or state called ``name``."""
        for r in self.basins + self.states:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict:
        """The declaration as JSON-ready values (angles in radians, as in the figures' ``basins_rad``)."""
        return {
            "collective_variables": {d.name: list(d.atoms) for d in self.dihedrals},
            "basins_rad": {b.name: b.arcs_rad(self.names) for b in self.basins},
            "states_rad": {s.name: s.arcs_rad(self.names) for s in self.states},
            "free_energies": {f.key: {"state": f.state, "reference": f.reference} for f in self.free_energies},
            "source": self.source,
        }


# ---- reading (degrees -> radians) ---------------------------------------------------------------
def _mapping(value, where: str, what: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: {what} must be a mapping, got {type(value).__name__}")
    return value


def _arc_deg(value, where: str, label: str) -> tuple[float, float]:
    try:
        low, high = value
        low, high = float(low), float(high)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {label} must be [low, high] in degrees, got {value!r}") from exc
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{where}: {label} must be finite degrees, got {value!r}")
    return low, high


def _regions(data, where: str, key: str, cv_names: tuple[str, ...]) -> tuple[Region, ...]:
    regions = []
    for name, arcs in _mapping(data, where, key).items():
        arcs = _mapping(arcs if arcs is not None else {}, where, f"{key} {name!r}")
        parsed = []
        for cv, value in arcs.items():
            if cv not in cv_names:
                raise ValueError(f"{where}: {key} {name!r} uses {cv!r}, which is no declared collective variable "
                                 f"(declared: {', '.join(cv_names) or 'none'})")
            low, high = _arc_deg(value, where, f"{key} {name!r} {cv}")
            parsed.append((str(cv), math.radians(low), math.radians(high)))
        try:
            regions.append(Region(str(name), tuple(parsed)))
        except ValueError as exc:
            raise ValueError(f"{where}: {key}: {exc}") from exc
    return tuple(regions)


def read_cvs(data: Mapping, where: str) -> MoleculeCVs:
    """The :class:`MoleculeCVs` declared by the :data:`CV_KEYS` of ``data`` (a parsed YAML mapping).

    Args:
        data: a mapping; keys other than :data:`CV_KEYS` are ignored.
        where: the file it came from (named in every error).
    Raises:
        ValueError: naming the file and the entry, for any malformed or inconsistent declaration.
    """
    dihedrals = []
    for name, atoms in _mapping(data.get("collective_variables") or {}, where, "collective_variables").items():
        if not isinstance(atoms, (list, tuple)):
            raise ValueError(f"{where}: collective variable {name!r} must be a list of four atoms "
                             f"(e.g. [ACE1-C, ALA2-N, ALA2-CA, ALA2-C]), got {atoms!r}")
        try:
            dihedrals.append(Dihedral(str(name), tuple(atoms)))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
    names = tuple(d.name for d in dihedrals)
    basins = _regions(data.get("basins_deg") or {}, where, "basins_deg", names)
    states = _regions(data.get("states_deg") or {}, where, "states_deg", names)
    known = [r.name for r in basins + states]
    if len(set(known)) != len(known):
        twice = sorted({n for n in known if known.count(n) > 1})
        raise ValueError(f"{where}: {', '.join(twice)} named more than once among basins_deg and states_deg")
    free_energies = []
    for key, pair in _mapping(data.get("free_energies") or {}, where, "free_energies").items():
        if not (isinstance(pair, Mapping) and set(pair) == {"state", "reference"}):
            raise ValueError(f"{where}: free_energies {key!r} must be {{state: REGION, reference: REGION}}, "
                             f"got {pair!r}")
        for role in ("state", "reference"):
            if pair[role] not in known:
                raise ValueError(f"{where}: free_energies {key!r}: {role} {pair[role]!r} is no basin or state "
                                 f"(known: {', '.join(known) or 'none'})")
        if not re.fullmatch(r"[A-Za-z0-9_]+", str(key)):
            raise ValueError(f"{where}: free_energies key {key!r} must be letters, digits and _ (it names "
                             "delta_f_<key>_kT)")
        free_energies.append(FreeEnergy(str(key), str(pair["state"]), str(pair["reference"])))
    transitions = None
    cores = data.get("transition_cores_deg")
    if cores:
        cores = _mapping(cores, where, "transition_cores_deg")
        if len(cores) != 1:
            raise ValueError(f"{where}: transition_cores_deg must name one collective variable, got {list(cores)}")
        (cv, pair), = cores.items()
        if cv not in names:
            raise ValueError(f"{where}: transition_cores_deg uses {cv!r}, which is no declared collective variable")
        pair = _mapping(pair, where, f"transition_cores_deg {cv}")
        if len(pair) != 2:
            raise ValueError(f"{where}: transition_cores_deg {cv} must hold two cores, got {len(pair)}")
        parsed = []
        for core, value in pair.items():
            low, high = _arc_deg(value, where, f"transition core {core!r}")
            if not -180.0 <= low < high <= 180.0:
                raise ValueError(f"{where}: transition core {core!r} must be [low, high] with -180 <= low < high "
                                 f"<= 180 degrees, got {value!r}")
            parsed.append((str(core), math.radians(low), math.radians(high)))
        transitions = TransitionCores(str(cv), tuple(parsed))
    if not dihedrals and (basins or states or free_energies):
        raise ValueError(f"{where}: basins, states and free energies need collective_variables")
    return MoleculeCVs(tuple(dihedrals), basins, states, tuple(free_energies), transitions, source=where)


# ---- resolving atoms against a topology -------------------------------------------------------
def _find_atom(top, ref, cv: str) -> int:
    if isinstance(ref, int):
        if ref >= top.n_atoms:
            raise ValueError(f"collective variable {cv!r}: atom index {ref} is out of range (the molecule has "
                             f"{top.n_atoms} atoms)")
        return ref
    m = _ATOM_REF.match(ref)
    res, num, atom = m.group("res"), m.group("num"), m.group("atom")
    found = [a.index for a in top.atoms if a.name == atom and (res is None or a.residue.name == res)
             and (num is None or a.residue.resSeq == int(num))]
    if len(found) == 1:
        return found[0]
    residues = ", ".join(f"{r.name}{r.resSeq}" for r in list(top.residues)[:12])
    if not found:
        raise ValueError(f"collective variable {cv!r}: no atom {ref!r} in the molecule (residues: {residues})")
    raise ValueError(f"collective variable {cv!r}: atom {ref!r} is ambiguous ({len(found)} atoms match); add the "
                     f"residue name and number, e.g. {top.atom(found[0]).residue.name}"
                     f"{top.atom(found[0]).residue.resSeq}-{atom}")


def atom_indices(cvs: MoleculeCVs, topology) -> dict[str, np.ndarray]:
    """The atoms of every declared CV in ``topology``: {name: int64 array (4,)} of 0-based indices.

    Args:
        cvs: the declaration.
        topology: an openmm.app.Topology or mdtraj.Topology (or an object with ``.topology``).
    Raises:
        ValueError: naming the CV and the atom that matches no atom, or several.
    """
    from .coordinates import mdtraj_topology

    top = mdtraj_topology(topology)
    out = {}
    for d in cvs.dihedrals:
        idx = np.array([_find_atom(top, ref, d.name) for ref in d.atoms], dtype=np.int64)
        if len(set(idx.tolist())) != 4:
            raise ValueError(f"collective variable {d.name!r}: its atoms {list(d.atoms)} are not four distinct atoms")
        out[d.name] = idx
    return out


__all__ = ["CV_KEYS", "Dihedral", "FreeEnergy", "MoleculeCVs", "Region", "TransitionCores", "atom_indices",
           "in_arc", "read_cvs"]


def backbone_atoms(topology) -> dict[str, np.ndarray]:
    """Atom quadruples of the backbone dihedrals phi and psi, found by mdtraj.

    Only residues that have both angles are kept (phi needs the previous residue's C, psi the
    next residue's N), so row i of "phi" and row i of "psi" belong to the same residue, in
    residue order. For alanine dipeptide (ACE-ALA-NME) that is one residue:
    phi = C(ACE) N CA C, psi = N CA C N(NME).

    Args:
        topology: an openmm.app.Topology or mdtraj.Topology (or an object with a ``.topology``
            attribute holding one, such as a boltzgen target or an mdtraj Trajectory).

    Returns:
        {"phi": int64 array (k, 4), "psi": int64 array (k, 4)} of atom indices.

    Raises:
        ValueError: when no residue has both a phi and a psi dihedral.
    """
    import mdtraj

    from .coordinates import mdtraj_topology

    top = mdtraj_topology(topology)
    # mdtraj finds the quadruples from names and residue order; the coordinates are irrelevant
    frame = mdtraj.Trajectory(np.zeros((1, top.n_atoms, 3)), top)
    phi, _ = mdtraj.compute_phi(frame)
    psi, _ = mdtraj.compute_psi(frame)
    # pair the two by their shared CA atom (atom 2 of phi, atom 1 of psi)
    psi_by_ca = {int(row[1]): row for row in psi}
    pairs = [(row, psi_by_ca[int(row[2])]) for row in phi if int(row[2]) in psi_by_ca]
    if not pairs:
        raise ValueError(f"topology has no residue with both phi and psi backbone dihedrals "
                         f"({len(phi)} phi, {len(psi)} psi found); phi/psi need a peptide backbone "
                         f"(N, CA, C atoms) with a neighbouring residue on each side")
    return {"phi": np.array([p for p, _ in pairs], dtype=np.int64),
            "psi": np.array([s for _, s in pairs], dtype=np.int64)}
