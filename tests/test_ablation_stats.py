"""The ablation's statistics against hand-computed cases: paired differences, two-level bootstrap, KID, verdicts,
convergence."""

import sys
from pathlib import Path

import numpy as np
import pytest

import compressor.stats as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))  # tools/ablation.py
from compressor.metrics import frechet_distance, kernel_inception_distance


def test_paired_difference_hand_computed_with_fixed_resamples():
    # two seeds, three test images; d = A - B per (seed, image)
    a = np.array([[3.0, 5.0, 7.0], [2.0, 2.0, 8.0]])
    b = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    # d = [[2, 4, 6], [1, 1, 7]]; estimate = mean(4, 3) = 3.5
    seed_idx = np.array([[0, 0], [1, 1], [0, 1]])
    img_idx = np.array([[0, 0, 0], [2, 2, 2], [0, 1, 2]])
    # replicate 0: seeds (0, 0) on images (0, 0, 0): d[0, 0] = 2            -> 2
    # replicate 1: seeds (1, 1) on images (2, 2, 2): d[1, 2] = 7            -> 7
    # replicate 2: seeds (0, 1) on all images: (4 + 3) / 2                  -> 3.5
    # sorted (2, 3.5, 7); numpy's linear percentile at 2.5%: position 0.05 -> 2 + 0.05 * 1.5 = 2.075
    #                                           at 97.5%: position 1.95 -> 3.5 + 0.95 * 3.5 = 6.825
    iv = st.paired_mean_difference(a, b, resamples=(seed_idx, img_idx))
    assert iv.estimate == pytest.approx(3.5)
    assert iv.lo == pytest.approx(2.075)
    assert iv.hi == pytest.approx(6.825)
    assert iv.n_boot == 3
    assert iv.excludes_zero()
    assert st.verdict(iv, "higher") == st.HOLDS
    assert st.verdict(iv, "lower") == st.NOT_SHOWN
    assert st.against(iv, "lower") and not st.against(iv, "higher")
    assert st.verdict3(iv, "higher") == st.HOLDS and st.verdict3(iv, "lower") == st.REVERSED


def test_zero_variance_gives_a_point_interval():
    a = np.full((4, 10), 0.25)
    b = np.full((4, 10), 0.5)
    iv = st.paired_mean_difference(a, b, n_boot=200, rng_seed=3)
    assert (iv.estimate, iv.lo, iv.hi) == pytest.approx((-0.25, -0.25, -0.25))
    assert st.verdict(iv, "lower") == st.HOLDS  # lower is better and A is lower everywhere


def test_interval_straddling_zero_is_not_shown_and_clear_difference_holds():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, (4, 50))
    same = st.paired_mean_difference(noise, noise[::-1].copy(), n_boot=500)
    assert same.lo < 0 < same.hi
    assert st.verdict(same, "lower") == st.NOT_SHOWN and st.verdict(same, "higher") == st.NOT_SHOWN
    assert st.verdict3(same, "lower") == st.NOT_SHOWN  # an interval across zero is neither way
    shifted = st.paired_mean_difference(noise + 1.0, noise, n_boot=500)
    assert shifted.lo == pytest.approx(1.0) and shifted.hi == pytest.approx(1.0)  # pairing removes the noise
    clear = st.paired_mean_difference(noise + 2.0, noise[::-1].copy(), n_boot=500)
    assert clear.lo > 0 and st.verdict(clear, "higher") == st.HOLDS


def test_bootstrap_is_reproducible_and_draws_with_replacement():
    s1, i1 = st.resample_indices(4, 106, 100, rng_seed=7)
    s2, i2 = st.resample_indices(4, 106, 100, rng_seed=7)
    assert np.array_equal(s1, s2) and np.array_equal(i1, i2)
    assert s1.shape == (100, 4) and i1.shape == (100, 106)
    assert s1.min() >= 0 and s1.max() <= 3 and i1.max() <= 105
    assert any(len(set(row)) < 4 for row in s1)  # repeats occur
    with pytest.raises(ValueError):
        st.paired_mean_difference(np.zeros((2, 3)), np.zeros((3, 2)))


