"""Posterior flows: the property battery (normalisation, round trip, log-det, sampling, bounds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from flows.posterior import ParameterTransformerFlow, PosteriorFlow, SplineFlow, fit_flow
from flows.posterior.kinds import load_flow
from flows.posterior.rqs import rational_quadratic_spline

FLOW_KINDS = ("spline", "transformer")


def _randomised(kind: str, samples: np.ndarray, bounds=None, seed: int = 0) -> PosteriorFlow:
    """A small flow whose zero-initialised heads are randomised: a non-trivial density."""
    torch.manual_seed(seed)
    if kind == "spline":
        flow = SplineFlow.from_samples(samples, bounds, transforms=2, hidden=(16, 16), bins=6)
    else:
        flow = ParameterTransformerFlow.from_samples(
            samples, bounds, transforms=2, width=16, depth=1, num_heads=2, bins=6
        )
    with torch.no_grad():
        for name, p in flow.transforms.named_parameters():
            if name.endswith(("output.weight", "head.weight")):
                p.normal_(0.0, 0.4 * p.shape[1] ** -0.5)
            elif name.endswith(("output.bias", "head.bias")):
                p.normal_(0.0, 0.4)
    return flow.double()


def _gauss(n: int = 400, d: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


@pytest.mark.float64
@pytest.mark.parametrize("kind", FLOW_KINDS)
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_density_integrates_to_one_over_2d_box(kind: str, temperature: float) -> None:
    flow = _randomised(kind, _gauss())
    grid = torch.linspace(-9.0, 9.0, 301, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)
    with torch.no_grad():
        density = flow.log_prob(points, temperature=temperature).exp().reshape(301, 301)
    mass = torch.trapezoid(torch.trapezoid(density, grid, dim=1), grid).item()
    assert abs(mass - 1.0) < 5e-3
    assert torch.isfinite(density).all()


@pytest.mark.float64
@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_round_trip_and_logdet_match_autograd(kind: str) -> None:
    flow = _randomised(kind, _gauss(d=3), seed=1)
    y = torch.randn(5, 3, dtype=torch.float64) * 2.0
    z, log_det = flow.transform_whitened(y)
    back = flow.inverse_whitened(z)
    assert torch.allclose(back, y, atol=1e-8)
    for i in range(len(y)):
        jac = torch.autograd.functional.jacobian(
            lambda v: flow.transform_whitened(v[None])[0][0], y[i]
        )
        assert torch.allclose(torch.linalg.slogdet(jac).logabsdet, log_det[i], atol=1e-8)
        # autoregressive: the Jacobian is triangular up to the order reversals
        assert not torch.allclose(jac, torch.eye(3, dtype=torch.float64))


@pytest.mark.float64
def test_spline_inverse_and_tails_never_nan() -> None:
    params = torch.randn(1000, 23, dtype=torch.float64) * 3
    x = torch.cat([torch.linspace(-6, 6, 990), torch.tensor([-1e30, 1e30, -5.0, 5.0, 0.0] * 2)])
    x = x.to(torch.float64)
    y, ld = rational_quadratic_spline(x, params, bound=5.0)
    x_back, ld_inv = rational_quadratic_spline(y, params, bound=5.0, inverse=True)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    assert torch.allclose(x_back, x, atol=1e-9, rtol=1e-9)
    assert torch.allclose(ld_inv, -ld, atol=1e-8)
    outside = x.abs() > 5
    assert torch.equal(y[outside], x[outside]) and (ld[outside] == 0).all()
    # one spline (shared parameters) is strictly increasing on a grid
    grid = torch.linspace(-6, 6, 999, dtype=torch.float64)
    y_one, _ = rational_quadratic_spline(grid, params[:1].expand(999, -1), bound=5.0)
    assert (torch.diff(y_one) > 0).all()


def test_float32_flow_has_no_nan_for_extreme_inputs() -> None:
    flow = _randomised("spline", _gauss()).float()
    x = torch.tensor([[1e6, -1e6], [0.0, 0.0], [50.0, -50.0]], dtype=torch.float32)
    lp = flow.log_prob(x)
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all()


@pytest.mark.float64
@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_samples_follow_log_prob(kind: str) -> None:
    """KS per dimension: flow samples vs the marginal CDF obtained by integrating log_prob."""
    flow = _randomised(kind, _gauss(), seed=2)
    grid = torch.linspace(-8.0, 8.0, 401, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    with torch.no_grad():
        dens = flow.log_prob(torch.stack([xx, yy], -1).reshape(-1, 2)).exp().reshape(401, 401)
        samples = flow.sample(2000, generator=torch.Generator().manual_seed(0)).numpy()
    g = grid.numpy()
    for dim, marginal in ((0, dens.sum(1)), (1, dens.sum(0))):
        cdf = np.cumsum(marginal.numpy())
        cdf /= cdf[-1]
        result = stats.kstest(samples[:, dim], lambda v, c=cdf: np.interp(v, g, c))
        assert result.pvalue > 1e-3, (dim, result)
    # a wrong sampler (e.g. skipping the flow) is caught by the same test
    wrong = np.random.default_rng(0).normal(size=2000)
    cdf = np.cumsum(dens.sum(1).numpy())
    cdf /= cdf[-1]
    assert stats.kstest(wrong, lambda v: np.interp(v, g, cdf)).pvalue < 1e-3


@pytest.mark.float64
def test_sample_and_log_prob_at_temperature_are_consistent() -> None:
    flow = _randomised("spline", _gauss(d=3), seed=3)
    x, lp = flow.sample_and_log_prob(200, temperature=0.6)
    assert torch.allclose(lp, flow.log_prob(x, temperature=0.6), atol=1e-8)
    # a narrower base concentrates the samples
    assert flow.sample(2000, temperature=0.3).std() < flow.sample(2000).std()


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_gradients_reach_every_parameter(kind: str) -> None:
    flow = _randomised(kind, _gauss(d=4))
    flow.log_prob(torch.randn(64, 4, dtype=torch.float64)).mean().backward()
    for name, p in flow.transforms.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.float64
def test_box_bounds_keep_mass_inside() -> None:
    rng = np.random.default_rng(0)
    x = np.stack([rng.uniform(0.0, 1.0, 2000), rng.gamma(2.0, 1.0, 2000)], 1)
    flow = _randomised("spline", x, bounds=[(0.0, 1.0), (0.0, None)])
    s = flow.sample(5000).numpy()
    assert (s[:, 0] > 0).all() and (s[:, 0] < 1).all() and (s[:, 1] > 0).all()
    outside = torch.tensor([[-0.1, 1.0], [1.2, 1.0], [0.5, -1.0]], dtype=torch.float64)
    assert torch.isneginf(flow.log_prob(outside)).all()
    # the density still integrates to one over the support (u in (0,1), v in (0, 30))
    u = torch.linspace(1e-6, 1 - 1e-6, 401, dtype=torch.float64)
    v = torch.linspace(1e-6, 30.0, 801, dtype=torch.float64)
    uu, vv = torch.meshgrid(u, v, indexing="ij")
    with torch.no_grad():
        dens = flow.log_prob(torch.stack([uu, vv], -1).reshape(-1, 2)).exp().reshape(401, 801)
    mass = torch.trapezoid(torch.trapezoid(dens, v, dim=1), u).item()
    assert abs(mass - 1.0) < 1e-2


def test_wildly_different_scales_are_standardised() -> None:
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.8, 0.1], [0.8, 1.0, 0.3], [0.1, 0.3, 1.0]])
    scale = np.array([3.0, 0.5, 1e-5])
    x = rng.multivariate_normal(np.zeros(3), cov, size=3000) * scale + [3000.0, 185.0, 0.0]
    flow, report = fit_flow(x, epochs=3, progress=False)
    exact = -stats.multivariate_normal(np.zeros(3), cov).logpdf((x - [3000, 185, 0]) / scale)
    true_nll = exact.mean() + np.log(scale).sum()
    assert abs(report.held_out_nll - true_nll) < 0.1
    s = flow.sample(4000).numpy()
    assert np.allclose(s.mean(0), x.mean(0), atol=0.1 * scale)
    assert np.allclose(s.std(0), x.std(0), rtol=0.1)


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_save_and_load_round_trip(tmp_path, kind: str) -> None:
    flow = _randomised(kind, _gauss(d=3), bounds=[None, (-9.0, 9.0), None])
    path = flow.save(tmp_path / "flow.safetensors")
    x = torch.randn(7, 3, dtype=torch.float64)
    for loaded in (load_flow(path), type(flow).load(path)):
        assert type(loaded) is type(flow) and loaded.config == flow.config
        assert torch.equal(loaded.log_prob(x), flow.log_prob(x))
    other = SplineFlow if kind == "transformer" else ParameterTransformerFlow
    with pytest.raises(ValueError, match=f"holds a '{kind}' flow"):
        other.load(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flow.safetensors"]  # no temp left


class _Payload:
    """Unpickling this runs ``touch <marker>``: the attack a pickle-based loader allows."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_loading_a_planted_pickle_never_runs_it(tmp_path) -> None:
    import pickle

    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(str(marker)))
    for name in ("flow.safetensors", "flow.pt"):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ValueError, match="is not a safetensors flow file"):
            load_flow(tmp_path / name)
        with pytest.raises(ValueError, match="is not a safetensors flow file"):
            SplineFlow.load(tmp_path / name)
    torch.save({"config": {"flow": "spline"}, "payload": _Payload(str(marker))},
               tmp_path / "old.pt")
    with pytest.raises(ValueError, match="not a safetensors flow file"):
        load_flow(tmp_path / "old.pt")
    assert not marker.exists()


