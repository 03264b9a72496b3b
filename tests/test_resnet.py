"""The paper's models (resnet18/32/34, mlp400): shapes, exact parameter counts, init, one SGD step."""
import math

import pytest
import torch
from torch import nn

from models import MODELS, build_model
from models.resnet import ConvBNReLU

# Notation: a conv-BN unit with c_in -> c_out channels and a k x k kernel holds c_in*c_out*k*k
# (bias-free conv) + 2*c_out (BN weight and bias) parameters; the initial head (FinalBlock) holds
# d*C (bias-free Linear) + 2*C (BatchNorm1d). A basic block is two 3x3 units, plus a 1x1
# projection unit when it changes width/stride.
#
# resnet32, C = 100, CIFAR layout:
#   stem 3x3, 3->16:                       3*16*9 + 32                          =     464
#   stage 1 (16), 5 blocks:                5 * 2*(16*16*9 + 32) = 5 * 4672      =  23,360
#   stage 2 (32), first block:             (16*32*9+64) + (32*32*9+64) + (16*32+64)
#                                          = 4672 + 9280 + 576                  =  14,528
#                 4 more blocks:           4 * 2*(32*32*9 + 64) = 4 * 18,560    =  74,240
#   stage 3 (64), first block:             (32*64*9+128) + (64*64*9+128) + (32*64+128)
#                                          = 18,560 + 36,992 + 2,176            =  57,728
#                 4 more blocks:           4 * 2*(64*64*9 + 128) = 4 * 73,984   = 295,936
#   head:                                  64*100 + 2*100                       =   6,600
#   total                                                                       = 472,856
RESNET32_C100 = 464 + 23_360 + 14_528 + 74_240 + 57_728 + 295_936 + 6_600
#
# Stages of the 64/128/256/512 nets (resnet18 and resnet34 share them):
#   3x3 block at width w, no projection:   B(w) = 2*(w*w*9 + 2w)
#       B(64) = 73,984   B(128) = 295,424   B(256) = 1,180,672   B(512) = 4,720,640
#   first block of a stage w/2 -> w:       F(w) = (w/2*w*9 + 2w) + (w*w*9 + 2w) + (w/2*w + 2w)
#       F(128) = 73,984 + 147,712 + 8,448     = 230,144
#       F(256) = 295,424 + 590,336 + 33,280   = 919,040
#       F(512) = 1,180,672 + 2,360,320 + 132,096 = 3,673,088
#
# resnet18, C = 10, CIFAR layout (3x3 stem):
#   stem 3*64*9 + 128 = 1,856; stage 1: 2*B(64) = 147,968; stage 2: F(128) + B(128) = 525,568;
#   stage 3: F(256) + B(256) = 2,099,712; stage 4: F(512) + B(512) = 8,393,728;
#   head 512*10 + 20 = 5,140; total 11,173,972 (the usual CIFAR ResNet-18 has 11,173,962: its
#   head has a 10-wide bias instead of the 20 BN parameters)
RESNET18_C10 = 1_856 + 147_968 + 525_568 + 2_099_712 + 8_393_728 + 5_140
#
# resnet34, C = 1000, ImageNet layout (7x7 stem, max-pool has no parameters):
#   stem 3*64*49 + 128 = 9,536; stage 1: 3*B(64) = 221,952; stage 2: F(128) + 3*B(128) = 1,116,416;
#   stage 3: F(256) + 5*B(256) = 6,822,400; stage 4: F(512) + 2*B(512) = 13,114,368;
#   head 512*1000 + 2000 = 514,000; total 21,798,672 (torchvision's resnet34: 21,797,672, i.e.
#   1000 fewer: a 1000-wide bias instead of 2000 BN parameters)
RESNET34_C1000 = 9_536 + 221_952 + 1_116_416 + 6_822_400 + 13_114_368 + 514_000
#
# mlp400, C = 10: 2352*400 + 800 (BN) + 400*400 + 800 + 400*10 + 20 (head BN)
MLP400_C10 = 2352 * 400 + 800 + 400 * 400 + 800 + 400 * 10 + 20

