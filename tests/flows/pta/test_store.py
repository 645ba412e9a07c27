"""Atomic writes of the PTA results and of the SIGW table cache; damaged files are never
trusted: a damaged model record is recomputed, a damaged cache is rebuilt with a message."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import flows.pta.sigw as sigw
from flows.pta.store import ResultsFolder, atomic_write

from .fakes import fake_run_model


def test_atomic_write_replaces_whole_files_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "comparison.json"
    atomic_write(target, b'{"complete": false}')
    assert target.read_bytes() == b'{"complete": false}'

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, b'{"complete": true, "models": [...]}')
    assert target.read_bytes() == b'{"complete": false}'  # the old file, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["comparison.json"]  # no leftovers


def _saved_folder(tmp_path: Path) -> tuple[ResultsFolder, dict, object]:
    from flows.pta import build_model

    folder = ResultsFolder(tmp_path / "out")
    folder.prepare(resume=False, overwrite=False)
    result = fake_run_model(build_model("smbhb"), None)
    settings = {"seed": 0, "model": "smbhb"}
    folder.save_model(result, settings, result.entry())
    return folder, settings, result


def test_model_records_round_trip_and_mismatches_are_not_reused(tmp_path: Path) -> None:
    folder, settings, result = _saved_folder(tmp_path)
    record = folder.load_model("smbhb", settings)
    assert record is not None and record["entry"]["ln_z"] == result.ln_z
    np.testing.assert_array_equal(record["chains"].samples, result.chains.samples)
    np.testing.assert_array_equal(record["flow_samples"], result.flow_samples)
    assert record["chains"].summary() == result.chains.summary()
    assert folder.load_model("smbhb", {**settings, "seed": 1}) is None
    assert folder.load_model("powerlaw", settings) is None


@pytest.mark.parametrize("damage", ["truncate_json", "truncate_npz", "drop_npz"])
def test_damaged_model_records_are_recomputed_not_trusted(tmp_path: Path, damage: str) -> None:
    folder, settings, _ = _saved_folder(tmp_path)
    record, arrays = folder.models / "smbhb.json", folder.models / "smbhb.npz"
    if damage == "truncate_json":
        record.write_text(record.read_text()[:50])
    elif damage == "truncate_npz":
        arrays.write_bytes(arrays.read_bytes()[:100])
    else:
        arrays.unlink()
    assert folder.load_model("smbhb", settings) is None


def test_prepare_refuses_an_earlier_comparison_and_overwrite_clears_it(tmp_path: Path) -> None:
    folder, _, _ = _saved_folder(tmp_path)
    folder.write_summary({"complete": True})
    with pytest.raises(ValueError, match="already holds a comparison"):
        ResultsFolder(folder.root).prepare(resume=False, overwrite=False)
    ResultsFolder(folder.root).prepare(resume=True, overwrite=False)
    assert json.loads(folder.summary.read_text()) == {"complete": True}
    ResultsFolder(folder.root).prepare(resume=False, overwrite=True)
    assert not folder.summary.exists() and not list(folder.models.iterdir())


@pytest.fixture
def small_sigw_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 7 x 3 table in a private cache folder (the real one takes ~10 s to build)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(sigw, "_N_LN_X", 7)
    monkeypatch.setattr(sigw, "_N_WIDTH", 3)
    return sigw._cache_file()


def test_sigw_cache_is_written_once_and_read_back(small_sigw_table: Path) -> None:
    built = sigw._ln_table_numpy()
    assert built.shape == (7, 3) and small_sigw_table.is_file()
    assert [p.name for p in small_sigw_table.parent.iterdir()] == [small_sigw_table.name]
    np.testing.assert_array_equal(sigw._ln_table_numpy(), built)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "flipped", "wrong_shape"])
def test_damaged_sigw_cache_is_rebuilt_with_a_message(small_sigw_table: Path, damage: str) -> None:
    good = sigw._ln_table_numpy()
    raw = small_sigw_table.read_bytes()
    if damage == "truncated":
        small_sigw_table.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        small_sigw_table.write_bytes(b"\x00" * 64)
    elif damage == "flipped":
        np.savez(small_sigw_table, ln_omega=good + 1e-3, sha256=np.array(sigw._digest(good)))
    else:
        np.savez(small_sigw_table, ln_omega=good[:3], sha256=np.array(sigw._digest(good[:3])))
    with pytest.warns(UserWarning, match="SIGW table cache .* is damaged .*; rebuilding it"):
        rebuilt = sigw._ln_table_numpy()
    np.testing.assert_array_equal(rebuilt, good)
    np.testing.assert_array_equal(sigw._read_cache(small_sigw_table), good)  # repaired
