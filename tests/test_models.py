"""mlp400: shapes, parameter count, and the grey-input fold equals the 3-channel computation."""
import torch

from models import build_model


def test_mlp400_shapes_and_params():
    m = build_model("mlp400", 10)
    n = sum(p.numel() for p in m.parameters())
    # 2352*400 + 2*400 (BN) + 400*400 + 2*400 + 400*10 (bias-free head) + 2*10 (head BN)
    assert n == 2352 * 400 + 800 + 160000 + 800 + 4000 + 20
    assert m(torch.randn(5, 3, 28, 28)).shape == (5, 10)


def test_grey_fold_matches_rgb_forward_and_gradients():
    torch.manual_seed(0)
    m = build_model("mlp400", 10)
    x = torch.randn(8, 1, 28, 28)
    y = torch.randint(0, 10, (8,))
    out1 = m(x)
    torch.nn.functional.cross_entropy(out1, y).backward()
    g1 = m.input.lin.weight.grad.clone()
    m.zero_grad()
    out3 = m(x.expand(-1, 3, -1, -1).contiguous())
    torch.nn.functional.cross_entropy(out3, y).backward()
    g3 = m.input.lin.weight.grad
    assert torch.allclose(out1, out3, atol=1e-5)
    assert torch.allclose(g1, g3, atol=1e-6)


def test_unknown_model():
    try:
        build_model("resnet999", 10)
    except ValueError as e:
        assert "mlp400" in str(e)
    else:
        raise AssertionError


def test_grey_sgd_fold_follows_the_3_channel_model_exactly():
    """20 SGD steps (momentum, Nesterov, weight decay) on grey images: the folded model and the
    3-channel model fed the image three times stay equal (float64, so rounding cannot grow)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        _fold_run()
    finally:
        torch.set_default_dtype(old)


def train_side_by_side(full, fold, opts) -> torch.Generator:
    """20 steps of the 3-channel model (each grey batch repeated 3 times) and the folded one on the same
    batches; the generator that drew them, for the test inputs."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        x = torch.randn(16, 1, 28, 28, generator=gen)
        y = torch.randint(0, 10, (16,), generator=gen)
        for m, o, inp in ((full, opts[0], x.expand(-1, 3, -1, -1)), (fold, opts[1], x)):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(inp), y).backward()
            o.step()
    return gen


def _fold_run():
    torch.manual_seed(0)
    full = build_model("mlp400", 10)
    torch.manual_seed(0)
    fold = build_model("mlp400", 10, grey_fold="sgd")
    w = full.input.lin.weight.detach()
    assert torch.allclose(fold.input.lin.weight, w.view(400, 3, 784).sum(1))
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
            for m in (full, fold)]
    gen = train_side_by_side(full, fold, opts)
    x = torch.randn(32, 1, 28, 28, generator=gen)
    full.eval(), fold.eval()
    assert torch.allclose(full(x.expand(-1, 3, -1, -1)), fold(x), atol=1e-9)
    w = full.input.lin.weight.detach()
    assert torch.allclose(fold.input.lin.weight, w.view(400, 3, 784).sum(1), atol=1e-9)


def test_grey_adam_fold_follows_the_3_channel_model():
    """20 steps of Adam without weight decay on grey images: the Adam-folded model (Q = W_eff / 3, forward 3 Q)
    and the 3-channel model fed the image three times agree, in float64 to 1e-9 and in float32 to rounding (the
    sum of three slices against three times one: the two paths differ only in the last bits)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        full, fold, x = _adam_fold_run()
        assert torch.allclose(full(x.expand(-1, 3, -1, -1)), fold(x), atol=1e-9, rtol=0)
        w = full.input.lin.weight.detach().view(400, 3, 784)
        assert torch.allclose(3 * fold.input.lin.weight, w.sum(1), atol=1e-9, rtol=0)
        assert torch.allclose(w[:, 1] - w[:, 0], full_init_gap(), atol=1e-12)  # every slice moved by the same step
    finally:
        torch.set_default_dtype(old)
    full, fold, x = _adam_fold_run()
    a, b = full(x.expand(-1, 3, -1, -1)), fold(x)
    assert not torch.equal(a, b) and torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def full_init_gap() -> torch.Tensor:
    torch.manual_seed(0)
    w = build_model("mlp400", 10).input.lin.weight.detach().view(400, 3, 784)
    return w[:, 1] - w[:, 0]


def _adam_fold_run():
    torch.manual_seed(0)
    full = build_model("mlp400", 10)
    torch.manual_seed(0)
    fold = build_model("mlp400", 10, grey_fold="adam")
    assert fold.folded() == {} and fold.input.lin.weight.shape == (400, 784)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3, weight_decay=0.0) for m in (full, fold)]
    gen = train_side_by_side(full, fold, opts)
    full.eval(), fold.eval()
    return full, fold, torch.randn(32, 1, 28, 28, generator=gen)


def test_clipped_norm_of_a_folded_mlp400_counts_every_slice():
    """clip_grad_norm_unfolded: the total gradient norm of an SGD- or Adam-folded mlp400 is the 3-channel
    model's (float64), and the clipped gradients follow; without a fold it is torch's own."""
    from methods.engine.optim import clip_grad_norm_unfolded

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        x = torch.randn(16, 1, 28, 28)
        y = torch.randint(0, 10, (16,))
        norms = {}
        for fold in (None, "sgd", "adam"):
            torch.manual_seed(0)
            m = build_model("mlp400", 10, grey_fold=fold)
            inp = x.expand(-1, 3, -1, -1) if fold is None else x
            torch.nn.functional.cross_entropy(m(inp), y).backward()
            g = m.input.lin.weight.grad.clone()
            norms[fold] = clip_grad_norm_unfolded(m, 1e-3)
            coef = 1e-3 / (norms[fold] + 1e-6)
            assert torch.allclose(m.input.lin.weight.grad, g * coef)
        assert torch.allclose(norms["sgd"], norms[None]) and torch.allclose(norms["adam"], norms[None])
    finally:
        torch.set_default_dtype(old)
    torch.manual_seed(0)
    a = build_model("mlp400", 10)
    b = build_model("mlp400", 10)
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        torch.nn.functional.cross_entropy(m(x.float()), y).backward()
    assert torch.equal(clip_grad_norm_unfolded(a, 0.5), torch.nn.utils.clip_grad_norm_(b.parameters(), 0.5))
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(a.parameters(), b.parameters()))
