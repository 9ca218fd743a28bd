"""Molecular systems: named set-ups under ``systems/`` and custom ones from files.

A *named system* is a YAML file in a folder of the top-level ``systems/`` directory, next to the
structure (and parameter) files it names; see ``systems/README.md``. Its keys are the keyword
arguments of :func:`from_files`, with file paths relative to the YAML's folder.

:func:`from_files` builds an :class:`~boltzgen.targets.openmm.OpenMMTarget` from

* a PDB/PDBx structure plus OpenMM force field XMLs (``amber14-all.xml``, ``charmm36.xml``,
  ``implicit/gbn2.xml``, or your own files),
* an Amber prmtop plus coordinates (inpcrd/rst7/crd or PDB), optionally with GB implicit solvent,
* a structure plus a serialized OpenMM System XML (``system=``).

Every set-up is built the way a Boltzmann generator needs it: no cutoff (``NoCutoff``), no
constraints, flexible water, and no ``CMMotionRemover`` (it is not an energy term: it only alters
MD velocities, and a free centre of mass is harmless for an isolated molecule).
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

import openmm
import openmm.app as app
import yaml

from .cvs import CV_KEYS, MoleculeCVs, read_cvs
from .targets.openmm import OpenMMTarget


def _default_systems_dir() -> Path:
    """The named systems: installed with the package (boltzgen/named_systems, a copy of the
    repository's systems/ folder), or, in a source checkout or editable install, systems/ itself."""
    package = Path(__file__).resolve().parent
    installed = package / "named_systems"
    return installed if installed.is_dir() else package.parent / "systems"


DEFAULT_SYSTEMS_DIR = _default_systems_dir()

_IMPLICIT_SOLVENT = {"HCT": app.HCT, "OBC1": app.OBC1, "OBC2": app.OBC2, "GBn": app.GBn, "GBn2": app.GBn2}
_PDB_SUFFIXES = {".pdb", ".ent"}
_PDBX_SUFFIXES = {".cif", ".pdbx", ".mmcif"}
_PRMTOP_SUFFIXES = {".prmtop", ".parm7", ".top"}
# Arguments a caller may not set through system_kwargs: they define what boltzgen samples.
_FIXED_SYSTEM_ARGS = {"nonbondedMethod", "constraints", "rigidWater", "removeCMMotion", "implicitSolvent",
                      "residueTemplates"}
_SPEC_KEYS = {"description", "structure", "forcefield", "coordinates", "system", "temperature",
              "implicit_solvent", "residue_templates", "system_kwargs", "model", "molecule", *CV_KEYS}
#: A molecule file (``<molecule>.molecule.yaml``) holds what the set-ups of one molecule share: its
#: collective variables, basins and free energies (boltzgen.cvs). It is no system of its own.
MOLECULE_SUFFIX = ".molecule.yaml"


# ---- named systems ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SystemSpec:
    """A named system: its YAML file, description and the :func:`from_files` arguments it holds.

    ``model`` is the trained model file shipped with it (``boltzgen run``), or None; ``cvs`` the
    collective variables, basins and free energies it declares (itself or through its ``molecule``
    file; empty when none).
    """

    name: str
    description: str
    path: Path
    options: dict
    model: Path | None = None
    cvs: MoleculeCVs = MoleculeCVs()


def _read_yaml(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        problem = " ".join(str(exc).split())  # YAML errors span several lines
        raise ValueError(f"{path}: not a readable {what} ({type(exc).__name__}: {problem})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of {what} keys, got {type(data).__name__}")
    return data


def _read_molecule(path: Path, named_by: Path) -> dict:
    """The collective-variable keys of a molecule file (named by a system YAML's ``molecule`` key)."""
    if not path.is_file():
        raise FileNotFoundError(f"molecule file not found: {path} (named by {named_by})")
    data = _read_yaml(path, "molecule file")
    unknown = set(data) - {"description", *CV_KEYS}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; a molecule file holds {', '.join(CV_KEYS)} "
                         "(and a description)")
    return {k: v for k, v in data.items() if k in CV_KEYS}


def _read_spec(path: Path) -> SystemSpec:
    data = _read_yaml(path, "system YAML")
    unknown = set(data) - _SPEC_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(_SPEC_KEYS)}")
    if "structure" not in data:
        raise ValueError(f"{path}: missing the 'structure' key (the structure file, relative to this folder)")
    options = dict(data)
    description = str(options.pop("description", ""))
    folder = path.parent
    model = options.pop("model", None)
    model = folder / model if model is not None else None
    declared = {k: options.pop(k) for k in CV_KEYS if k in options}
    cv_source = path
    if options.get("molecule") is not None:
        molecule = folder / options.pop("molecule")
        shared = _read_molecule(molecule, path)
        both = sorted(set(shared) & set(declared))
        if both:
            raise ValueError(f"{path}: {', '.join(both)} given both here and in its molecule file {molecule}; "
                             "declare each in one place")
        declared, cv_source = {**shared, **declared}, (molecule if not declared else path)
    options.pop("molecule", None)
    cvs = read_cvs(declared, str(cv_source))
    for key in ("structure", "coordinates", "system"):
        if options.get(key) is not None:
            options[key] = folder / options[key]
    if options.get("forcefield") is not None:
        ffs = [options["forcefield"]] if isinstance(options["forcefield"], str) else options["forcefield"]
        # A force field file next to the YAML wins over an OpenMM built-in of the same name.
        options["forcefield"] = [str(folder / f) if (folder / f).exists() else f for f in ffs]
    return SystemSpec(name=path.stem, description=description, path=path, options=options, model=model, cvs=cvs)


