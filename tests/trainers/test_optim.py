"""Normalized optimizers: written formulas, cross-checks against `adamp` and
`pytorch_optimizer`, the NorMuon / AdamP / Newton-Schulz properties, dtypes, state round trip."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from trainers.config import OptimizerConfig
from trainers.optim import (
    OPTIMIZERS,
    SGDP,
    AdamP,
    Conda,
    Muon,
    NorMuon,
    build_optimizer,
    newton_schulz,
    split_parameters,
)

A, B, C = 3.4445, -4.7750, 2.0315
SHAPES = [(6, 4), (4, 6), (3, 2, 2, 2)]  # tall, wide, conv weight (viewed as 3 x 8)


def make_params(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(*s, generator=g, dtype=dtype)) for s in SHAPES] + [
        nn.Parameter(torch.randn(5, generator=g, dtype=dtype))]


def grad_sequence(params, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
            for _ in range(steps)]


def run(optimizer, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        optimizer.step()


# --------------------------------------------------------------------------- references


def ns_via_svd(m: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Newton-Schulz acts on singular values: s <- a s + b s^3 + c s^5, from s / ||m||_F."""
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    s = s / m.norm()
    for _ in range(steps):
        s = A * s + B * s**3 + C * s**5
    return u @ torch.diag(s) @ vh


def adamw_reference(p, grads, lr, betas, eps, wd):
    p, m, v = p.clone(), torch.zeros_like(p), torch.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        p = p * (1 - lr * wd)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        mhat, vhat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        p = p - lr * mhat / (vhat.sqrt() + eps)
    return p


def muon_reference(p, grads, lr, beta, wd, normuon_beta2=None, eps=1e-10):
    shape = p.shape
    w = p.clone().reshape(shape[0], -1)
    m = torch.zeros_like(w)
    v = torch.zeros(w.shape[0], 1, dtype=w.dtype)
    scale = math.sqrt(max(1.0, w.shape[0] / w.shape[1]))
    for g in grads:
        g = g.reshape(w.shape)
        m = beta * m + (1 - beta) * g
        o = ns_via_svd(beta * m + (1 - beta) * g)
        if normuon_beta2 is not None:
            v = normuon_beta2 * v + (1 - normuon_beta2) * (o**2).mean(dim=1, keepdim=True)
            o_hat = o / (v.sqrt() + eps)
            o = o_hat * o.norm() / (o_hat.norm() + eps)
        w = w * (1 - lr * wd) - lr * scale * o
    return w.reshape(shape)


def conda_reference(p, grads, lr, betas, eps, period, wd):
    shape = p.shape
    w = p.clone().reshape(shape[0], -1)
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    rows, cols = w.shape
    for t, g in enumerate(grads, start=1):
        g = g.reshape(w.shape)
        m = betas[0] * m + (1 - betas[0]) * g
        if (t - 1) % period == 0:
            u, _, vh = torch.linalg.svd(m, full_matrices=False)
            basis = vh.T if rows >= cols else u
        proj = (lambda x, P=basis: x @ P) if rows >= cols else (lambda x, P=basis: P.T @ x)
        back = (lambda x, P=basis: x @ P.T) if rows >= cols else (lambda x, P=basis: P @ x)
        gp = proj(g)
        v = betas[1] * v + (1 - betas[1]) * gp * gp
        step = lr * math.sqrt(1 - betas[1] ** t) / (1 - betas[0] ** t)
        w = w * (1 - lr * wd) - step * back(proj(m) / (v.sqrt() + eps))
    return w.reshape(shape)


# --------------------------------------------------------------------------- formulas


@pytest.mark.float64
@pytest.mark.parametrize("kind", ["muon", "normuon"])
def test_muon_family_matches_written_formula(kind):
    params = make_params()
    start = [p.detach().clone() for p in params]
    grads = grad_sequence(params, 4)
    cls = Muon if kind == "muon" else NorMuon
    opt = cls([{"params": params[:3], "matrix": True},
               {"params": params[3:], "matrix": False, "lr": 0.01}],
              lr=0.05, momentum=0.9, weight_decay=0.1, adamw_betas=(0.8, 0.9), adamw_eps=1e-8)
    run(opt, params, grads)
    for i in range(3):
        expected = muon_reference(start[i], [g[i] for g in grads], 0.05, 0.9, 0.1,
                                  normuon_beta2=0.95 if kind == "normuon" else None)
        torch.testing.assert_close(params[i].detach(), expected, rtol=1e-9, atol=1e-11)
    expected = adamw_reference(start[3], [g[3] for g in grads], 0.01, (0.8, 0.9), 1e-8, 0.1)
    torch.testing.assert_close(params[3].detach(), expected, rtol=1e-12, atol=1e-13)


