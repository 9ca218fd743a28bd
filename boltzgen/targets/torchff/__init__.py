"""A batched torch force field compiled from an OpenMM System.

``TorchForceField(system)`` evaluates the energies of a whole batch of configurations
(n, n_atoms, 3) in nm at once, with forces, agreeing with OpenMM's Reference platform to
float64 rounding. Supported: HarmonicBondForce, HarmonicAngleForce, PeriodicTorsionForce,
NonbondedForce (NoCutoff), GBSAOBCForce (NoCutoff) and the CustomGBForce of OpenMM's Amber OBC1
and OBC2 models (``openmm.app.internal.customgbforces.GBSAOBC1Force`` / ``GBSAOBC2Force``, which
a prmtop's ``implicitSolvent=OBC1`` (or OBC2 with salt) and ``implicit/obc1.xml`` /
``implicit/obc2.xml`` build; NoCutoff, any dielectrics, salt, with or without the ACE term),
recognised by rebuilding that force and comparing its expressions exactly; CMMotionRemover is
ignored. Any other force (HCT, GBn, GBn2 or a user's own CustomGBForce included) raises
:class:`UnsupportedForceError` naming it; :func:`fast_target` then keeps the OpenMM target
instead, with a warning.

Modules: ``terms`` (one torch module per force kind, analytic gradients), ``reader`` (OpenMM
forces -> terms), ``forcefield`` (the batched sum, chunking, optional torch.compile),
``target`` (the target interface shared with OpenMMTarget). With ``compile=True`` the first call
of each kind compiles for 20-80 s; a :class:`CompileNotice` (a UserWarning) announces it.
"""
from .forcefield import CompileNotice, TorchForceField
from .reader import UnsupportedForceError, unsupported_forces
from .target import TorchForceFieldTarget, fast_target, torch_target

__all__ = [
    "CompileNotice",
    "TorchForceField",
    "TorchForceFieldTarget",
    "UnsupportedForceError",
    "fast_target",
    "torch_target",
    "unsupported_forces",
]