def specs(systems_dir: str | Path | None = None) -> dict[str, SystemSpec]:
    """All named systems in ``systems_dir`` (default: the repository's ``systems/``), by name."""
    root = Path(systems_dir) if systems_dir is not None else DEFAULT_SYSTEMS_DIR
    found = {}
    for path in sorted(root.glob("*/*.yaml")):
        if path.name.endswith(MOLECULE_SUFFIX):  # shared by the set-ups of a molecule, not a system
            continue
        spec = _read_spec(path)
        if spec.name in found:
            raise ValueError(f"two systems are named {spec.name!r}: {found[spec.name].path} and {path}")
        found[spec.name] = spec
    return found


def shipped_model(name: str, systems_dir: str | Path | None = None) -> Path:
    """The model file shipped with the named system ``name`` (ValueError if it has none)."""
    known = specs(systems_dir)
    if name not in known:
        raise ValueError(f"unknown system {name!r}; named systems: {', '.join(sorted(known))}")
    spec = known[name]
    if spec.model is None:
        with_models = sorted(n for n, s in known.items() if s.model is not None)
        raise ValueError(f"system {name!r} ships no trained model (systems with one: {', '.join(with_models) or 'none'}); "
                         "train one with `boltzgen train` and pass it with --model")
    if not spec.model.is_file():
        raise ValueError(f"the model file {spec.model} named by {spec.path} is missing")
    return spec.model


#: The model file that ``boltzgen train --out DIR`` writes in DIR.
TRAINED_MODEL_FILE = "model.pt"


def resolve_model(model, fallbacks=(), systems_dir: str | Path | None = None, flag: str = "--model") -> Path:
    """A model file from a ``--model`` value: a file, a ``boltzgen train`` folder, or a named system.

    Args:
        model: a path to a model file, a folder written by ``boltzgen train --out DIR`` (its
            ``model.pt`` is used), a system name (its shipped model), or None (then the shipped
            model of the first of ``fallbacks`` that has one).
        fallbacks: system names (or YAML paths) to take a shipped model from when ``model`` is None.
        flag: the option the value came from, named in the errors (e.g. ``--init`` of ``train``).
    Raises:
        ValueError: naming ``flag``, if it is neither a file nor a system that ships a model.
    """
    known = specs(systems_dir)
    if model is None:
        for name in fallbacks:
            if name in known and known[name].model is not None:
                return shipped_model(name, systems_dir)
        raise ValueError(f"{flag}: none of {', '.join(map(str, fallbacks))} ships a model; pass a model file "
                         "written by `boltzgen train`")
    path = Path(str(model))
    if path.is_file():
        return path
    if path.is_dir() and (path / TRAINED_MODEL_FILE).is_file():
        return path / TRAINED_MODEL_FILE
    if str(model) in known:
        return shipped_model(str(model), systems_dir)
    if path.is_dir():
        raise FileNotFoundError(f"{flag} {path}: the folder holds no {TRAINED_MODEL_FILE} (`boltzgen train --out DIR` "
                                f"writes DIR/{TRAINED_MODEL_FILE})")
    if path.suffix or len(path.parts) > 1:  # meant as a file
        raise FileNotFoundError(f"model file not found: {path}")
    raise ValueError(f"{flag} {model}: neither a model file nor a named system (named systems with a model: "
                     f"{', '.join(sorted(n for n, s in known.items() if s.model is not None)) or 'none'})")