def test_damaged_flow_files_are_one_line_errors(tmp_path) -> None:
    flow = _randomised("spline", _gauss(d=2))
    path = flow.save(tmp_path / "flow.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a safetensors flow file"):
        load_flow(tmp_path / "cut.safetensors")
    with pytest.raises(ValueError, match="does not exist or is not a file"):
        load_flow(tmp_path)
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a normkit posterior flow"):
        load_flow(tmp_path / "other.safetensors")
    tensors = {k: v.contiguous() for k, v in flow.state_dict().items()}
    tensors.pop("transforms.0.conditioner.output.bias")
    meta = {"format": "normkit-posterior-flow-1", "config": '{"flow": "spline", "transforms": 2,'
            ' "hidden": [16, 16], "bins": 6, "bound": 5.0, "context_features": 0}'}
    save_file(tensors, str(tmp_path / "missing.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="does not match a spline flow"):
        load_flow(tmp_path / "missing.safetensors")


def test_conditional_flow_depends_on_context() -> None:
    rng = np.random.default_rng(0)
    c = rng.uniform(-2, 2, size=(3000, 1))
    x = c + 0.3 * rng.normal(size=(3000, 1))
    x = np.concatenate([x, rng.normal(size=(3000, 1))], 1)
    flow, report = fit_flow(x, context=c, epochs=15, hidden=(32,), progress=False, lr=1e-2)
    point = torch.tensor([[1.5, 0.0]], dtype=torch.float64)
    near = flow.log_prob(point, context=torch.tensor([[1.5]]))
    far = flow.log_prob(point, context=torch.tensor([[-1.5]]))
    assert near.item() > far.item() + 3.0
    s = flow.sample(500, context=torch.tensor([1.5]))
    assert abs(s[:, 0].mean().item() - 1.5) < 0.3
    with pytest.raises(ValueError, match="conditional"):
        flow.log_prob(point)


def test_nan_rows_rejected_with_count() -> None:
    x = _gauss(100)
    x[[3, 7, 9], 1] = np.nan
    x[11, 0] = np.inf
    with pytest.raises(ValueError, match="4 rows with NaN or inf"):
        fit_flow(x, progress=False)


def test_bad_options_name_the_value() -> None:
    with pytest.raises(
        ValueError, match="flow 'maf' is unknown; choose one of: spline, transformer"
    ):
        fit_flow(_gauss(), flow="maf", progress=False)
    with pytest.raises(ValueError, match="option 'width' does not apply to the spline flow"):
        fit_flow(_gauss(), width=16, progress=False)
    with pytest.raises(ValueError, match="bounds has 1 entries"):
        fit_flow(_gauss(), bounds=[(0, 1)], progress=False)
    with pytest.raises(ValueError, match="parameter 1 is constant"):
        fit_flow(np.stack([_gauss()[:, 0], np.ones(400)], 1), progress=False)
    with pytest.raises(ValueError, match="temperature must be positive"):
        _randomised("spline", _gauss()).log_prob(torch.zeros(1, 2), temperature=0.0)


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_fit_learns_a_banana_and_stops_early(kind: str) -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=4000)
    x = np.stack([a, 0.5 * a**2 + 0.3 * rng.normal(size=4000)], 1)
    transformer = {"width": 32, "depth": 1, "num_heads": 2}
    options = {"hidden": (32, 32)} if kind == "spline" else transformer
    flow, report = fit_flow(
        x, flow=kind, epochs=40, patience=3, lr=5e-3, progress=False, transforms=2, **options
    )
    # the Gaussian fit (epoch 0: every transform is the identity) is far worse than the flow
    gauss_nll = -stats.multivariate_normal(x.mean(0), np.cov(x.T)).logpdf(x).mean()
    # exact entropy: H(N(0,1)) + H(N(0, 0.3^2))
    exact = 0.5 * math.log(2 * math.pi * math.e) * 2 + math.log(0.3)
    assert report.held_out_nll < gauss_nll - 0.4
    assert report.held_out_nll < exact + 0.25
    assert report.epochs == len(report.history_held_out) >= report.best_epoch
    assert report.n_train + report.n_held_out == 4000 and report.time_s > 0