def test_kid_matches_the_pipeline_estimator_and_the_hand_formula():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(0, 1, (12, 8)), rng.normal(0.5, 1, (12, 8))
    # compressor.metrics draws subsets of min(n, 1000) = all 12 images: the full-set unbiased estimator
    assert st.kid(real, fake) == pytest.approx(kernel_inception_distance(real, fake, subsets=3)[0], rel=1e-12)
    # a multiset with an image drawn twice: pairs of different images only, by hand
    krr, kff, krf = st.polynomial_kernels(real, fake)
    draw = [0, 0, 1]
    w_rr = w_ff = 0.0
    n_pairs = 0
    for p in range(3):
        for q in range(3):
            if draw[p] != draw[q]:
                w_rr += krr[draw[p], draw[q]]
                w_ff += kff[draw[p], draw[q]]
                n_pairs += 1
    cross = sum(krf[draw[p], draw[q]] for p in range(3) for q in range(3)) / 9
    hand = w_rr / n_pairs + w_ff / n_pairs - 2 * cross
    got = st.kid_weighted((krr, kff, krf), st.counts_of(np.array([draw]), 12))[0]
    assert got == pytest.approx(hand, rel=1e-12)
    assert n_pairs == 4


def test_kid_difference_interval_separates_a_shifted_arm():
    rng = np.random.default_rng(2)
    real = rng.normal(0, 1, (40, 16))
    good = [real + rng.normal(0, 0.3, real.shape) for _ in range(4)]
    bad = [real + 1.5 + rng.normal(0, 0.3, real.shape) for _ in range(4)]
    iv = st.two_level_bootstrap(st.kid_statistic(real, good, bad), 4, 40, n_boot=200)
    assert iv.hi < 0 and st.verdict(iv, "lower") == st.HOLDS
    fid = st.two_level_bootstrap(st.fid_statistic(real, good, bad), 4, 40, n_boot=30)
    assert fid.hi < 0


def test_fid_from_grams_equals_fid_on_repeated_rows():
    rng = np.random.default_rng(4)
    real, fake = rng.normal(0, 1, (15, 40)), rng.normal(0.3, 1.2, (15, 40))
    idx = np.stack([np.arange(15), rng.integers(0, 15, 15), rng.integers(0, 15, 15)])
    got = st.fid_weighted(st.fid_grams(real, fake), st.counts_of(idx, 15), chunk=2)
    want = [frechet_distance(real[row], fake[row]) for row in idx]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    "curve,expect",
    [
        (np.r_[np.linspace(10, 2, 80), np.full(20, 2.0)], True),  # decayed, then flat
        (np.linspace(10, 2, 100), False),  # still falling through the last 20%
    ],
)
def test_convergence(curve, expect):
    steps = np.arange(1, 101) * 50
    c = st.convergence(steps, curve, tail=0.2, tol=0.05)
    assert c.converged is expect
    assert c.window[1] == 5000 and c.window[0] >= 4000
    assert ("NOT" in c.describe()) is (not expect)


def test_convergence_ignores_noise_but_needs_points():
    rng = np.random.default_rng(0)
    steps = np.arange(1, 201) * 10
    noisy_flat = 3.0 + rng.normal(0, 0.5, 200)
    assert st.convergence(steps, noisy_flat).converged
    assert not st.convergence([100, 200], [1.0, 1.0]).converged  # too few points in the window
    assert "only 1 logged points" in st.convergence([100, 200], [1.0, 1.0]).describe()
    with pytest.raises(ValueError):
        st.convergence([], [])


def test_paired_discriminator_depends_on_the_seed_alone(tmp_path):
    """The builder the ablation hands the trainer (``RunOptions(build_discriminator=...)``)."""
    import ablation
    import torch

    recs = [{}, {}, {}]
    nets = []
    for rec, (seed, global_seed) in zip(recs, [(5, 1), (5, 2), (6, 2)]):
        torch.manual_seed(global_seed)  # what the arm happened to draw before building its discriminator
        nets.append(ablation.paired_discriminator(seed, rec)(input_nc=6, ndf=4, n_layers=2))
        after = torch.rand(3)
        torch.manual_seed(global_seed)
        assert torch.equal(after, torch.rand(3))  # the trainer's own stream is untouched
    assert recs[0] == recs[1] != recs[2] and recs[0]["discriminator_init"] == ablation.fingerprint(nets[0])
    assert all(torch.equal(a, b) for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values()))