@pytest.mark.float64
@pytest.mark.parametrize("period", [1, 2, 100])
def test_conda_matches_written_formula(period):
    params = make_params()[:3]
    start = [p.detach().clone() for p in params]
    grads = grad_sequence(params, 5)
    opt = Conda(params, lr=0.01, betas=(0.9, 0.99), eps=1e-8, update_period=period,
                weight_decay=0.05)
    run(opt, params, grads)
    for i in range(3):
        expected = conda_reference(start[i], [g[i] for g in grads], 0.01, (0.9, 0.99), 1e-8,
                                   period, 0.05)
        torch.testing.assert_close(params[i].detach(), expected, rtol=1e-9, atol=1e-11)


@pytest.mark.float64
def test_hybrid_adamw_part_matches_torch_adamw():
    a, b = make_params()[3:], make_params()[3:]
    grads = grad_sequence(a, 5)
    run(Muon(a, lr=0.01, weight_decay=0.1, adamw_betas=(0.9, 0.95), adamw_eps=1e-8), a, grads)
    run(torch.optim.AdamW(b, lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1), b, grads)
    torch.testing.assert_close(a[0].detach(), b[0].detach(), rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- cross-checks


def scale_invariant_grads(params, steps, seed=2):
    """Gradients of f(W / ||W_row||): orthogonal to every row, so AdamP's projection fires."""
    g = torch.Generator().manual_seed(seed)
    targets = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]

    def compute():
        out = []
        for p, t in zip(params, targets):
            q = p.detach().clone().requires_grad_(True)
            rows = q.reshape(q.shape[0], -1)
            (torch.sin(rows / rows.norm(dim=1, keepdim=True)) * t.reshape(rows.shape)).sum() \
                .backward()
            out.append(q.grad)
        return out

    return compute


@pytest.mark.float64
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_adamp_sgdp_match_adamp_package(name, nesterov):
    adamp = pytest.importorskip("adamp")
    ours, theirs = make_params(), make_params()
    kwargs = dict(lr=0.05, weight_decay=0.1, nesterov=nesterov, delta=0.1, wd_ratio=0.1)
    if name == "adamp":
        a = AdamP(ours, betas=(0.9, 0.99), **kwargs)
        b = adamp.AdamP(theirs, betas=(0.9, 0.99), **kwargs)
    else:
        a = SGDP(ours, momentum=0.9, **kwargs)
        b = adamp.SGDP(theirs, momentum=0.9, dampening=0, **kwargs)
    # mix plain random gradients with scale-invariant ones so both branches run
    plain = grad_sequence(ours, 3)
    for step in range(6):
        for opt, params in ((a, ours), (b, theirs)):
            grads = plain[step] if step < 3 else scale_invariant_grads(params[:3], 1)() + [
                plain[0][3]]
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-10, atol=1e-12)


def _float64_newton_schulz(monkeypatch, module):
    # pytorch_optimizer iterates Newton-Schulz in bfloat16 by default; compare in float64.
    from pytorch_optimizer.optimizer.utils.matrix import zero_power_via_newton_schulz_5

    monkeypatch.setattr(module, "zero_power_via_newton_schulz_5",
                        functools.partial(zero_power_via_newton_schulz_5, dtype=torch.float64))


