"""analysis.runs helpers that need no run folder."""


def test_ramachandran_pairs_are_each_residues_phi_and_psi():
    from boltzgen.analysis.runs import ramachandran_pairs

    assert ramachandran_pairs(["phi", "psi"]) == [("phi", "psi")]
    assert ramachandran_pairs(["phi1", "psi1", "phi2", "psi2", "phi3", "psi3"]) == [
        ("phi1", "psi1"), ("phi2", "psi2"), ("phi3", "psi3")]
    assert ramachandran_pairs(["phi1", "psi2", "phix", "psix", "chi1"]) == []  # no pair, no stray names