def test_docs_block_is_replaced_in_place(tmp_path):
    import ablation

    md = tmp_path / "results.md"
    md.write_text(
        "# Results\n\nintro\n\n<!-- ablation:cpu-long:begin -->\npending\n<!-- ablation:cpu-long:end -->\n\ntail\n"
    )
    ablation.write_docs_block("cpu-long", "| table |", md)
    text = md.read_text()
    assert "pending" not in text and "| table |" in text and text.endswith("tail\n") and text.startswith("# Results")
    ablation.write_docs_block("smoke", "other", md)
    assert md.read_text().rstrip().endswith("<!-- ablation:smoke:end -->")
    ablation.write_docs_block("cpu-long", "| table 2 |", md)
    assert md.read_text().count("ablation:cpu-long:begin") == 1 and "| table |" not in md.read_text()


def test_interval_formatting_keeps_the_sign_of_an_excluded_zero():
    import ablation

    assert ablation.fmt_iv(st.Interval(0.0009, 0.00004, 0.0023, 10), "kid", True) == "+0.90 [+0.04, +2.30]"
    assert ablation.fmt_iv(st.Interval(42.9, 42.3, 43.6, 10), "psnr", False) == "42.9 [42.3, 43.6]"
    assert ablation.fmt_iv(st.Interval(-0.25, -0.25, -0.25, 10), "psnr_t", True) == "-0.25 [-0.25, -0.25]"


def test_pairing_check_flags_unpaired_runs():
    import ablation

    arms, seeds = ["scratch", "kd", "kd_srp_inherit"], [0, 1000]
    infos = {(a, s): {"discriminator_init": f"d{s}", "student_init": f"s{s}"} for a in arms for s in seeds}
    infos[("kd_srp_inherit", 0)]["student_init"] = "inherited"  # differs by design: not a problem
    orders = {0: "o0", 1000: "o1000"}
    assert ablation.check_pairing(infos, arms, seeds, orders) == []
    infos[("kd", 1000)]["discriminator_init"] = "other"
    infos[("scratch", 0)]["student_init"] = "other"
    problems = ablation.check_pairing(infos, arms, seeds, {0: "o", 1000: "o"})
    assert any("seed 1000: discriminator" in p for p in problems)
    assert any("seed 0: scratch-initialised students differ" in p for p in problems)
    assert any("share a data order" in p for p in problems)
    del infos[("kd", 0)]["discriminator_init"]
    assert any("not verified" in p for p in ablation.check_pairing(infos, arms, seeds, orders))


def _compare_tool():
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("compare_ablations", ROOT / "tools" / "compare_ablations.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ablation_folder(out, shift: float, teacher_key: str = "T", seeds=(0, 1000, 2000)):
    """Runs laid out as ``compress ablate`` writes them, each with its per-image record."""
    rng = np.random.default_rng(0)
    for s in seeds:
        rd = out / "r" / f"r-w0.5-inherit-kd-s{s}"
        rd.mkdir(parents=True)
        base = 30.0 + rng.normal(0, 1, 12)
        z = {"key": np.array(f"student{s}|{teacher_key}"), "psnr": base - 2, "psnr_t": base + shift}
        z.update(ssim=np.full(12, 0.9), ssim_t=np.full(12, 0.95))
        np.savez(rd / "per_image.npz", **z)


def test_compare_ablations_pairs_two_folders_by_seed_and_image(tmp_path, capsys):
    """tools/compare_ablations.py: B − A where B is A shifted by +0.5 dB against the teacher reads +0.5 with a
    zero-width interval and 0 against the ground truth; folders evaluated on different teacher outputs, or with
    no run of the named student, are one ``error:`` line and exit 2."""
    tool = _compare_tool()
    _ablation_folder(tmp_path / "a", 0.0)
    _ablation_folder(tmp_path / "b", 0.5)
    assert tool.main([str(tmp_path / "a"), str(tmp_path / "b"), "--student", "w0.5", "--n-boot", "200"]) == 0
    out = capsys.readouterr().out
    assert "B − A +0.500 [+0.500, +0.500]" in out and "B − A +0.000" in out and "seeds 0, 1000, 2000" in out
    _ablation_folder(tmp_path / "c", 0.5, teacher_key="other")
    assert tool.main([str(tmp_path / "a"), str(tmp_path / "c"), "--student", "w0.5"]) == 2
    assert capsys.readouterr().err.startswith("error: seed 0: the two runs were evaluated against different")
    assert tool.main([str(tmp_path / "a"), str(tmp_path / "b"), "--student", "w0.25"]) == 2
    assert "no evaluated run of student w0.25" in capsys.readouterr().err