@pytest.mark.float64
@pytest.mark.parametrize("name", ["muon", "normuon"])
def test_muon_normuon_match_pytorch_optimizer(name, monkeypatch):
    po = pytest.importorskip("pytorch_optimizer")
    import pytorch_optimizer.optimizer.muon.base as base
    import pytorch_optimizer.optimizer.muon.normuon as normuon_module

    _float64_newton_schulz(monkeypatch, base)
    _float64_newton_schulz(monkeypatch, normuon_module)
    ours, theirs = make_params(), make_params()
    common = dict(lr=0.02, momentum=0.95, weight_decay=0.01)
    groups = [dict(params=theirs[:3], use_muon=True),
              dict(params=theirs[3:], use_muon=False, lr=3e-3, betas=(0.9, 0.95), eps=1e-8,
                   weight_decay=0.0)]
    if name == "muon":
        b = po.Muon(groups, foreach=False, **common)
        a_cls = Muon
    else:
        b = po.NorMuon(groups, foreach=False, beta2=0.95, eps=1e-10, **common)
        a_cls = NorMuon
    a = a_cls([{"params": ours[:3], "matrix": True},
               {"params": ours[3:], "matrix": False, "lr": 3e-3, "weight_decay": 0.0}],
              adamw_betas=(0.9, 0.95), adamw_eps=1e-8, **common)
    grads = grad_sequence(ours, 5)
    run(a, ours, grads)
    run(b, theirs, grads)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-8, atol=1e-10)


@pytest.mark.float64
@pytest.mark.parametrize("period", [1, 100])
def test_conda_matches_pytorch_optimizer(period):
    """Same SVD refresh steps only for period 1 or > steps: pytorch_optimizer refreshes at
    steps 1, K, 2K, ... (one step earlier than the paper's 1, K+1, ...). It also applies the
    weight decay after the step: compared with weight_decay=0. Matrices only (its 1-D rule is
    Adam with eps outside the bias correction; ours is AdamW)."""
    po = pytest.importorskip("pytorch_optimizer")
    ours, theirs = make_params()[:2], make_params()[:2]
    a = Conda(ours, lr=0.01, betas=(0.9, 0.99), eps=1e-8, update_period=period)
    b = po.Conda(theirs, lr=0.01, betas=(0.9, 0.99), eps=1e-8, update_proj_gap=period,
                 foreach=False)
    grads = grad_sequence(ours, 6)
    run(a, ours, grads)
    run(b, theirs, grads)
    for p, q in zip(ours, theirs):
        # pytorch_optimizer takes the SVD in float32 even for float64 parameters
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (33, 47), (256, 64)])
def test_newton_schulz_singular_values_in_band(dtype, shape):
    """Rectangular Gaussian inputs land in roughly [0.68, 1.13] (the quintic's max is ~1.134);
    an SVD-free check that the result is U V^T up to that band."""
    g = torch.randn(*shape, dtype=dtype)
    out = newton_schulz(g)
    assert out.dtype == dtype and out.shape == g.shape
    s = torch.linalg.svdvals(out.double())
    assert s.min() > 0.675 and s.max() < 1.135, (s.min().item(), s.max().item())
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    cos = (out.double() * (u @ vh)).sum() / (out.double().norm() * (u @ vh).norm())
    assert cos > 0.98
    # the same singular vectors as the exact orthogonalisation
    torch.testing.assert_close(out.double(), ns_via_svd(g.double()), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normuon_first_update_has_equal_row_norms(dtype):
    w = nn.Parameter(torch.randn(12, 20, dtype=dtype))
    before = w.detach().clone()
    w.grad = torch.randn_like(w) * torch.linspace(0.01, 10, 12, dtype=dtype)[:, None]
    NorMuon([w], lr=0.1).step()
    rows = (before - w.detach()).norm(dim=1)
    torch.testing.assert_close(rows, rows.mean().expand_as(rows), rtol=1e-4, atol=0)
    # Muon's update has unequal rows for the same gradient (the property is NorMuon's own)
    m = nn.Parameter(before.clone())
    m.grad = torch.randn_like(m) * torch.linspace(0.01, 10, 12, dtype=dtype)[:, None]
    Muon([m], lr=0.1).step()
    muon_rows = (before - m.detach()).norm(dim=1)
    assert (muon_rows.max() - muon_rows.min()) / muon_rows.mean() > 1e-2


@pytest.mark.float64
def test_adamp_step_is_orthogonal_to_weights_when_projected():
    w = nn.Parameter(torch.randn(8, 16))
    opt = AdamP([w], lr=0.1)
    grads = scale_invariant_grads([w], 1)
    for _ in range(3):
        before = w.detach().clone()
        w.grad = grads()[0]
        opt.step()
        step = w.detach() - before
        cosine = (step * before).sum(dim=1) / (step.norm(dim=1) * before.norm(dim=1))
        assert cosine.abs().max() < 1e-7  # exact up to the eps=1e-8 in w / (||w|| + eps)
    # plain Adam on the same gradients has a radial component
    v = nn.Parameter(before.clone())
    v.grad = scale_invariant_grads([v], 1)()[0]
    torch.optim.Adam([v], lr=0.1).step()
    step = v.detach() - before
    cosine = (step * before).sum(dim=1) / (step.norm(dim=1) * before.norm(dim=1))
    assert cosine.abs().max() > 1e-3


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_float32_tracks_float64_and_state_round_trips(name):
    config = OptimizerConfig(name=name, lr=0.01, weight_decay=0.01)
    results = {}
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.LayerNorm(16),
                              nn.Linear(16, 5)).to(dtype)
        data = torch.randn(8, 2, 4, 4, dtype=torch.float64).to(dtype)
        target = torch.randn(8, 5, dtype=torch.float64).to(dtype)
        opt = build_optimizer(model, config)

        def step(model=model, opt=opt, data=data, target=target):
            opt.zero_grad()
            (model(data) - target).pow(2).mean().backward()
            opt.step()

        for _ in range(3):
            step()
        for _ in range(2):
            step()
        continued = [p.detach().clone() for p in model.parameters()]
        results[dtype] = continued
        assert all(p.dtype == dtype for p in model.parameters())
        for state in opt.state.values():
            assert all(v.dtype == dtype for k, v in state.items() if torch.is_tensor(v)
                       and k != "step")
        # a fresh optimizer loaded from the state dict continues identically
        torch.manual_seed(0)
        clone = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.LayerNorm(16),
                              nn.Linear(16, 5)).to(dtype)
        opt2 = build_optimizer(clone, config)
        for _ in range(3):
            opt2.zero_grad()
            (clone(data) - target).pow(2).mean().backward()
            opt2.step()
        opt3 = build_optimizer(clone, config)
        opt3.load_state_dict(opt2.state_dict())
        for _ in range(2):
            opt3.zero_grad()
            (clone(data) - target).pow(2).mean().backward()
            opt3.step()
        for p, q in zip(clone.parameters(), continued):
            torch.testing.assert_close(p.detach(), q, rtol=0, atol=0)
    for a, b in zip(results[torch.float32], results[torch.float64]):
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-4)