CASES = [  # name, classes, input (C, H, W), feature size, exact parameter count
    ("resnet18", 10, (3, 32, 32), 512, RESNET18_C10),
    ("resnet32", 100, (3, 32, 32), 64, RESNET32_C100),
    ("resnet34", 1000, (3, 224, 224), 512, RESNET34_C1000),
    ("mlp400", 10, (3, 28, 28), 400, MLP400_C10),
]


def test_hand_arithmetic():
    assert (RESNET32_C100, RESNET18_C10, RESNET34_C1000, MLP400_C10) == (472_856, 11_173_972, 21_798_672, 1_106_420)
    assert set(MODELS) == {c[0] for c in CASES}


@pytest.mark.parametrize("name,classes,shape,dim,n_params", CASES, ids=[c[0] for c in CASES])
def test_model(name, classes, shape, dim, n_params):
    torch.manual_seed(0)
    m = build_model(name, classes, in_channels=shape[0], input_size=shape[-1])
    n = sum(p.numel() for p in m.parameters())
    x = torch.randn(2, *shape)
    out = m(x)
    feats = m.features(x)
    print(f"\n{name}: input {tuple(x.shape)} -> output {tuple(out.shape)}, features {tuple(feats.shape)}, "
          f"{n:,} parameters")
    assert out.shape == (2, classes)
    assert feats.shape == (2, dim) and m.dim_out == dim
    assert n == n_params

    # BN eps 1e-6 everywhere; the initial head is a bias-free Linear (+ BN) with usable in/out sizes
    bns = [mod for mod in m.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(b.eps == 1e-6 for b in bns)
    lins = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    assert lins and all(lin.bias is None for lin in lins)
    assert (m.fc.in_features, m.fc.out_features) == (dim, classes)

    # Kaiming-normal, fan_out: std = sqrt(2 / (c_out * k * k)), loosely (within 20%)
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert bool(convs) == name.startswith("resnet")
    for conv in convs:
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        std, want = conv.weight.std().item(), math.sqrt(2 / fan_out)
        assert abs(std / want - 1) < 0.2, (conv, std, want)

    # forward/backward and one SGD step: every parameter gets a finite gradient and moves
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    before = [p.detach().clone() for p in m.parameters()]
    y = torch.randint(0, classes, (2,))
    nn.functional.cross_entropy(m(x), y).backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, m.parameters()))
    assert torch.isfinite(m(x)).all()

    # methods replace the head with a fresh nn.Linear (with bias)
    m.fc = nn.Linear(m.fc.in_features, 7)
    assert m(x).shape == (2, 7)
    assert torch.equal(m(x), m.fc(m.features(x)))


def test_resnet_layouts():
    """Stem by input size: 3x3/1 without max-pool below 64 pixels, 7x7/2 + max-pool from 64 up;
    resnet32 is CIFAR-only. Block counts per stage as in the public code."""
    for name, size, k, blocks in (("resnet18", 32, 3, [2, 2, 2, 2]), ("resnet18", 224, 7, [2, 2, 2, 2]),
                                  ("resnet32", 32, 3, [5, 5, 5]), ("resnet34", 224, 7, [3, 4, 6, 3]),
                                  ("resnet34", 32, 3, [3, 4, 6, 3])):
        m = build_model(name, 10, 3, size)
        assert m.stem.conv.kernel_size == (k, k) and m.stem.conv.stride == ((2, 2) if k == 7 else (1, 1))
        assert isinstance(m.maxpool, nn.MaxPool2d) == (k == 7)
        assert [len(s) for s in m.stages] == blocks
        assert all(b.relu_after_sum == (k == 7) for s in m.stages for b in s)
        assert [type(b.shortcut) for s in m.stages for b in s[:1]][1:] == [ConvBNReLU] * (len(blocks) - 1)


def test_resnet_grey_input():
    """A 1-channel image on a 3-channel ResNet equals the image repeated over 3 channels; a
    1-channel ResNet takes 1-channel images directly."""
    torch.manual_seed(0)
    m = build_model("resnet32", 10, 3, 28).eval()
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(m(x), m(x.expand(-1, 3, -1, -1)), atol=1e-5)
    g = build_model("resnet32", 10, 1, 28)
    assert g.stem.conv.in_channels == 1 and g(x).shape == (2, 10)
    with pytest.raises(ValueError):
        m(torch.randn(2, 2, 28, 28))
