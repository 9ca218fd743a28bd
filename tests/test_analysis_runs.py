"""analysis.runs helpers that need no run folder."""


def test_ramachandran_pairs_are_each_residues_phi_and_psi():
    from boltzgen.analysis.runs import ramachandran_pairs

    assert ramachandran_pairs(["phi", "psi"]) == [("phi", "psi")]
    assert ramachandran_pairs(["phi1", "psi1", "phi2", "psi2", "phi3", "psi3"]) == [
        ("phi1", "psi1"), ("phi2", "psi2"), ("phi3", "psi3")]
    assert ramachandran_pairs(["phi1", "psi2", "phix", "psix", "chi1"]) == []  # no pair, no stray names


def test_pair_basins_are_drawn_on_their_own_residue_only():
    from boltzgen.analysis.report import _pair_basins
    from boltzgen.cvs import Region

    basins = {"phi2>0": Region("phi2>0", (("phi2", 0.0, 3.14),)),
              "core": Region("core", (("phi2", -2.0, -1.0), ("psi2", 2.0, 3.0))),
              "phi1>0": Region("phi1>0", (("phi1", 0.0, 3.14),)),
              "+++": Region("+++", (("phi1", 0.0, 3.14), ("phi2", 0.0, 3.14), ("phi3", 0.0, 3.14)))}
    drawn = _pair_basins(basins, "phi2", "psi2")
    assert set(drawn) == {"phi2>0", "core"}
    assert drawn["core"].arcs == (("phi", -2.0, -1.0), ("psi", 2.0, 3.0))


def test_state_populations_weigh_each_sample_into_its_declared_state():
    import mdtraj
    import numpy as np
    import pytest

    from boltzgen import systems
    from boltzgen.analysis.runs import state_populations

    pdb = systems.specs()["alanine-tetrapeptide"].path.with_name("alanine-tetrapeptide.pdb")
    structure = mdtraj.load(str(pdb))
    x = np.concatenate([structure.xyz, structure.xyz * np.array([-1.0, 1.0, 1.0], np.float32)])  # itself, mirrored
    phi = mdtraj.compute_phi(mdtraj.Trajectory(x, structure.topology))[1]
    assert (phi[0] < 0).all() and (phi[1] > 0).all()  # the mirror image flips every phi's sign
    cvs = systems.collective_variables("alanine-tetrapeptide")
    weights = np.log([3.0, 1.0])
    got = state_populations(x, structure.topology, cvs, weights)
    assert set(got) == {"phi1_positive", "phi2_positive", "phi3_positive"}
    assert all(abs(p - 0.25) < 1e-12 for p in got.values())
    assert all(p == 0.5 for p in state_populations(x, structure.topology, cvs).values())
    with pytest.raises(ValueError, match=r"log_weights must have shape \(2,\)"):
        state_populations(x, structure.topology, cvs, [0.0])
