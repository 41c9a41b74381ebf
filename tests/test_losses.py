import pytest
import torch

from compressor.losses import GANLoss, srp_loss, srp_loss_reference, srp_multi


def _feats(b=2, ct=16, cs=8, h=8, w=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, ct, h, w, generator=g, dtype=dtype), torch.randn(b, cs, h, w, generator=g, dtype=dtype))


def test_srp_matches_reference_random_fp32():
    for seed in range(3):
        ft, fs = _feats(seed=seed)
        a, b = srp_loss(ft, fs), srp_loss_reference(ft, fs)
        assert torch.allclose(a, b, rtol=1e-5, atol=0), (a, b)


def test_srp_near_equal_features():
    ft, _ = _feats(ct=16, cs=16)
    fs = ft + 1e-3 * torch.randn_like(ft)
    exact = srp_loss_reference(ft.double(), fs.double())
    # fp32 inputs with float64 accumulation match the exact value to 1e-5 relative
    got = srp_loss(ft, fs, float64=True)
    assert torch.allclose(got.double(), exact, rtol=1e-5, atol=0), (got, exact)
    # plain fp32 loses digits to cancellation here (measured ~3e-4); the float64 option is what fixes it
    assert torch.allclose(srp_loss(ft.double(), fs.double()), exact, rtol=1e-7, atol=0)


def test_srp_float64_random():
    ft, fs = _feats(dtype=torch.float64)
    assert torch.allclose(srp_loss(ft, fs), srp_loss_reference(ft, fs), rtol=1e-10, atol=0)


def test_srp_gradcheck():
    ft, fs = _feats(b=1, ct=5, cs=3, h=3, w=4, dtype=torch.float64)
    ft.requires_grad_(True)
    fs.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: srp_loss(a, b), (ft, fs))


def test_srp_zero_for_same_relation_and_needs_same_hw():
    ft, _ = _feats()
    assert srp_loss(ft, ft.clone()).abs() < 1e-6
    # a channel permutation keeps the relation matrix: loss 0 although C differs in order
    assert srp_loss(ft, ft[:, torch.randperm(ft.shape[1])]).abs() < 1e-6
    with pytest.raises(ValueError, match="equal batch and H,W"):
        srp_loss(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 4))


def test_srp_pool_and_l1_variant_and_multi():
    ft, fs = _feats(h=8, w=8)
    pooled = srp_loss(ft, fs, pool=4)
    assert torch.allclose(
        pooled,
        srp_loss_reference(
            torch.nn.functional.adaptive_avg_pool2d(ft, 4), torch.nn.functional.adaptive_avg_pool2d(fs, 4)
        ),
        rtol=1e-5,
    )
    l1 = srp_loss_reference(ft, fs, p=1)
    assert l1 > 0 and not torch.allclose(l1, srp_loss_reference(ft, fs))
    total = srp_multi({"a": ft, "b": ft}, {"a": fs, "b": fs}, ["a", "b"], [1.0, 2.0])
    assert torch.allclose(total, 3 * srp_loss(ft, fs))


def test_gan_losses():
    pred = torch.randn(2, 1, 4, 4)
    for mode in ("lsgan", "vanilla", "hinge"):
        loss = GANLoss(mode)
        assert loss(pred, True).ndim == 0 and loss(pred, False, for_discriminator=False).ndim == 0
    assert GANLoss("hinge")(torch.full((1, 1, 2, 2), 2.0), True) == 0


def test_srp_gradient_is_finite_on_all_zero_rows():
    """A post-ReLU feature map with dead positions (all-zero rows of F) must not give NaN gradients."""
    ft = torch.relu(torch.randn(2, 8, 6, 6))
    fs = torch.randn(2, 4, 6, 6)
    fs.data[:, :, :3] = 0  # dead rows in the student
    fs.requires_grad_(True)
    srp_loss(ft, fs).backward()
    assert torch.isfinite(fs.grad).all()


def test_srp_per_row_scale_is_hw_times_the_per_entry_mean_and_bounded():
    ft, fs = _feats(h=8, w=6)
    entries = srp_multi({"a": ft}, {"a": fs}, ["a"])
    rows = srp_multi({"a": ft}, {"a": fs}, ["a"], normalize="rows")
    assert torch.allclose(rows, entries * 48, rtol=1e-5)
    pooled = srp_multi({"a": ft}, {"a": fs}, ["a"], pool=4, normalize="rows")
    assert torch.allclose(pooled, srp_loss(ft, fs, pool=4) * 16, rtol=1e-5)
    flat = torch.ones(1, 2, 4, 4)
    alt = torch.ones(1, 2, 4, 4)
    alt[:, :, ::2] = -1  # rows of alternating sign: each row differs from the all-ones row by 2 in half its entries
    assert 0 < float(srp_multi({"a": flat}, {"a": alt}, ["a"], normalize="rows")) <= 4
    with pytest.raises(ValueError, match="normalize"):
        srp_multi({"a": ft}, {"a": fs}, ["a"], normalize="pixels")


def test_a_tap_before_an_in_place_activation_records_the_modules_own_output():
    from compressor.features import FeatureTaps, resolve_taps
    from compressor.models import build_generator

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(inplace=True))
    with FeatureTaps(net, {"pre": "0"}) as t:
        out = net(torch.randn(1, 3, 8, 8))
    assert (t.features["pre"] < 0).any() and (out >= 0).all()
    # the zoo's default taps are pre-activation: each records its norm's own output, negative values included,
    # although an in-place ReLU (ResNet) or the next level's in-place LeakyReLU (U-Net) follows it
    for arch in ("resnet_6blocks", "unet_128"):
        g = build_generator(arch, ngf=8, norm="batch").eval()
        name = resolve_taps(g, ["encoder"])["encoder"]
        norm = dict(g.named_modules())[name]
        assert isinstance(norm, torch.nn.BatchNorm2d), arch
        seen = {}
        norm.register_forward_pre_hook(lambda _m, inputs: seen.update(x=inputs[0].clone()))
        with torch.no_grad(), FeatureTaps(g, {"encoder": name}) as t:
            g(torch.randn(1, 3, 128, 128))
            expected = norm(seen["x"])
        f = t.features["encoder"]
        assert torch.equal(f, expected) and (f < 0).any(), arch
