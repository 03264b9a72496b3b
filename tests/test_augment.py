"""Tests for utils.augment: shapes, randomness, hand-computed values and bit-exact agreement with PIL."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from utils.data import augment as A

FILL = 128


def to_pil(t):
    a = t.permute(1, 2, 0).numpy()
    return Image.fromarray(a[:, :, 0], "L") if a.shape[2] == 1 else Image.fromarray(a, "RGB")


def from_pil(im):
    a = np.array(im)
    return torch.from_numpy(a if a.ndim == 3 else a[:, :, None]).permute(2, 0, 1)


def pil_batch(x, fn):
    return torch.stack([from_pil(fn(to_pil(x[i]), i)) for i in range(x.shape[0])])


def rand_images(b, c, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)
    x[::3] = x[::3] // 4 + 90  # some low-contrast images
    x[1::4, :, : h // 2] = 255  # some flat regions
    return x


def pixels(values, c=1):
    return torch.tensor(values, dtype=torch.uint8).view(1, 1, 1, -1).expand(1, c, 1, len(values)).clone()


ALL_UINT8_OPS = [
    lambda x: A.crop_flip(x), A.hflip, A.vflip, lambda x: A.cutout(x, 16),
    lambda x: A.brightness(x, 1.4), lambda x: A.contrast(x, 0.3), lambda x: A.color(x, 1.9),
    lambda x: A.sharpness(x, 1.9), lambda x: A.posterize(x, 3), lambda x: A.solarize(x, 100),
    A.invert, A.autocontrast, A.equalize, lambda x: A.shear_x(x, 0.3), lambda x: A.shear_y(x, -0.2),
    lambda x: A.translate_x(x, 5.5), lambda x: A.translate_y(x, -7), lambda x: A.rotate(x, 30),
    A.autoaugment_cifar10, A.randaugment,
]


@pytest.mark.parametrize("shape", [(6, 1, 28, 28), (6, 3, 32, 32), (5, 3, 20, 24)])
def test_shapes_dtype_preserved(shape):
    x = rand_images(*shape)
    for op in ALL_UINT8_OPS:
        y = op(x)
        assert y.dtype == torch.uint8 and y.shape == x.shape
    for views in (A.uncertainty_views(x, m) for m in A.UNCERTAINTY_METRICS):
        assert len(views) == 12 and all(v.shape == x.shape and v.dtype == torch.uint8 for v in views)


def test_per_sample_randomness():
    torch.manual_seed(0)
    x = rand_images(1, 3).expand(64, -1, -1, -1).contiguous()
    for op, min_distinct in [(A.crop_flip, 40), (lambda v: A.cutout(v, 16), 40),
                             (A.autoaugment_cifar10, 15), (A.randaugment, 30)]:
        y = op(x)
        assert len({bytes(img.numpy().tobytes()) for img in y}) >= min_distinct


def test_reproducible_under_manual_seed():
    x = rand_images(16, 3)
    for op in (A.crop_flip, A.autoaugment_cifar10, A.randaugment, lambda v: A.cutout(v, 8)):
        torch.manual_seed(123)
        a = op(x)
        torch.manual_seed(123)
        assert torch.equal(a, op(x))


def test_flips_are_involutions():
    x = rand_images(4, 3, 7, 9)
    assert torch.equal(A.hflip(A.hflip(x)), x) and torch.equal(A.vflip(A.vflip(x)), x)
    assert torch.equal(A.hflip(x)[..., 0], x[..., -1]) and torch.equal(A.vflip(x)[..., 0, :], x[..., -1, :])


def test_crop_flip_padding0_is_identity_or_flip():
    torch.manual_seed(1)
    x = rand_images(64, 3, 8, 8)
    y = A.crop_flip(x, padding=0)
    same = (y == x).flatten(1).all(1)
    flipped = (y == x.flip(3)).flatten(1).all(1)
    assert bool((same | flipped).all()) and same.any() and flipped.any()


def test_crop_flip_outputs_are_valid_crops():
    torch.manual_seed(2)
    x = rand_images(32, 1, 6, 6) // 2 + 1  # no zeros so padding is recognisable
    padded = F.pad(x, (2, 2, 2, 2))
    y = A.crop_flip(x, padding=2)
    offsets = set()
    for i in range(32):
        cands = [(oy, ox, f) for oy in range(5) for ox in range(5) for f in (0, 1)
                 if torch.equal(y[i], (lambda c: c.flip(2) if f else c)(padded[i, :, oy:oy + 6, ox:ox + 6]))]
        assert cands, f"sample {i} is not a padded crop (+flip)"
        offsets.add(cands[0][:2])
    assert len(offsets) > 5


@pytest.mark.parametrize("c,fill", [(3, (125, 122, 113)), (1, (120,))])
def test_cutout_forced_centre_box(c, fill):
    x = torch.full((3, c, 8, 8), 200, dtype=torch.uint8)
    y = A.cutout(x, 4, centers=torch.tensor([[2, 5], [0, 0], [7, 7]]))
    expect = x.clone()
    for ch, v in enumerate(fill):
        expect[0, ch, 0:4, 3:7] = v  # rows max(0,2-2)..min(8,2+2), cols 3..7
        expect[1, ch, 0:2, 0:2] = v  # clipped at the top-left corner
        expect[2, ch, 5:8, 5:8] = v  # clipped at the bottom-right corner
    assert torch.equal(y, expect)
    assert torch.equal(A.cutout(x, 1), x)  # size // 2 == 0 -> nothing
    assert torch.equal(A.cutout(x, 4, fill=[0] * c, centers=torch.tensor([[2, 5]] * 3))[0, :, 0:4, 3:7],
                       torch.zeros(c, 4, 4, dtype=torch.uint8))


def test_pointwise_ops_hand_computed():
    x = pixels([0, 50, 127, 128, 200, 255])
    row = lambda t: t.flatten().tolist()  # noqa: E731
    assert row(A.solarize(x, 128)) == [0, 50, 127, 127, 55, 0]
    assert row(A.solarize(x, 227.56)) == [0, 50, 127, 128, 200, 0]  # fractional threshold
    assert row(A.solarize(x, 256)) == row(x) and row(A.solarize(x, 0)) == [255, 205, 128, 127, 55, 0]
    assert row(A.posterize(x, 3)) == [0, 32, 96, 128, 192, 224]
    assert row(A.posterize(x, 8)) == row(x) and row(A.posterize(x, 1)) == [0, 0, 0, 128, 128, 128]
    assert row(A.invert(x)) == [255, 205, 128, 127, 55, 0]
    assert row(A.brightness(x, 1.5)) == [0, 75, 190, 192, 255, 255]  # 190.5 truncates like PIL
    assert row(A.brightness(x, 0.5)) == [0, 25, 63, 64, 100, 127]
    # per-sample magnitudes: one tensor entry per image
    xb = torch.cat([x, x])
    assert A.brightness(xb, torch.tensor([1.0, 0.0]))[1].sum() == 0
    assert A.posterize(xb, torch.tensor([8, 1])).flatten(1).tolist() == [row(x), [0, 0, 0, 128, 128, 128]]


def test_contrast_and_color_hand_computed():
    x = pixels([10, 20, 30, 41])  # mean 25.25 -> degenerate 25
    assert A.contrast(x, 0.0).flatten().tolist() == [25] * 4
    assert A.contrast(x, 2.0).flatten().tolist() == [0, 15, 35, 57]
    rgb = torch.tensor([200, 100, 0], dtype=torch.uint8).view(1, 3, 1, 1)  # L = 118 (PIL integer luma)
    assert A.color(rgb, 0.0).flatten().tolist() == [118] * 3
    assert torch.equal(A.color(x, 0.0), x)  # grey images have no saturation


def test_autocontrast():
    # 50..100 -> lut int(v*5.1 - 50*5.1) in double: 50->0, 75->127, 90->203 and 100->254 (not 255: PIL's
    # 100*5.1 - 255 == 254.99999999999997 truncates); 0..255 spans the full range exactly.
    assert A.autocontrast(pixels([50, 75, 90, 100])).flatten().tolist() == [0, 127, 203, 254]
    assert A.autocontrast(pixels([0, 60, 255])).flatten().tolist() == [0, 60, 255]
    assert A.autocontrast(pixels([10, 20])).flatten().tolist() == [0, 255]
    x = torch.randint(50, 101, (2, 3, 16, 16), dtype=torch.uint8)
    x[:, :, 0, 0], x[:, :, 0, 1] = 50, 100
    x[1, 2] = 77  # constant channel stays unchanged
    y = A.autocontrast(x)
    assert y.amin(dim=(2, 3))[:, :2].eq(0).all() and y.amax(dim=(2, 3))[:, :2].eq(254).all()
    assert torch.equal(y[1, 2], x[1, 2])
    assert torch.equal(y, pil_batch(x, lambda im, i: ImageOps.autocontrast(im)))


@pytest.mark.parametrize("c", [1, 3])
def test_equalize_matches_pil(c):
    x = rand_images(12, c)
    x[5] = x[5] // 50 * 50  # few grey levels
    x[6] = 255
    x[6].view(-1)[:300] = torch.arange(300) % 200  # lut would exceed 255 without clipping
    assert torch.equal(A.equalize(x), pil_batch(x, lambda im, i: ImageOps.equalize(im)))


def test_translate_matches_pil_nearest():
    x = rand_images(4, 3)
    fill = (FILL,) * 3
    y = A.translate_x(x, 3)
    ref = pil_batch(x, lambda im, i: im.transform(im.size, Image.AFFINE, (1, 0, 3, 0, 1, 0), fillcolor=fill))
    assert torch.equal(y, ref)
    assert torch.equal(y[..., :-3], x[..., 3:]) and bool((y[..., -3:] == FILL).all())
    t = torch.tensor([-2.5, 4.8, 0.0, 14.5], dtype=torch.float64)
    assert torch.equal(A.translate_y(x, t), pil_batch(
        x, lambda im, i: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, float(t[i])), fillcolor=fill)))


def test_rotate_matches_pil_and_rot90():
    x = rand_images(3, 3, 17, 17)
    assert torch.equal(A.rotate(x, 90.0), torch.rot90(x, 1, dims=(2, 3)))  # counter-clockwise
    assert torch.equal(A.rotate(x, 90.0), pil_batch(x, lambda im, i: im.rotate(90)))
    x = rand_images(6, 3, 20, 28)
    angles = torch.tensor([-45.0, -12.3, 0.0, 7.7, 30.0, 200.0], dtype=torch.float64)

    def ref(im, i):  # the public code's rotate_with_fill
        rot = im.convert("RGBA").rotate(float(angles[i]))
        return Image.composite(rot, Image.new("RGBA", rot.size, (FILL,) * 4), rot).convert(im.mode)

    assert torch.equal(A.rotate(x, angles), pil_batch(x, ref))
    assert torch.equal(A.rotate(x, angles, fill=0), pil_batch(x, lambda im, i: im.rotate(float(angles[i]))))


@pytest.mark.parametrize("c", [1, 3])
def test_shear_matches_pil_bicubic(c):
    x = rand_images(6, c)
    m = torch.tensor([0.3, -0.3, 0.1, -0.0333, 0.0, 0.2667], dtype=torch.float64)
    fill = (FILL,) * c
    for ours, coeffs in [(A.shear_x, lambda v: (1, v, 0, 0, 1, 0)), (A.shear_y, lambda v: (1, 0, 0, v, 1, 0))]:
        ref = pil_batch(x, lambda im, i: im.transform(im.size, Image.AFFINE, coeffs(float(m[i])), Image.BICUBIC,
                                                      fillcolor=fill))
        assert torch.equal(ours(x, m), ref)


@pytest.mark.parametrize("c", [1, 3])
def test_colour_ops_match_pil(c):
    x = rand_images(10, c, seed=c)
    f = torch.linspace(0.1, 1.9, 10, dtype=torch.float64)
    for ours, enh in [(A.brightness, ImageEnhance.Brightness), (A.contrast, ImageEnhance.Contrast),
                      (A.color, ImageEnhance.Color), (A.sharpness, ImageEnhance.Sharpness)]:
        ref = pil_batch(x, lambda im, i: enh(im).enhance(float(f[i])))
        assert (ours(x, f).int() - ref.int()).abs().max().item() == 0, ours.__name__
    bits = torch.arange(10) % 8 + 1
    thr = torch.linspace(0, 256, 10, dtype=torch.float64)
    assert torch.equal(A.posterize(x, bits), pil_batch(x, lambda im, i: ImageOps.posterize(im, int(bits[i]))))
    assert torch.equal(A.solarize(x, thr), pil_batch(x, lambda im, i: ImageOps.solarize(im, float(thr[i]))))
    assert torch.equal(A.invert(x), pil_batch(x, lambda im, i: ImageOps.invert(im)))
    assert torch.equal(A._smooth(x).to(torch.uint8), pil_batch(x, lambda im, i: im.filter(ImageFilter.SMOOTH)))


def test_policy_tables_and_ops():
    assert len(A.CIFAR10_POLICY) == 25 and len(A.POLICY_OPS) == 15
    assert A.POLICY_RANGES["posterize"] == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
    assert A.POLICY_RANGES["cutout"] == [0, 2, 4, 7, 9, 11, 13, 16, 18, 20]
    assert A.POLICY_RANGES["solarize"][0] == 256 and A.POLICY_RANGES["solarize"][-1] == 0
    assert A.POLICY_RANGES["translateX"][9] == pytest.approx(150 / 331)
    x = rand_images(8, 3)
    v = torch.full((8,), A.POLICY_RANGES["translateX"][9], dtype=torch.float64)
    y = A.apply_policy_op("translateX", x, v)
    plus, minus = A.translate_x(x, v * 32), A.translate_x(x, -v * 32)
    is_plus = (y == plus).flatten(1).all(1)
    assert bool((is_plus | (y == minus).flatten(1).all(1)).all())
    rot = torch.full((8,), 20.0, dtype=torch.float64)
    assert torch.equal(A.apply_policy_op("rotate", x, rot), A.rotate(x, 20.0))  # rotate: no random sign
    assert torch.equal(A.apply_policy_op("equalize", x, v), A.equalize(x))


def _pil_policy_op(name, im, mag, sign):
    """Independent PIL reference of one DeepVoltaire sub-policy operation (RGB, fillcolor 128)."""
    fill, (w, h) = (FILL,) * 3, im.size
    affine = {"shearX": (1, mag * sign, 0, 0, 1, 0), "shearY": (1, 0, 0, mag * sign, 1, 0),
              "translateX": (1, 0, mag * w * sign, 0, 1, 0), "translateY": (1, 0, 0, 0, 1, mag * h * sign)}
    if name in affine:
        resample = Image.BICUBIC if name.startswith("shear") else Image.NEAREST
        return im.transform(im.size, Image.AFFINE, affine[name], resample, fillcolor=fill)
    if name == "rotate":
        rot = im.convert("RGBA").rotate(mag)
        return Image.composite(rot, Image.new("RGBA", rot.size, (FILL,) * 4), rot).convert(im.mode)
    enhance = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast,
               "sharpness": ImageEnhance.Sharpness, "brightness": ImageEnhance.Brightness}
    if name in enhance:
        return enhance[name](im).enhance(1 + mag * sign)
    if name == "posterize":
        return ImageOps.posterize(im, int(mag))
    if name == "solarize":
        return ImageOps.solarize(im, mag)
    return {"autocontrast": ImageOps.autocontrast, "equalize": ImageOps.equalize, "invert": ImageOps.invert}[name](im)


def test_autoaugment_outputs_are_pil_policy_outputs():
    img = rand_images(2, 3, seed=5)[1]
    signed = {"shearX", "shearY", "translateX", "translateY", "color", "contrast", "sharpness", "brightness"}
    key = lambda im: np.array(im).tobytes()  # noqa: E731
    cands = {key(to_pil(img))}
    for p1, o1, m1, p2, o2, m2 in A.CIFAR10_POLICY:
        v1, v2 = A.POLICY_RANGES[o1][m1], A.POLICY_RANGES[o2][m2]
        firsts = [to_pil(img)] + ([_pil_policy_op(o1, to_pil(img), v1, s) for s in
                                   ((1, -1) if o1 in signed else (1,))] if p1 > 0 else [])
        for im in firsts:
            cands.add(key(im))
            if p2 > 0:
                cands.update(key(_pil_policy_op(o2, im, v2, s)) for s in ((1, -1) if o2 in signed else (1,)))
    torch.manual_seed(3)
    out = A.autoaugment_cifar10(img.expand(96, -1, -1, -1).contiguous())
    keys = [out[i].permute(1, 2, 0).contiguous().numpy().tobytes() for i in range(96)]
    assert all(k in cands for k in keys)
    assert len(set(keys)) > 20


def test_uncertainty_views():
    torch.manual_seed(0)
    x = rand_images(8, 3)
    views = A.uncertainty_views(x, "vr")
    assert torch.equal(views[8], 255 - x)
    assert torch.equal(views[9], A.solarize(x, 128)) and torch.equal(views[11], A.solarize(x, 32))
    for v, f in ((views[4], 3), (views[5], 2)):
        assert bool(((v == x).flatten(1).all(1) | (v == x.flip(f)).flatten(1).all(1)).all())
    assert int((views[3] == torch.tensor([125, 122, 113], dtype=torch.uint8).view(1, 3, 1, 1)).all(1).sum()) > 0
    gen = A.iter_uncertainty_views(x, "vr_cutout", k=3)
    assert len(list(gen)) == 3
    with pytest.raises(ValueError, match="vr_randaug"):
        A.uncertainty_views(x, "entropy")


def test_normalize_known_values():
    x = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 1, 1, 3)
    assert A.normalize(x, [0.5], [0.5]).flatten().tolist() == pytest.approx([-1.0, 1.0, -0.6])
    x3 = torch.full((2, 3, 2, 2), 255, dtype=torch.uint8)
    y = A.normalize(x3, (0.0, 0.5, 1.0), (1.0, 0.5, 2.0))
    assert y.dtype == torch.float32 and y[0, :, 0, 0].tolist() == pytest.approx([1.0, 1.0, 0.0])
    with pytest.raises(ValueError):
        A.normalize(x3, (0.1, 0.2), (1.0, 1.0))


def test_cutmix():
    B, H, W = 16, 12, 10
    x = torch.arange(B, dtype=torch.float32).view(B, 1, 1, 1).expand(B, 2, H, W).contiguous()
    y = torch.arange(B) * 10
    torch.manual_seed(0)
    checked = 0
    for _ in range(20):
        x0 = x.clone()
        xm, ya, yb, lam = A.cutmix(x, y)
        assert torch.equal(x, x0) and torch.equal(ya, y) and isinstance(lam, float)
        changed = (xm != x).any(1)  # [B,H,W]
        box = changed.any(0)
        if box.any():
            assert lam == pytest.approx(1 - box.sum().item() / (H * W))
            for i in range(B):  # every pixel inside the box comes from sample y_b/10
                assert bool((xm[i, :, box] == yb[i] / 10).all())
            checked += 1
        assert sorted(yb.tolist()) == sorted(y.tolist())
    assert checked > 0


def test_train_and_test_augment():
    with pytest.raises(ValueError, match="cutmix"):
        A.TrainAugment(["cutout", "mixup"], (0.5,), (0.5,))
    ta = A.TrainAugment(["cutmix", "autoaug", "cutout", "randaug"], (0.1307,), (0.3081,))
    assert ta.cutmix and ta.steps == ["cutout", "randaug", "autoaug"]
    assert "crop_flip" in repr(ta) and "autoaugment_cifar10" in repr(ta)
    x = rand_images(8, 1, 28, 28)
    out = ta(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert not A.TrainAugment([], (0.5,), (0.5,)).cutmix
    te = A.TestAugment((0.5,), (0.5,))
    assert torch.equal(te(x), A.normalize(x, (0.5,), (0.5,))) and "normalize" in repr(te)


def test_op_registry():
    assert A.get_op("rotate") is A.rotate and A.OPS["autoaugment_cifar10"] is A.autoaugment_cifar10
    with pytest.raises(KeyError, match="shear_x"):
        A.get_op("warp")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = rand_images(16, 3)
    m = torch.linspace(-0.3, 0.3, 16, dtype=torch.float64)
    for op in (lambda v, t: A.shear_x(v, t), lambda v, t: A.shear_y(v, t), lambda v, t: A.rotate(v, t * 100),
               lambda v, t: A.translate_x(v, t * 20), lambda v, t: A.sharpness(v, 1 + t * 3),
               lambda v, t: A.contrast(v, 1 + t), lambda v, t: A.equalize(v), lambda v, t: A.autocontrast(v)):
        assert torch.equal(op(x.cuda(), m.cuda()).cpu(), op(x, m))
    torch.manual_seed(0)
    assert A.randaugment(x.cuda()).is_cuda and A.autoaugment_cifar10(x.cuda()).shape == x.shape
