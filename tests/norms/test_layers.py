"""Each normalization layer against its formula (float64) and the properties of the reference."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import norms
from norms.batchchannel import standardize_weight

pytestmark = pytest.mark.float64


def _affine_check(layer, shape):
    """An eval-mode layer is a per-channel affine map: f(a x + (1 - a) y) = a f(x) + (1-a) f(y)."""
    x, y = torch.randn(shape) * 3, torch.randn(shape) + 2
    a = 0.3
    torch.testing.assert_close(layer(a * x + (1 - a) * y), a * layer(x) + (1 - a) * layer(y))


# ----------------------------------------------------------------------------- LN / RMS / CRMS


def test_layernorm_matches_torch():
    x = torch.randn(4, 6, 10, requires_grad=True)
    ours = norms.build_norm("layernorm", 10)
    ref = torch.nn.LayerNorm(10, eps=1e-5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5), ours.bias.normal_()
        ref.weight.copy_(ours.weight), ref.bias.copy_(ours.bias)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-12)


def test_rmsnorm_matches_torch_values_and_gradients():
    ours = norms.build_norm("rmsnorm", 10)
    ref = torch.nn.RMSNorm(10, eps=1e-5)  # eps passed explicitly: None means finfo.eps
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ref.weight.copy_(ours.weight)
    x = (torch.randn(4, 6, 10) + 0.7).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    dy = torch.randn(4, 6, 10)
    y, y_ref = ours(x), ref(x_ref)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    y.backward(dy)
    y_ref.backward(dy)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-11)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=0, atol=1e-11)


@pytest.mark.parametrize("fn", [norms.functional.rms_norm, norms.functional.crms_norm])
def test_uncentred_kernels_gradcheck(fn):
    x = (torch.randn(3, 4, 6) + 0.5).requires_grad_()
    w = (torch.rand(6) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, 1e-5), (x, w))


def test_rms_equals_layernorm_on_zero_mean_rows():
    x = torch.randn(5, 7, 12)
    x = x - x.mean(-1, keepdim=True)
    rms, ln = norms.build_norm("rmsnorm", 12), norms.build_norm("layernorm", 12)
    with torch.no_grad():
        rms.weight.uniform_(0.5, 1.5)
        ln.weight.copy_(rms.weight)
    torch.testing.assert_close(rms(x), ln(x), rtol=0, atol=1e-12)
    shifted = x + 1.0  # and the two differ as soon as the rows are not centred
    assert not torch.allclose(rms(shifted), ln(shifted), atol=1e-3)


def test_crmsnorm_formula():
    layer = norms.build_norm("crmsnorm", 9, eps=1e-4)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 9) + 0.3
    d = 10
    denom = torch.sqrt((x.square().sum(-1, keepdim=True) + x.sum(-1, keepdim=True) ** 2) / d + 1e-4)
    torch.testing.assert_close(layer(x), x / denom * layer.weight, rtol=0, atol=1e-12)


def test_crms_of_compressed_equals_rms_of_full_zero_mean_vector():
    full = torch.randn(4, 6, 11)
    full = full - full.mean(-1, keepdim=True)  # zero-mean, d = 11
    crms, rms = norms.build_norm("crmsnorm", 10), norms.build_norm("rmsnorm", 11)
    torch.testing.assert_close(crms(full[..., :10]), rms(full)[..., :10], rtol=0, atol=1e-12)
    # The same holds for [x, -sum x] built from any compressed x.
    x = torch.randn(4, 6, 10) * 2 + 1
    torch.testing.assert_close(
        crms(x), rms(torch.cat([x, -x.sum(-1, keepdim=True)], -1))[..., :10], rtol=0, atol=1e-12
    )


# ----------------------------------------------------------------------------- PowerNorm


class _ReferencePowerNorm:
    """Independent re-statement of Shen et al. 2020, Algorithm 1 (with warm-up)."""

    def __init__(self, c, warmup, alpha_fwd=0.9, alpha_bkw=0.9, eps=1e-5):
        self.phi, self.ema = torch.ones(c), torch.zeros(c)
        self.warmup, self.af, self.ab, self.eps, self.step = warmup, alpha_fwd, alpha_bkw, eps, 0

    def step_forward_backward(self, x, w, b, dy, keep):
        self.step += 1
        rows, g_rows = x.reshape(-1, x.shape[-1]), dy.reshape(-1, x.shape[-1])
        k = keep.reshape(-1)
        psi_b = (rows[k] ** 2).mean(0)
        psi = psi_b if self.step <= self.warmup else self.phi.clone()
        if self.step <= self.warmup:
            self.phi = self.phi * (self.step - 1) / self.step + psi_b / self.step
        else:
            self.phi = self.af * self.phi + (1 - self.af) * psi_b
        z = rows / torch.sqrt(psi + self.eps)
        y = w * z + b
        g = g_rows * w
        approx = g - (1 - self.ab) * self.ema * z
        self.ema = self.ema + (approx * z)[k].mean(0)
        gx = approx / torch.sqrt(psi + self.eps)
        return y.view_as(x), gx.view_as(x), (g_rows * z).sum(0), g_rows.sum(0)


@pytest.mark.parametrize("with_mask", [False, True])
def test_powernorm_forward_backward_against_algorithm(with_mask):
    c, warmup = 6, 2
    layer = norms.build_norm("powernorm", c, warmup_iters=warmup)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5), layer.bias.normal_()
    ref = _ReferencePowerNorm(c, warmup)
    for _ in range(5):
        x = (torch.randn(3, 7, c) * 2 + 0.5).requires_grad_()
        pad = torch.rand(3, 7) < 0.3 if with_mask else torch.zeros(3, 7, dtype=torch.bool)
        pad[0, 0] = False
        dy = torch.randn(3, 7, c)
        layer.zero_grad()
        y = layer(x, pad_mask=pad if with_mask else None)
        y.backward(dy)
        y_ref, gx_ref, gw_ref, gb_ref = ref.step_forward_backward(
            x.detach(), layer.weight.detach(), layer.bias.detach(), dy, ~pad
        )
        torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(x.grad, gx_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(layer.weight.grad, gw_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(layer.bias.grad, gb_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(layer.running_phi, ref.phi, rtol=0, atol=1e-12)
        torch.testing.assert_close(layer.ema_gz, ref.ema, rtol=0, atol=1e-12)


def test_powernorm_padding_is_ignored_by_statistics():
    layer = norms.build_norm("powernorm", 4)
    x = torch.randn(2, 5, 4)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1, 3:] = True
    noisy = x.clone()
    noisy[1, 3:] = 1e3  # garbage in the padding
    a = layer(x, pad_mask=pad)
    b = layer(noisy, pad_mask=pad)
    torch.testing.assert_close(a[~pad], b[~pad], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="pad_mask must have shape"):
        layer(x, pad_mask=pad[:, :3])


def test_powernorm_eval_is_affine_and_not_shift_invariant():
    layer = norms.build_norm("powernorm", 5, warmup_iters=1)
    for _ in range(3):
        layer(torch.randn(4, 3, 5) * 2 + 1).sum().backward()
    x = torch.randn(4, 3, 5)
    train_a, train_b = layer(x), layer(x + 3.0)
    assert not torch.allclose(train_a, train_b, atol=1e-3)  # no mean subtraction
    layer.eval()
    _affine_check(layer, (4, 3, 5))
    scale, shift = layer.fused_affine()
    torch.testing.assert_close(layer(x), x * scale + shift, rtol=0, atol=1e-12)
    torch.testing.assert_close(scale, layer.weight / torch.sqrt(layer.running_phi + layer.eps))


def test_powernorm_group_scaling():
    layer = norms.build_norm("powernorm", 8, group_scaling=2)
    x = torch.randn(3, 4, 8) * 5
    grouped = x.view(3, 4, 2, 4)
    scaled = (grouped / torch.sqrt(grouped.square().mean(-1, keepdim=True) + 1e-5)).view_as(x)
    expected = scaled / torch.sqrt(scaled.square().mean((0, 1)) + 1e-5)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="not affine"):
        layer.fused_affine()
    with pytest.raises(ValueError, match="group_scaling"):
        norms.build_norm("powernorm", 8, group_scaling=3)


# ----------------------------------------------------------------------------- Unified Norm


class _ReferenceUnifiedNorm:
    """Independent re-statement of UN (Yang et al. 2022) without outlier filtration."""

    def __init__(self, c, window, warmup, start, momentum=0.9, eps=1e-5):
        self.buf_x2, self.buf_gz = torch.ones(window, c), torch.zeros(window, c)
        self.ema, self.running = torch.zeros(c), torch.ones(c)
        self.w, self.warmup, self.start, self.m, self.eps, self.step = (
            window,
            warmup,
            start,
            momentum,
            eps,
            0,
        )

    def step_forward_backward(self, x, gamma, beta, dy):
        self.step += 1
        t, c = self.step, x.shape[-1]
        rows, g_rows = x.reshape(-1, c), dy.reshape(-1, c)
        x2 = (rows**2).mean(0)
        self.buf_x2[t % self.w] = x2
        windowed = t > self.w and t >= self.warmup
        var = torch.exp(torch.log(self.buf_x2).mean(0)) if windowed else x2
        if t <= max(self.start, self.warmup):
            r = torch.ones(c)
        else:
            r = torch.sqrt((var + self.eps) / (self.running + self.eps)).clamp(0.2, 5)
        self.running = self.m * self.running + (1 - self.m) * var
        z = rows / torch.sqrt(var + self.eps)
        y = gamma * z + beta
        g = g_rows * gamma * r
        gz = (g * z).mean(0)
        self.buf_gz[t % self.w] = gz
        target = self.buf_gz.mean(0) if windowed else gz
        self.ema = self.m * self.ema + (1 - self.m) * target
        gx = (g - self.ema * z) / torch.sqrt(var + self.eps)
        return y.view_as(x), gx.view_as(x), (g_rows * r * z).sum(0), g_rows.sum(0)


def test_unifiednorm_forward_backward_against_reference():
    c = 5
    layer = norms.build_norm("unifiednorm", c, window_size=3, warmup_iters=2, compensation_start=4)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5), layer.bias.normal_()
    ref = _ReferenceUnifiedNorm(c, 3, 2, 4)
    for step in range(8):
        x = (torch.randn(4, 6, c) * (1 + step % 3) + 0.2).requires_grad_()
        dy = torch.randn(4, 6, c)
        layer.zero_grad()
        y = layer(x)
        y.backward(dy)
        y_ref, gx_ref, gw_ref, gb_ref = ref.step_forward_backward(
            x.detach(), layer.weight.detach(), layer.bias.detach(), dy
        )
        torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(x.grad, gx_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(layer.weight.grad, gw_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(layer.bias.grad, gb_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(layer.running_var, ref.running, rtol=0, atol=1e-12)


def test_unifiednorm_geometric_mean_window():
    layer = norms.build_norm("unifiednorm", 3, window_size=2, warmup_iters=0)
    batches = [torch.randn(8, 3) * s for s in (1.0, 2.0, 3.0)]
    with torch.no_grad():
        for b in batches:
            out = layer(b)
    x2 = [b.square().mean(0) for b in batches[1:]]
    expected = batches[-1] / torch.sqrt(torch.sqrt(x2[0] * x2[1]) + 1e-5)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_unifiednorm_outlier_filtration():
    layer = norms.build_norm(
        "unifiednorm", 4, window_size=4, warmup_iters=0, outlier_filtration=True
    )
    with torch.no_grad():
        # Channels of different scales, as in a trained network: the recorded variance of
        # sqrt(x^2) over the window is then dominated by the channel spread.
        scales = torch.tensor([0.5, 1.0, 2.0, 4.0])
        for _ in range(8):
            layer(torch.randn(256, 4) * scales)
        assert int(layer.num_outliers) == 0
        spike = torch.randn(256, 4) * scales * 50
        out = layer(spike)
    assert int(layer.num_outliers) == 1
    # An outlier batch normalises with its own statistic, and its slot holds the running one.
    expected = spike / torch.sqrt(spike.square().mean(0) + 1e-5)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert float(layer.buffer_x2.max()) < 100  # the spike (x^2 ~ 2500 * scale^2) was dropped


def test_unifiednorm_eval_is_affine():
    layer = norms.build_norm("unifiednorm", 5, warmup_iters=0)
    for _ in range(5):
        layer(torch.randn(4, 3, 5) * 2 + 1).sum().backward()
    layer.eval()
    _affine_check(layer, (2, 3, 5))
    scale, shift = layer.fused_affine()
    x = torch.randn(2, 3, 5)
    torch.testing.assert_close(layer(x), x * scale + shift, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- EvoNorm


def _evo_b0_formula(x, v, w, b, var_c, eps):
    spatial = tuple(range(2, x.dim()))
    view = (1, -1) + (1,) * len(spatial)
    inst = x.var(dim=spatial, correction=0, keepdim=True)
    den = torch.maximum(
        torch.sqrt(var_c.view(view) + eps), v.view(view) * x + torch.sqrt(inst + eps)
    )
    return x / den * w.view(view) + b.view(view)


@pytest.mark.parametrize("shape", [(4, 6, 5, 5), (3, 6, 7), (2, 6, 2, 3, 3)])
def test_evonorm_b0_formula_train_and_eval(shape):
    layer = norms.build_norm("evonorm_b0", 6)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(0.5, 1.5)
    x = torch.randn(shape) * 2 + 0.3
    batch_var = x.transpose(0, 1).reshape(6, -1).var(1, correction=0)
    y = layer(x)
    torch.testing.assert_close(
        y, _evo_b0_formula(x, layer.v, layer.weight, layer.bias, batch_var, 1e-3),
        rtol=0, atol=1e-10,
    )  # fmt: skip
    n = x.numel() / 6
    torch.testing.assert_close(layer.running_var, 0.9 + 0.1 * batch_var * n / (n - 1))
    layer.eval()
    torch.testing.assert_close(
        layer(x), _evo_b0_formula(x, layer.v, layer.weight, layer.bias, layer.running_var, 1e-3),
        rtol=0, atol=1e-10,
    )  # fmt: skip


@pytest.mark.parametrize("shape", [(4, 8, 5, 5), (3, 8, 7)])
def test_evonorm_s0_formula(shape):
    layer = norms.build_norm("evonorm_s0", 8, groups=4)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(0.5, 1.5)
    x = torch.randn(shape) * 2 + 0.3
    grouped = x.reshape(x.shape[0], 4, -1)
    std = torch.sqrt(grouped.var(2, correction=0, keepdim=True) + 1e-5)
    std = std.expand_as(grouped).reshape(x.shape)
    view = (1, -1) + (1,) * (x.dim() - 2)
    expected = x * torch.sigmoid(layer.v.view(view) * x) / std * layer.weight.view(view)
    torch.testing.assert_close(layer(x), expected + layer.bias.view(view), rtol=0, atol=1e-10)


def _float32(fn):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        return fn()
    finally:
        torch.set_default_dtype(previous)


def test_evonorm_matches_timm():
    timm_layers = pytest.importorskip("timm.layers")

    def run():
        ours_b0, theirs_b0 = norms.build_norm("evonorm_b0", 16), timm_layers.EvoNorm2dB0(16)
        ours_s0 = norms.build_norm("evonorm_s0", 16, groups=4)
        theirs_s0 = timm_layers.EvoNorm2dS0(16, groups=4)
        for ours, theirs in ((ours_b0, theirs_b0), (ours_s0, theirs_s0)):
            with torch.no_grad():
                for name in ("weight", "bias", "v"):
                    getattr(ours, name).uniform_(0.5, 1.5)
                    getattr(theirs, name).copy_(getattr(ours, name))
            for mode in ("train", "eval"):
                ours.train(mode == "train"), theirs.train(mode == "train")
                x = torch.randn(4, 16, 6, 6) * 2 + 0.5
                torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours_b0.running_var, theirs_b0.running_var)

    _float32(run)


# ----------------------------------------------------------------------------- BCN and WS


def test_batchchannelnorm_formula_train_and_eval():
    layer = norms.build_norm("batchchannelnorm", 8, num_groups=2)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(0.5, 1.5)
    x = torch.randn(3, 8, 4, 4) * 2 + 1

    def expected(mean, var):
        bn = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5)
        bn = bn * layer.bn_weight.view(1, -1, 1, 1) + layer.bn_bias.view(1, -1, 1, 1)
        g = bn.reshape(3, 2, -1)
        gn = (g - g.mean(2, keepdim=True)) / torch.sqrt(g.var(2, correction=0, keepdim=True) + 1e-5)
        return (gn * layer.weight.view(1, 2, 1) + layer.bias.view(1, 2, 1)).view_as(x)

    batch_mean = x.mean((0, 2, 3))
    batch_var = x.var((0, 2, 3), correction=0)
    torch.testing.assert_close(layer(x), expected(batch_mean, batch_var), rtol=0, atol=1e-10)
    layer.eval()
    torch.testing.assert_close(
        layer(x), expected(layer.running_mean, layer.running_var), rtol=0, atol=1e-10
    )
    torch.testing.assert_close(layer.running_mean, 0.1 * batch_mean)


@pytest.mark.parametrize("train", [True, False])
def test_batchchannelnorm_gradcheck(train):
    """Through norms.moments: x and all four parameter vectors, batch and running statistics."""
    layer = norms.build_norm("batchchannelnorm", 6, num_groups=3).train(train)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(0.5, 1.5)
        layer.running_mean.normal_(), layer.running_var.uniform_(0.5, 2.0)
    x = (torch.randn(2, 6, 3, 2) * 2 + 0.5).requires_grad_()
    names = ["bn_weight", "bn_bias", "weight", "bias"]
    params = [getattr(layer, n) for n in names]

    def f(x, *values):
        return torch.func.functional_call(layer, dict(zip(names, values, strict=True)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params))


def test_weight_standardization_statistics_and_conv():
    conv = torch.nn.Conv2d(3, 6, 3)
    with torch.no_grad():
        conv.weight.mul_(5).add_(0.7)
    raw = conv.weight.detach().clone()
    norms.weight_standardization(conv)
    w = conv.weight.flatten(1)
    torch.testing.assert_close(w.mean(1), torch.zeros(6), rtol=0, atol=1e-12)
    std = raw.flatten(1).std(1)
    torch.testing.assert_close(w.std(1), std / (std + 1e-5), rtol=0, atol=1e-12)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(conv(x), F.conv2d(x, standardize_weight(raw), conv.bias))
    conv(x).sum().backward()
    assert conv.parametrizations.weight.original.grad is not None
    ws = norms.WSConv2d(3, 6, 3)
    with torch.no_grad():
        ws.weight.copy_(raw)
        ws.bias.copy_(conv.bias)
    torch.testing.assert_close(ws(x), conv(x))
    norms.remove_weight_standardization(conv)
    assert isinstance(conv.weight, torch.nn.Parameter)
    torch.testing.assert_close(conv.weight.flatten(1).mean(1), torch.zeros(6), atol=1e-12, rtol=0)


def test_weight_standardization_on_a_container_and_bad_input():
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    norms.weight_standardization(model)
    for layer in (model[0], model[2]):
        torch.testing.assert_close(layer.weight.mean(1), torch.zeros(layer.out_features))
    with pytest.raises(ValueError, match="no Linear"):
        norms.weight_standardization(torch.nn.ReLU())


# ----------------------------------------------------------------------------- Region norms


def test_regionnorm_b_formula():
    layer = norms.build_norm("regionnorm_b", 3)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5), layer.bias.normal_()
    x = torch.randn(2, 3, 5, 5) * 2 + 1
    mask = (torch.rand(2, 1, 5, 5) > 0.4).double()
    y = layer(x, mask=mask)
    expected = torch.zeros_like(x)
    for r, m in ((0, mask == 0), (1, mask == 1)):
        m = m.expand_as(x)
        for c in range(3):
            vals = x[:, c][m[:, c]]
            mu, var = vals.mean(), vals.var(correction=0)
            norm = (x[:, c] - mu) / torch.sqrt(var + 1e-5) * layer.weight[r, c] + layer.bias[r, c]
            expected[:, c] = torch.where(m[:, c], norm, expected[:, c])
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-10)


def test_regionnorm_b_region_independence_and_mask_resize():
    layer = norms.build_norm("regionnorm_b", 4)
    x = torch.randn(2, 4, 8, 8)
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :2] = 1.0  # top half, given at half resolution
    full = F.interpolate(mask, size=(8, 8), mode="nearest").bool().expand_as(x)
    changed = x.clone()
    changed[~full] = torch.randn(int((~full).sum())) * 10 + 3  # rewrite region 0 only
    a, b = layer(x, mask=mask), layer(changed, mask=mask)
    torch.testing.assert_close(a[full], b[full], rtol=0, atol=1e-12)
    assert not torch.allclose(a[~full], b[~full])
    with pytest.raises(ValueError, match="mask must be"):
        layer(x, mask=torch.ones(3, 1, 8, 8))


def test_regionnorm_l_learns_mask_and_keeps_regions_independent():
    layer = norms.build_norm("regionnorm_l", 4, kernel_size=3)
    x = torch.randn(2, 4, 6, 6)
    x[:, :, :3] += 4.0  # a bright top half: high channel mean / max
    with torch.no_grad():
        layer.mask_conv.weight.fill_(0.5)
    soft = layer.importance(x)
    mask = (soft >= layer.threshold).expand_as(x)
    assert 0 < int(mask.sum()) < mask.numel()
    y = layer(x)
    gamma = layer._conv(layer.gamma_conv, soft)
    beta = layer._conv(layer.beta_conv, soft)
    for region in (mask, ~mask):
        vals = x.transpose(0, 1)[region.transpose(0, 1)].view(4, -1)
        mu = vals.mean(1).view(1, 4, 1, 1)
        var = vals.var(1, correction=0).view(1, 4, 1, 1)
        expected = ((x - mu) / torch.sqrt(var + 1e-5)) * (1 + gamma) + beta
        torch.testing.assert_close(y[region], expected[region], rtol=0, atol=1e-10)
    y.square().sum().backward()
    assert layer.mask_conv.weight.grad.abs().sum() > 0
    for shape in ((2, 4, 9), (1, 4, 2, 5, 5)):
        assert layer(torch.randn(shape)).shape == shape


@pytest.mark.parametrize("channels_in_mask", [1, 3])
def test_region_normalize_gradcheck(channels_in_mask):
    from norms.region import region_normalize

    x = (torch.randn(2, 3, 4, 4) * 2 + 1).requires_grad_()
    mask = (torch.rand(2, channels_in_mask, 4, 4) > 0.5).double()
    w = (torch.rand(2, 3) + 0.5).requires_grad_()
    b = torch.randn(2, 3).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda *a: region_normalize(a[0], mask, a[1], a[2], 1e-3), (x, w, b)
    )
    pix_scale = torch.randn(2, 1, 4, 4, requires_grad=True)
    pix_shift = torch.randn(2, 1, 4, 4, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: region_normalize(a[0], mask, a[1], a[2], 1e-3, a[3], a[4]),
        (x, w, b, pix_scale, pix_shift),
    )


@pytest.mark.parametrize("train", [True, False])
def test_evonorm_b0_gradcheck(train):
    layer = norms.build_norm("evonorm_b0", 3, eps=1e-2)
    with torch.no_grad():
        layer.v.copy_(torch.tensor([0.5, -0.7, 1.3]))
        layer.running_var.copy_(torch.tensor([0.5, 2.0, 1.0]))
    layer.train(train)
    x = (torch.randn(2, 3, 5) * 2 + 0.5).requires_grad_()
    params = (layer.v, layer.weight, layer.bias)
    from norms.evonorm import _EvoB0Function

    def f(x, v, w, b):
        return _EvoB0Function.apply(x, v, w, b, train, layer.running_var, 1e-2)[0]

    assert torch.autograd.gradcheck(f, (x, *params))


def test_evonorm_s0_gradcheck():
    from norms.evonorm import _EvoS0Function

    x = (torch.randn(2, 4, 5) * 2 + 0.5).requires_grad_()
    v = torch.tensor([0.5, -0.7, 1.3, 0.9], requires_grad=True)
    w = (torch.rand(4) + 0.5).requires_grad_()
    b = torch.randn(4).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: _EvoS0Function.apply(*a, 2, 1e-3), (x, v, w, b))


@pytest.mark.gpu
@pytest.mark.parametrize("name", norms.available_norms())
def test_cuda_matches_cpu(name):
    layout = norms.norm_spec(name).layouts[0]
    shape = (2, 5, 8) if layout == "tokens" else (2, 8, 4, 4)
    cpu = norms.build_norm(name, 8)
    gpu = norms.build_norm(name, 8).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(shape)
    torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-7, atol=1e-9)


def test_batchchannelnorm_matches_torch_batchnorm_then_groupnorm():
    layer = norms.build_norm("batchchannelnorm", 8, num_groups=4)
    bn = torch.nn.BatchNorm2d(8)
    with torch.no_grad():
        layer.bn_weight.uniform_(0.5, 1.5), layer.bn_bias.normal_()
        bn.weight.copy_(layer.bn_weight), bn.bias.copy_(layer.bn_bias)
    x = (torch.randn(3, 8, 5, 5) * 2 + 1).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    dy = torch.randn(3, 8, 5, 5)
    layer(x).backward(dy)
    torch.nn.functional.group_norm(bn(x_ref), 4, eps=1e-5).backward(dy)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(layer.bn_weight.grad, bn.weight.grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(layer.running_mean, bn.running_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.running_var, bn.running_var, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(4, 6, 5, 5), (3, 6, 7)])
def test_batchnorm_matches_torch_train_and_eval(shape):
    ours = norms.build_norm("batchnorm", 6)
    ref = torch.nn.BatchNorm1d(6)
    with torch.no_grad():
        ours.norm.weight.uniform_(0.5, 1.5), ours.norm.bias.normal_()
        ref.weight.copy_(ours.norm.weight), ref.bias.copy_(ours.norm.bias)
    for _ in range(2):
        x = (torch.randn(shape) * 2 + 1).requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        dy = torch.randn(shape)
        y, y_ref = ours(x), ref(x_ref.flatten(2)).view(shape)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
        y.backward(dy), y_ref.backward(dy)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours.norm.running_var, ref.running_var, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.norm.weight.grad, ref.weight.grad, rtol=0, atol=1e-10)
    ours.eval(), ref.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), ref(x.flatten(2)).view(shape), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- memory layouts


def _layer_and_copy(name):
    """A layer with random gains, an exact copy, and whether it takes tokens."""
    layer = norms.build_norm(name, 8)
    with torch.no_grad():
        for p in layer.parameters():
            if p.dim() <= 2:  # the gains; RN-L's conv kernels keep their initialisation
                p.uniform_(0.5, 1.5)
    return layer, copy.deepcopy(layer), norms.norm_spec(name).layouts[0] == "tokens"


@pytest.mark.parametrize("name", norms.available_norms())
def test_non_contiguous_inputs_give_the_contiguous_results(name):
    """Channels-last maps and transposed token views: same outputs, gradients and buffers."""
    first, second, tokens = _layer_and_copy(name)
    if tokens:
        strided = torch.randn(6, 3, 8).transpose(0, 1)
    else:
        strided = torch.randn(3, 8, 5, 4).contiguous(memory_format=torch.channels_last)
    strided = (strided * 2 + 0.3).requires_grad_()
    dense = strided.detach().contiguous().requires_grad_()
    assert not strided.is_contiguous()
    dy = torch.randn(dense.shape)
    for layer, x in ((first, strided), (second, dense)):
        layer(x).backward(dy)
    torch.testing.assert_close(first(strided), second(dense), rtol=0, atol=1e-12)
    torch.testing.assert_close(strided.grad, dense.grad, rtol=0, atol=1e-12)
    for (_, a), (_, b) in zip(first.named_buffers(), second.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- RN-L features


def test_channel_mean_max_gradients_including_ties():
    from norms.region import _ChannelMeanMax

    x = torch.randn(2, 5, 7, requires_grad=True)
    assert torch.autograd.gradcheck(_ChannelMeanMax.apply, (x,))
    tied = torch.randn(2, 5, 7)
    tied[:, 1:3] = tied.amax(1, keepdim=True)  # two channels share every pixel's max
    tied.requires_grad_()
    grad = torch.randn(2, 2, 7)
    (ours,) = torch.autograd.grad(_ChannelMeanMax.apply(tied), tied, grad)
    reference = torch.cat([tied.mean(1, keepdim=True), tied.amax(1, keepdim=True)], 1)
    (expected,) = torch.autograd.grad(reference, tied, grad)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)


def test_regionnorm_l_matches_autograd_of_its_formula():
    """Outputs and every gradient (x, the three convs) against plain autograd of RN-L."""
    layer = norms.build_norm("regionnorm_l", 4, kernel_size=3)
    with torch.no_grad():
        layer.mask_conv.weight.uniform_(0.0, 0.5)
    x = torch.randn(2, 4, 6, 5)
    x[:, :, :3] += 3.0  # a bright top half, so that both regions are populated
    x.requires_grad_()
    dy = torch.randn(x.shape)

    def formula(x):
        features = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        soft = torch.sigmoid(layer._conv(layer.mask_conv, features))
        region = (soft.detach() >= layer.threshold).expand_as(x)
        out = torch.zeros_like(x)
        for inside in (region, ~region):
            n = inside.sum((0, 2, 3), keepdim=True)
            mu = (x * inside).sum((0, 2, 3), keepdim=True) / n
            var = ((x - mu).square() * inside).sum((0, 2, 3), keepdim=True) / n
            out = torch.where(inside, (x - mu) / torch.sqrt(var + 1e-5), out)
        gamma, beta = layer._conv(layer.gamma_conv, soft), layer._conv(layer.beta_conv, soft)
        return out * (1 + gamma) + beta

    params = list(layer.parameters())
    y = layer(x)
    ours = torch.autograd.grad(y, [x, *params], dy)
    y_ref = formula(x)
    expected = torch.autograd.grad(y_ref, [x, *params], dy)
    region = layer.importance(x) >= layer.threshold
    assert 0 < int(region.sum()) < region.numel()
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    for got, want in zip(ours, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", norms.available_norms())
def test_float32_kernels_agree_with_float64(name):
    """The same layer and input in float32 and float64: outputs and gradients within 1e-4."""
    layer64, layer32, tokens = _layer_and_copy(name)
    layer32.float()
    shape = (3, 7, 8) if tokens else (3, 8, 5, 3)
    x64 = (torch.randn(shape) * 2 + 0.3).requires_grad_()
    x32 = x64.detach().float().requires_grad_()
    dy = torch.randn(shape)
    y64, y32 = layer64(x64), layer32(x32)
    y64.backward(dy)
    y32.backward(dy.float())
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- autocast


@pytest.mark.parametrize("name", norms.available_norms())
def test_bfloat16_autocast_computes_in_the_input_dtype(name):
    """Under CPU autocast a bfloat16 activation meets float32 parameters and buffers: the layer
    returns bfloat16 close to its float32 result, trains, and keeps float32 buffers."""
    tokens = norms.norm_spec(name).layouts[0] == "tokens"
    options = {"warmup_iters": 1} if name in ("powernorm", "unifiednorm") else {}
    layer = norms.build_norm(name, 8, **options).float()
    shape = (3, 7, 8) if tokens else (3, 8, 5, 3)
    x = torch.randn(shape, dtype=torch.float32) * 2 + 0.3
    for _ in range(3):  # past PowerNorm's / UN's warm-up: running statistics in use
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x.bfloat16().requires_grad_())
        y.float().square().sum().backward()
    assert y.dtype == torch.bfloat16
    reference = layer(x)
    torch.testing.assert_close(y.float(), reference, rtol=5e-2, atol=5e-2)
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in layer.parameters())
    assert all(b.dtype in (torch.float32, torch.long, torch.bool) for b in layer.buffers())
