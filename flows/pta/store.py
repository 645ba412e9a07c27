"""The results folder of a model comparison: one record per finished model, written as soon as
the model is done, and ``comparison.json``, marked incomplete until every model is done.

Layout of ``--out``::

    comparison.json             {"complete": false|true, "settings", "pending", "models", ...}
    models/<model>.json         the model's numbers, its warnings and the settings that made it
    models/<model>.npz          its chains (samples, ln posterior) and flow samples
    corner_<model>.png, free_spectrum.png

Every file is written atomically (a temporary file in the same folder, flushed to disk, then
renamed over the target), so a run killed at any moment leaves each file either as it was or
complete. A model's record counts only once its JSON exists, and the JSON is written after its
arrays. ``--resume`` reuses a record only when its settings equal the new run's: the data
(a hash of the arrays used), the sampler and flow settings, and a fingerprint of the model's
spectrum (so a changed template or prior is never mistaken for the old one).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from core.files import json_ready, write_atomically

from .sampling import ChainResult

__all__ = [
    "ResultsFolder",
    "atomic_write",
    "data_fingerprint",
    "json_ready",
    "model_fingerprint",
]

SCHEMA = 1
_CHAIN_ARRAYS = ("samples", "ln_posterior", "ensemble_means")


def atomic_write(path: Path, payload: bytes) -> None:
    """Replace ``path`` by ``payload`` atomically (a temporary sibling renamed into place)."""
    write_atomically(path, lambda tmp: tmp.write_bytes(payload))


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(json_ready(obj), indent=1, allow_nan=False) + "\n").encode()


def data_fingerprint(freqs: np.ndarray, grid: np.ndarray, ln_density: np.ndarray) -> str:
    """sha256 of the arrays a refit uses (the frequencies kept, the grid, their densities)."""
    digest = hashlib.sha256()
    for array in (freqs, grid, ln_density):
        digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    return digest.hexdigest()


def model_fingerprint(model: Any, freqs: np.ndarray, tspan: float) -> str:
    """sha256 of a model's parameter names, priors and spectrum at fixed prior draws."""
    import torch

    theta = torch.as_tensor(model.prior.sample(4, np.random.default_rng(12345)))
    spectrum = model.ln_rho2(theta, torch.as_tensor(freqs, dtype=torch.float64), tspan)
    digest = hashlib.sha256(repr((model.param_names, model.prior.blocks)).encode())
    digest.update(np.round(spectrum.numpy(), 9).tobytes())
    return digest.hexdigest()


def _slug(name: str) -> str:
    return name.replace("+", "_plus_")


class ResultsFolder:
    """The ``--out`` folder of one comparison run (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.models = self.root / "models"
        self.summary = self.root / "comparison.json"

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """Check that the folder can be written, before any computing.

        A folder holding an earlier comparison is refused unless ``resume`` (keep its
        finished models) or ``overwrite`` (delete this layout's files first).
        """
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"--out {self.root} is a file; give a folder for the results")
        earlier = self.summary.exists() or any(self.models.glob("*.json"))
        if earlier and not (resume or overwrite):
            raise ValueError(
                f"--out {self.root} already holds a comparison ({self.summary.name}); pass "
                "--resume to reuse its finished models or --overwrite to start afresh"
            )
        self.models.mkdir(parents=True, exist_ok=True)
        probe = self.root / f".write-test-{os.getpid()}"
        try:
            probe.write_bytes(b"")
        finally:
            probe.unlink(missing_ok=True)
        if overwrite and not resume:
            for old in [self.summary, *self.models.glob("*.json"), *self.models.glob("*.npz"),
                        *self.root.glob("corner_*.png"), self.root / "free_spectrum.png"]:
                old.unlink(missing_ok=True)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        atomic_write(self.summary, _json_bytes(summary))

    def save_model(
        self, result: Any, settings: Mapping[str, Any], entry: Mapping[str, Any]
    ) -> None:
        """Write a finished model: arrays first, then the JSON that makes the record count."""
        arrays = {k: np.asarray(getattr(result.chains, k)) for k in _CHAIN_ARRAYS}
        if result.flow_samples is not None:
            arrays["flow_samples"] = np.asarray(result.flow_samples)
        buffer = _npz_bytes(arrays)
        atomic_write(self.models / f"{_slug(result.name)}.npz", buffer)
        chain_info = {
            f.name: getattr(result.chains, f.name)
            for f in fields(ChainResult) if f.name not in _CHAIN_ARRAYS
        }
        record = {"schema": SCHEMA, "settings": dict(settings), "entry": dict(entry),
                  "chains": chain_info}
        atomic_write(self.models / f"{_slug(result.name)}.json", _json_bytes(record))

    def load_model(self, name: str, settings: Mapping[str, Any]) -> dict[str, Any] | None:
        """The saved record of ``name`` if one exists and was made with ``settings``, else None.

        Returns ``{"entry", "chains": ChainResult, "flow_samples"}``.
        """
        path = self.models / f"{_slug(name)}.json"
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
            wanted = json_ready(dict(settings))
            if record.get("schema") != SCHEMA or record.get("settings") != wanted:
                return None
            with np.load(path.with_suffix(".npz"), allow_pickle=False) as arrays:
                loaded = {k: np.array(arrays[k]) for k in arrays.files}
            info = dict(record["chains"])
            info["tau"] = [math.nan if t is None else t for t in info["tau"]]
            chains = ChainResult(**{k: loaded[k] for k in _CHAIN_ARRAYS}, **info)
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
            return None  # a damaged record is recomputed, never trusted
        return {"entry": record["entry"], "chains": chains,
                "flow_samples": loaded.get("flow_samples")}


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()
