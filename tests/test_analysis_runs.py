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