def spec(name: str, systems_dir: str | Path | None = None) -> SystemSpec:
    """The :class:`SystemSpec` of a named system, or of a system YAML given by its path."""
    if str(name).endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"system file not found: {path}")
        return _read_spec(path)
    known = specs(systems_dir)
    if name not in known:
        close = difflib.get_close_matches(str(name), list(known), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown system {name!r}; named systems: {', '.join(sorted(known))}.{hint}")
    return known[name]


def collective_variables(name: str, systems_dir: str | Path | None = None) -> MoleculeCVs:
    """The collective variables, basins and free energies a system declares (see :mod:`boltzgen.cvs`).

    Args:
        name: a named system or the path of a system YAML.
    Returns:
        its :class:`~boltzgen.cvs.MoleculeCVs` (empty when it declares none).
    """
    return spec(name, systems_dir).cvs


def recorded_collective_variables(name, systems_dir: str | Path | None = None) -> MoleculeCVs | None:
    """The declaration of the system a run folder recorded (``name``: a system name or YAML path), or None
    when ``name`` is no named system and no existing YAML (then nothing is known about its CVs)."""
    if not name:
        return None
    name = str(name)
    if name.endswith((".yaml", ".yml")):
        return collective_variables(name) if Path(name).is_file() else None
    known = specs(systems_dir)
    return known[name].cvs if name in known else None


def names(systems_dir: str | Path | None = None) -> list[str]:
    """Names of the named systems, sorted."""
    return sorted(specs(systems_dir))


def load(name: str, *, systems_dir: str | Path | None = None, **overrides) -> OpenMMTarget:
    """Build the target of a named system (or of a system YAML given by its path).

    Args:
        name: a name from :func:`names`, e.g. "alanine-dipeptide", or a path to a ``.yaml``.
        systems_dir: where the named systems live (default: the repository's ``systems/``).
        **overrides: :func:`from_files` keyword arguments that replace the YAML's, e.g.
            ``temperature=350.0``, ``n_workers=2``, ``platform="CPU"``.
    """
    if Path(str(name)).suffix.lower() in _PDB_SUFFIXES | _PDBX_SUFFIXES | _PRMTOP_SUFFIXES:
        raise ValueError(
            f"{name} is a structure file, not a system: a system also names its force field. Write a system "
            f"YAML (e.g. 'structure: {Path(str(name)).name}' and 'forcefield: [amber14-all.xml]', see "
            "systems/README.md) and pass the YAML's path, or call boltzgen.systems.from_files from Python")
    found = spec(name, systems_dir)
    options = {**found.options, "name": found.name, **overrides}
    return from_files(**options)


# ---- custom systems -----------------------------------------------------------------------------
def from_files(structure, forcefield=None, *, coordinates=None, system=None, temperature: float = 300.0,
               implicit_solvent: str | None = None, residue_templates: dict | None = None,
               system_kwargs: dict | None = None, name: str | None = None, n_workers: int = 0,
               platform: str = "auto") -> OpenMMTarget:
    """Build an :class:`OpenMMTarget` from structure and force field files.

    Three ways in, chosen by the arguments:

    * ``from_files("mol.pdb", ["amber14-all.xml", "implicit/gbn2.xml"])``: a PDB or PDBx/mmCIF
      structure and OpenMM force field XMLs (built-in names or paths).
    * ``from_files("mol.prmtop", coordinates="mol.inpcrd", implicit_solvent="OBC1")``: an Amber
      topology; coordinates from an inpcrd/rst7/crd or a PDB; ``implicit_solvent`` one of
      HCT, OBC1, OBC2, GBn, GBn2 (OpenMM's Amber GB models) or None for vacuum.
    * ``from_files("mol.pdb", system="system.xml")``: a serialized OpenMM System; the structure
      gives topology and positions. Its CMMotionRemover, if any, is dropped.

    Args:
        structure: path of the structure (.pdb/.cif) or Amber topology (.prmtop/.parm7).
        forcefield: OpenMM force field XML names/paths (a string or a list), PDB route only.
        coordinates: positions for a prmtop (.inpcrd/.rst7/.crd or .pdb).
        system: path of a serialized OpenMM System XML.
        temperature: temperature in K.
        implicit_solvent: Amber GB model for the prmtop route.
        residue_templates: choose force field templates where OpenMM finds several, as
            ``{residue: template_name}`` where ``residue`` is a residue index (int, 0-based), a
            residue name (str, every residue of that name), or a tuple of those for a template
            that covers several bonded residues, e.g. ``{("ACE", "ALA", "NME"): "ALAD"}`` for
            charmm36's capped alanine. Passed to OpenMM's ``createSystem(residueTemplates=...)``;
            for a tuple, its (consecutive, bonded) residues are first merged into one residue of a
            copy of the topology (the target keeps the original topology; atom order is unchanged).
        system_kwargs: more ``createSystem`` keyword arguments (e.g. ``{"soluteDielectric": 2.0}``);
            cutoff, constraints, water rigidity and CM motion removal are fixed.
        name: the target's name (default: the structure file's stem).
        n_workers, platform: passed to :class:`OpenMMTarget`.

    Raises:
        FileNotFoundError: a file that does not exist (named in the message).
        ValueError: a residue the force field has no template for, ambiguous templates (the
            message lists them and shows ``residue_templates``), inconsistent arguments.
    """
    structure = _existing(structure, "structure")
    suffix = structure.suffix.lower()
    system_kwargs = dict(system_kwargs or {})
    fixed = _FIXED_SYSTEM_ARGS & set(system_kwargs)
    if fixed:
        raise ValueError(f"system_kwargs may not set {sorted(fixed)}: boltzgen fixes them (or use the named argument)")
    if system is not None and (forcefield is not None or implicit_solvent is not None):
        raise ValueError("give either system= (a serialized System) or forcefield=/implicit_solvent=, not both")

    if suffix in _PRMTOP_SUFFIXES:
        if forcefield is not None:
            raise ValueError("a prmtop carries its own force field; do not pass forcefield=")
        if residue_templates:
            raise ValueError("residue_templates applies to force field XMLs, not to a prmtop")
        if coordinates is None:
            raise ValueError("a prmtop holds no coordinates; pass coordinates= (an .inpcrd/.rst7/.crd or .pdb file)")
        prmtop = _read_file(structure, "structure", "an Amber prmtop", app.AmberPrmtopFile)
        topology, positions = prmtop.topology, _read_coordinates(_existing(coordinates, "coordinates"))
        omm_system = None if system is not None else prmtop.createSystem(
            nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False, removeCMMotion=False,
            implicitSolvent=_implicit_solvent(implicit_solvent), **system_kwargs)
    elif suffix in _PDB_SUFFIXES | _PDBX_SUFFIXES:
        if coordinates is not None:
            raise ValueError("coordinates= is for a prmtop; a PDB/PDBx structure holds its own positions")
        if implicit_solvent is not None:
            raise ValueError("implicit_solvent= is for a prmtop; with force field XMLs add e.g. 'implicit/obc2.xml'")
        if suffix in _PDB_SUFFIXES:
            pdb = _read_pdb(structure, "structure")
        else:
            pdb = _read_file(structure, "structure", "a PDBx/mmCIF", app.PDBxFile)
        topology, positions = pdb.topology, pdb.positions
        if topology.getNumAtoms() == 0:
            raise ValueError(f"structure {structure}: holds no atoms (no ATOM/HETATM records read); "
                             "is it a structure file?")
        omm_system = None
        if system is None:
            if not forcefield:
                raise ValueError("forcefield= is required with a PDB structure, e.g. ['amber14-all.xml'] "
                                 "(or pass a serialized System with system=)")
            omm_system = _create_from_xmls(topology, forcefield, residue_templates, system_kwargs)
    else:
        raise ValueError(f"structure {structure.name!r}: unsupported file type {suffix!r}; use a PDB (.pdb), "
                         "PDBx/mmCIF (.cif) or Amber topology (.prmtop/.parm7)")

    if system is not None:
        omm_system = _read_system_xml(_existing(system, "system"), topology)
    return OpenMMTarget(omm_system, topology, positions, temperature, name=name or structure.stem,
                        n_workers=n_workers, platform=platform)


def _existing(path, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {p}")
    return p


def _implicit_solvent(model: str | None):
    if model is None:
        return None
    if model not in _IMPLICIT_SOLVENT:
        raise ValueError(f"implicit_solvent must be None or one of {list(_IMPLICIT_SOLVENT)}, got {model!r}")
    return _IMPLICIT_SOLVENT[model]


def _read_file(path: Path, what: str, kind: str, reader):
    """``reader(str(path))``, with any failure (OpenMM raises IndexError, UnicodeDecodeError,
    ValueError, ... on empty or garbled files) turned into one ValueError naming the file."""
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path}: the file is empty (expected {kind} file)")
    try:
        return reader(str(path))
    except Exception as exc:  # noqa: BLE001 - every reader failure means the same to the user
        detail = " ".join(str(exc).split())[:200]
        raise ValueError(f"{what} {path}: cannot be read as {kind} file ({type(exc).__name__}"
                         f"{': ' + detail if detail else ''})") from exc


def _read_pdb(path: Path, what: str) -> app.PDBFile:
    """A PDB file, refusing (with the path) files that hold no atom records."""
    if path.stat().st_size and not any(line.startswith(("ATOM", "HETATM"))
                                       for line in path.read_text(errors="replace").splitlines()):
        raise ValueError(f"{what} {path}: not a PDB file (no ATOM or HETATM records)")
    return _read_file(path, what, "a PDB", app.PDBFile)


def _read_coordinates(path: Path):
    if path.suffix.lower() in _PDB_SUFFIXES:
        return _read_pdb(path, "coordinates").positions
    return _read_file(path, "coordinates", "an Amber inpcrd/rst7", app.AmberInpcrdFile).positions


def _read_system_xml(path: Path, topology: app.Topology) -> openmm.System:
    text = path.read_text()
    if "<ForceField" in text[:2000]:
        raise ValueError(f"{path.name} is a force field XML, not a serialized System; pass it as forcefield=")
    try:
        omm_system = openmm.XmlSerializer.deserialize(text)
    except Exception as exc:
        raise ValueError(f"{path.name} is not a serialized OpenMM System: {exc}") from exc
    if not isinstance(omm_system, openmm.System):
        raise ValueError(f"{path.name} holds a serialized {type(omm_system).__name__}, not a System")
    if omm_system.getNumParticles() != topology.getNumAtoms():
        raise ValueError(f"{path.name} has {omm_system.getNumParticles()} particles but the structure has "
                         f"{topology.getNumAtoms()} atoms")
    for i in reversed(range(omm_system.getNumForces())):
        if isinstance(omm_system.getForce(i), openmm.CMMotionRemover):
            omm_system.removeForce(i)
    return omm_system


# ---- force field XMLs: templates and their errors -------------------------------------------------
def _load_forcefield(forcefield) -> tuple[app.ForceField, list[str]]:
    files = [forcefield] if isinstance(forcefield, (str, Path)) else list(forcefield)
    files = [str(f) for f in files]
    for f in files:
        if Path(f).is_file() and "<System" in Path(f).read_text()[:2000]:
            raise ValueError(f"{f} is a serialized OpenMM System, not a force field; pass it as system=")
    try:
        return app.ForceField(*files), files
    except ValueError as exc:
        missing = [f for f in files if not Path(f).is_file() and not _is_builtin_forcefield(f)]
        if missing:
            raise FileNotFoundError(
                f"force field file not found: {missing[0]} (neither a path nor one of OpenMM's built-in "
                "force fields such as amber14-all.xml, amber99sbildn.xml, charmm36.xml, implicit/obc2.xml)"
            ) from exc
        raise


def _is_builtin_forcefield(name: str) -> bool:
    from openmm.app.forcefield import _getDataDirectories

    return any((Path(d) / name).is_file() for d in _getDataDirectories())


def _create_from_xmls(topology, forcefield, residue_templates, system_kwargs) -> openmm.System:
    ff, files = _load_forcefield(forcefield)
    build_topology, templates = _template_topology(topology, ff, residue_templates or {})
    try:
        return ff.createSystem(build_topology, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False,
                               removeCMMotion=False, residueTemplates=templates, **system_kwargs)
    except Exception as exc:
        message = str(exc)
        if "No template found" in message:
            raise ValueError(_no_template_message(message, files, ff, build_topology, templates)) from exc
        if "Multiple non-identical matching templates" in message:
            raise ValueError(_ambiguous_message(message, topology, ff, files)) from exc
        if "User-supplied template" in message:
            raise ValueError(f"residue_templates: {message}") from exc
        raise


def _template_topology(topology, ff, residue_templates: dict):
    """The topology to parameterise and OpenMM's ``residueTemplates`` {Residue: name} for it.

    A tuple key names residues that one template covers (charmm36's ALAD spans ACE-ALA-NME).
    OpenMM's residueTemplates is keyed by single residues, so those residues are merged into one
    residue of a copy of the topology; atom order, and hence the System, is unchanged.
    """
    residues = list(topology.residues())
    known = getattr(ff, "_templates", {})  # OpenMM has no public list of template names

    def lookup(key) -> list:
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise TypeError(f"residue_templates keys must be residue indices (int), names (str) or tuples of "
                            f"those, got {key!r}")
        found = [r for r in residues if (r.index == key if isinstance(key, int) else r.name == key)]
        if not found:
            listing = ", ".join(f"{r.index}:{r.name}" for r in residues[:20])
            raise ValueError(f"residue_templates key {key!r} matches no residue; residues (index:name): {listing}")
        return found

    single, groups = {}, []
    for key, template in residue_templates.items():
        if template not in known:
            close = difflib.get_close_matches(str(template), list(known), n=5)
            raise ValueError(f"residue_templates: the force field has no template {template!r}"
                             + (f"; close names: {', '.join(close)}" if close else ""))
        if isinstance(key, tuple):
            chosen = {r for k in key for r in lookup(k)}
            groups += [(component, template) for component in _bonded_components(topology, chosen)]
        else:
            single.update({r: template for r in lookup(key)})
    if not groups:
        return topology, single
    merged, new_residue = _merge_residues(topology, [c for c, _ in groups])
    templates = {new_residue[r.index]: t for r, t in single.items()}
    templates.update({new_residue[component[0].index]: t for component, t in groups})
    return merged, templates


def _bonded_components(topology, chosen: set) -> list[list]:
    """Split a set of residues into groups joined by bonds, each sorted by index."""
    neighbours = {r: set() for r in chosen}
    for a, b in topology.bonds():
        if a.residue is not b.residue and a.residue in chosen and b.residue in chosen:
            neighbours[a.residue].add(b.residue)
            neighbours[b.residue].add(a.residue)
    components, seen = [], set()
    for start in sorted(chosen, key=lambda r: r.index):
        if start in seen:
            continue
        stack, component = [start], {start}
        while stack:
            for other in neighbours[stack.pop()] - component:
                component.add(other)
                stack.append(other)
        seen |= component
        components.append(sorted(component, key=lambda r: r.index))
    return components


def _merge_residues(topology, components: list[list]):
    """A copy of ``topology`` in which each component (consecutive residues) is one residue.

    Returns the copy and a map from original residue index to the residue of the copy.
    """
    owner = {}
    for component in components:
        indices = [r.index for r in component]
        if indices != list(range(indices[0], indices[0] + len(indices))):
            raise ValueError(f"residue_templates: residues {indices} share a template but are not consecutive")
        owner.update({i: indices[0] for i in indices})
    merged = app.Topology()
    merged.setPeriodicBoxVectors(topology.getPeriodicBoxVectors())
    new_residue, new_atom = {}, {}
    for chain in topology.chains():
        new_chain = merged.addChain(chain.id)
        for residue in chain.residues():
            head = owner.get(residue.index, residue.index)
            if head not in new_residue:
                new_residue[head] = merged.addResidue(residue.name, new_chain, residue.id, residue.insertionCode)
            new_residue[residue.index] = new_residue[head]
            for atom in residue.atoms():
                new_atom[atom] = merged.addAtom(atom.name, atom.element, new_residue[head], atom.id)
    for bond in topology.bonds():
        merged.addBond(new_atom[bond[0]], new_atom[bond[1]], bond.type, bond.order)
    return merged, new_residue


def _no_template_message(message: str, files: list[str], ff=None, topology=None, templates=None) -> str:
    """The error for residues without a template, naming the residue at fault first.

    OpenMM reports the first residue (in topology order) that matches no template. That is often an
    innocent neighbour: a renamed residue (ALA -> XYZ) gets no bonds from the PDB reader, so the
    residue before it (ACE) loses its external bond and fails to match first. Residues whose own
    atoms and bonds match a template and only miss external bonds are therefore named last.
    """
    m = re.search(r"residue (\d+) \(([^)]*)\)\.?\s*(.*?)\s*(For more information.*)?$", message, re.S)
    index, resname, diagnosis = (m.group(1), m.group(2), m.group(3)) if m else ("?", "?", message)
    others = ""
    culprits = _unmatched_by_blame(ff, topology, templates) if ff is not None else []
    if culprits:
        (residue, why, _), rest = culprits[0], culprits[1:]
        index, resname, diagnosis = residue.index, residue.name, why
        if rest:
            others = ("Other residues without a template: "
                      + "; ".join(f"{r.name} (index {r.index}{f' and {n - 1} more' if n > 1 else ''}): {w}"
                                  for r, w, n in rest[:5])
                      + (f"; and {len(rest) - 5} more residue names" if len(rest) > 5 else "") + " ")
    return (
        f"the force field ({', '.join(files)}) has no template for residue {resname} (index {index}). "
        f"OpenMM says: {diagnosis.strip() or 'no match'} {others}"
        "What to do: if hydrogens are missing, add them (openmm.app.Modeller(...).addHydrogens(forcefield)); "
        "if the force field knows this residue under another name or needs a water/ion model, add that XML "
        "(e.g. 'tip3p.xml'); for a small molecule or non-standard residue, add a force field XML that defines "
        "it (e.g. generated with openmmforcefields' GAFF or OpenFF template generators)."
    )


def _ambiguous_message(message: str, topology, ff, files: list[str]) -> str:
    m = re.search(r"residue (-?\d+) \(([^)]*)\): (.*)\.$", message.strip())
    candidates = [c.strip() for c in m.group(3).split(",")] if m else []
    index = int(m.group(1)) if m else None
    if index is not None and index >= 0:
        residue = list(topology.residues())[index]
        what, key = f"residue {residue.name} (index {index})", repr(index)
    else:
        # OpenMM merged a whole molecule into one pseudo-residue; name its residues.
        group = _unmatched_molecule(topology, ff)
        what = "the molecule made of residues " + ", ".join(f"{r.name} (index {r.index})" for r in group)
        key = repr(tuple(r.name for r in group))
    example = candidates[0] if candidates else "TEMPLATE"
    return (
        f"{what} matches several non-identical templates of {', '.join(files)}: {', '.join(candidates)}. "
        f"Choose one with residue_templates, e.g. from_files(..., residue_templates={{{key}: {example!r}}})."
    )


def _unmatched_molecule(topology, ff) -> list:
    """The residues bonded to the first residue that no single-residue template matches."""
    unmatched = ff.getUnmatchedResidues(topology)
    if not unmatched:
        return []
    neighbours = {r: set() for r in topology.residues()}
    for a, b in topology.bonds():
        if a.residue is not b.residue:
            neighbours[a.residue].add(b.residue)
            neighbours[b.residue].add(a.residue)
    seen, stack = {unmatched[0]}, [unmatched[0]]
    while stack:
        for other in neighbours[stack.pop()] - seen:
            seen.add(other)
            stack.append(other)
    return sorted(seen, key=lambda r: r.index)


def _unmatched_by_blame(ff, topology, templates, max_names: int = 20) -> list:
    """[(first residue, OpenMM's diagnosis, count)] per residue name that no template matches, the
    likely culprits first (one diagnosis per name: a box of unmatched waters costs one).

    A residue is an innocent bystander when its own atoms and internal bonds match a template and
    only its external bonds differ (its neighbour is the problem); those come last. Among the
    rest, residues whose name is no template name of the force field come first.
    """
    try:
        from openmm.app.forcefield import _findMatchErrors  # OpenMM's own diagnosis (private)

        by_name: dict[str, list] = {}
        for residue in ff.getUnmatchedResidues(topology, templates or {}):
            by_name.setdefault(residue.name, []).append(residue)
        diagnosed = [(rs[0], _findMatchErrors(ff, rs[0]), len(rs)) for rs in list(by_name.values())[:max_names]]
    except Exception:  # noqa: BLE001 - a private OpenMM helper: fall back to OpenMM's first residue
        return []
    known = set(getattr(ff, "_templates", {}))

    def blame(item):
        residue, why, _ = item
        bystander = why.startswith("The atoms and bonds in the residue match")
        return (bystander, residue.name in known, residue.index)

    return sorted(diagnosed, key=blame)