def test_parameter_split_rule():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 8)
            self.pos_embedding = nn.Parameter(torch.zeros(1, 4, 8))
            self.block = nn.Linear(8, 8)
            self.conv = nn.Conv2d(8, 8, 3)
            self.norm = nn.LayerNorm(8)
            self.head = nn.Linear(8, 10)

    matrix, other = split_parameters(Net())
    assert sorted(n for n, _ in matrix) == ["block.weight", "conv.weight"]
    assert sorted(n for n, _ in other) == sorted([
        "embed.weight", "pos_embedding", "block.bias", "conv.bias", "norm.weight", "norm.bias",
        "head.weight", "head.bias"])
    opt = build_optimizer(Net(), OptimizerConfig(name="muon", lr=0.02, adamw_lr=1e-3,
                                                 weight_decay=0.1))
    by_kind = {(g["matrix"], g["weight_decay"], g["lr"]): len(g["params"])
               for g in opt.param_groups}
    assert by_kind == {(True, 0.1, 0.02): 2, (False, 0.1, 1e-3): 3, (False, 0.0, 1e-3): 5}


@pytest.mark.gpu
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_cuda_matches_cpu(name):
    config = OptimizerConfig(name=name, lr=0.01)
    outs = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4)).double().to(device)
        data = torch.randn(8, 16, dtype=torch.float64).to(device)
        target = torch.randn(8, 4, dtype=torch.float64).to(device)
        opt = build_optimizer(model, config)
        for _ in range(3):
            opt.zero_grad()
            (model(data) - target).pow(2).mean().backward()
            opt.step()
        outs.append([p.detach().cpu() for p in model.parameters()])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
