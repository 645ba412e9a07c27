"""Compiled kernels (norms.fusion): the switch, the fallback, and compiled == eager per layer."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

import norms
from norms import fusion

# (name, input shape): every layer whose kernels norms.fusion compiles; odd sizes on purpose.
COMPILED_LAYERS = [
    ("rmsnorm", (3, 5, 13)),
    ("crmsnorm", (3, 5, 13)),
    ("evonorm_b0", (3, 6, 5, 3)),
    ("evonorm_s0", (2, 6, 7)),
    ("regionnorm_b", (2, 6, 5, 5)),
    ("regionnorm_l", (2, 6, 7, 7)),
]


@pytest.fixture
def fresh_kernels(monkeypatch):
    """Compiled kernels on, with an empty cache of compiled wrappers (restored afterwards)."""
    monkeypatch.setattr(fusion, "_COMPILED", {})
    monkeypatch.setitem(fusion._state, "enabled", True)


@pytest.fixture
def traced_eagerly(monkeypatch, fresh_kernels):
    """``torch.compile`` replaced by the identity: the compiled code paths, run eagerly."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)


def _layer_and_input(name, shape, dtype, per_channel_mask=False):
    torch.manual_seed(0)
    channels = shape[-1] if name.endswith("rmsnorm") else shape[1]
    layer = norms.build_norm(name, channels).to(dtype)
    with torch.no_grad():
        for param in layer.parameters():
            if param.dim() <= 2:  # negative v and gains included; RN-L's conv kernels as built
                param.uniform_(-0.6, 1.4)
    x = (torch.randn(shape, dtype=dtype) * 2 + 0.3).requires_grad_()
    kwargs = {}
    if name == "regionnorm_b":
        mask_channels = shape[1] if per_channel_mask else 1
        kwargs["mask"] = (torch.rand(shape[0], mask_channels, *shape[2:]) > 0.5).to(dtype)
    return layer, x, kwargs


def _run(name, shape, dtype, compiled, train=True, per_channel_mask=False):
    """Output, input gradient, parameter gradients and buffers after one forward+backward."""
    layer, x, kwargs = _layer_and_input(name, shape, dtype, per_channel_mask)
    layer.train(train)
    dy = torch.randn(shape, dtype=dtype)
    previous = norms.compiled_kernels_enabled()
    norms.use_compiled_kernels(compiled)
    try:
        y = layer(x, **kwargs)
        y.backward(dy)
    finally:
        norms.use_compiled_kernels(previous)
    grads = {n: p.grad for n, p in layer.named_parameters() if p.grad is not None}
    return y.detach(), x.grad, grads, dict(layer.named_buffers())


def _assert_same(compiled, eager, tol):
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize(("name", "shape"), COMPILED_LAYERS)
def test_compiled_code_paths_match_eager_float64(traced_eagerly, name, shape):
    """RMSNorm / CRMSNorm switch to a closed-form input gradient when compiled; the rest
    compile their eager bodies. Both must give the eager outputs, gradients and buffers."""
    _assert_same(
        _run(name, shape, torch.float64, True), _run(name, shape, torch.float64, False), 1e-12
    )


def test_kernels_run_eagerly_when_switched_off(monkeypatch):
    monkeypatch.setattr(fusion, "_COMPILED", {})

    def refuse(*args, **kwargs):
        raise AssertionError("torch.compile called while compiled kernels are off")

    monkeypatch.setattr(torch, "compile", refuse)
    monkeypatch.setitem(fusion._state, "enabled", False)
    y, *_ = _run("evonorm_s0", (2, 6, 7), torch.float64, compiled=False)
    assert torch.isfinite(y).all() and not fusion._COMPILED


class InductorError(Exception):
    """Stands for an error raised by torch._inductor (e.g. no C++ compiler)."""


InductorError.__module__ = "torch._inductor.exc"


def _eager_rmsnorm(x):
    previous = norms.compiled_kernels_enabled()
    norms.use_compiled_kernels(False)
    try:
        return norms.build_norm("rmsnorm", x.shape[-1]).double()(x)
    finally:
        norms.use_compiled_kernels(previous)


@pytest.mark.parametrize("where", ["compiling", "calling"])
def test_a_compile_failure_warns_once_and_falls_back_to_eager(monkeypatch, fresh_kernels, where):
    def broken(*args):
        raise InductorError("no working C++ compiler found\nlong details")

    def compile_(fn, **kwargs):
        if where == "compiling":  # e.g. an unsupported Python version
            raise RuntimeError("torch.compile is not supported on this platform")
        return broken

    monkeypatch.setattr(torch, "compile", compile_)
    x = torch.randn(4, 6, dtype=torch.float64)
    layer = norms.build_norm("rmsnorm", 6).double()
    with pytest.warns(RuntimeWarning, match=r"torch.compile failed .*; using the eager kernels"):
        y = layer(x)
    assert not norms.compiled_kernels_enabled()
    torch.testing.assert_close(y, _eager_rmsnorm(x), rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(x)


def test_errors_of_the_arithmetic_are_not_swallowed(monkeypatch, fresh_kernels):
    def wrong(*args):
        raise ValueError("a genuine error")

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: wrong)
    with pytest.raises(ValueError, match="a genuine error"):
        norms.build_norm("rmsnorm", 6)(torch.randn(2, 6))
    assert norms.compiled_kernels_enabled()


def test_environment_variable_switches_compiled_kernels_on():
    env = {**os.environ, "NORMKIT_COMPILED_KERNELS": "1"}
    code = "import norms; print(norms.compiled_kernels_enabled())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "True"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("name", "shape"), COMPILED_LAYERS)
def test_torch_compiled_kernels_match_eager(fresh_kernels, name, shape, dtype):
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    _assert_same(_run(name, shape, dtype, True), _run(name, shape, dtype, False), tol)


@pytest.mark.slow
def test_torch_compiled_kernels_match_eager_in_other_modes(fresh_kernels):
    """EvoNorm-B0 in eval (running variance) and RN-B with per-channel regions."""
    eval_b0 = [_run("evonorm_b0", (3, 6, 4, 4), torch.float32, c, train=False) for c in (1, 0)]
    _assert_same(*eval_b0, 2e-4)
    shape = (2, 6, 5, 5)
    per_channel = [
        _run("regionnorm_b", shape, torch.float32, c, per_channel_mask=True) for c in (1, 0)
    ]
    _assert_same(*per_channel, 2e-4)


@pytest.mark.gpu
@pytest.mark.parametrize(("name", "shape"), COMPILED_LAYERS)
def test_compiled_kernels_on_cuda_match_the_cpu(fresh_kernels, name, shape):
    """On CUDA inductor writes Triton kernels; they must agree with the eager CPU kernels."""
    layer, x, kwargs = _layer_and_input(name, shape, torch.float32)
    dy = torch.randn(shape)
    norms.use_compiled_kernels(False)
    y_cpu = layer(x, **kwargs)
    (grad_cpu,) = torch.autograd.grad(y_cpu, x, dy)
    layer, x = layer.cuda(), x.detach().cuda().requires_grad_()
    kwargs = {k: v.cuda() for k, v in kwargs.items()}
    norms.use_compiled_kernels(True)
    y = layer(x, **kwargs)
    (grad,) = torch.autograd.grad(y, x, dy.cuda())
    torch.testing.assert_close(y.cpu(), y_cpu, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad.cpu(), grad_cpu, rtol=1e-4, atol=1e-4)
