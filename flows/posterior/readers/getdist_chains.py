r"""Chains in the GetDist / Cobaya text format (Lewis 2019, arXiv:1910.13970; Torrado & Lewis
2021, arXiv:2005.05290): one row per sample, the multiplicity weight first, then minus the
ln posterior, then the parameters.

- GetDist (``MCSamples.saveAsText``, CosmoMC): ``root.txt`` or numbered ``root_1.txt`` /
  ``root.1.txt`` without a header; the names in ``root.paramnames``, one per line, derived
  parameters marked with a trailing ``*`` (they are functions of the others, so they are
  dropped: a density needs the sampled parameters only).
- Cobaya: ``root.1.txt`` with a ``# weight minuslogpost ...`` header; the sampled parameters
  are those with a prior in ``root.updated.yaml`` when that file is there, else every column
  except ``minuslogprior*`` and ``chi2*``.

Pass the root or one chain file. Chains of different lengths (the usual case: weighted chains
are compressed) are concatenated into one sequence; contiguous blocks of it remain the error
replicates.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml

from flows.posterior.readers.common import Chains, from_arrays

__all__ = ["chain_files", "read_getdist"]

NUMBERED = re.compile(r"^(?P<root>.+?)[._](?P<index>\d+)\.txt$")


def _root(file: Path) -> Path:
    match = NUMBERED.match(file.name)
    name = match["root"] if match else file.name.removesuffix(".txt")
    return file.with_name(name)


def chain_files(path: Path) -> list[Path]:
    """The chain files of a root (``root.txt``, ``root_N.txt``, ``root.N.txt``) or [path]."""
    if path.is_file():
        return [path]
    files = [path.with_name(f"{path.name}.txt")] if path.with_name(f"{path.name}.txt").is_file() \
        else []
    numbered = [
        f for f in path.parent.glob(f"{path.name}*.txt")
        if (m := NUMBERED.match(f.name)) and m["root"] == path.name
    ]
    return files + sorted(numbered, key=lambda f: int(NUMBERED.match(f.name)["index"]))


def _sampled_from_yaml(root: Path) -> list[str] | None:
    updated = root.with_name(f"{root.name}.updated.yaml")
    if not updated.is_file():
        return None
    info = yaml.safe_load(updated.read_text()) or {}
    params = info.get("params") or {}
    return [k for k, v in params.items() if isinstance(v, dict) and "prior" in v]


def read_getdist(path: Path, column: str | int | None = None) -> Chains:
    files = chain_files(path)
    if not files:
        raise ValueError(f"{str(path)!r}: no GetDist chain files (root.txt, root_1.txt, ...)")
    root = _root(files[0])
    first = files[0].read_text().splitlines()[0] if files[0].stat().st_size else ""
    header = first.lstrip("#").split() if first.startswith("#") else None
    tables = []
    for file in files:
        try:
            tables.append(np.loadtxt(file, ndmin=2, comments="#"))
        except ValueError as err:
            raise ValueError(f"{str(file)!r}: not a numeric GetDist chain ({err})") from None
    if len({t.shape[1] for t in tables}) != 1:
        raise ValueError(f"{str(root)!r}: the chain files have different numbers of columns")
    table = np.concatenate(tables)
    if header is not None:
        names = header[2:]
        sampled = _sampled_from_yaml(root)
        keep = [
            j for j, n in enumerate(names)
            if (n in sampled if sampled is not None
                else not n.startswith(("minuslogprior", "chi2")))
        ]
    else:
        paramnames = root.with_name(f"{root.name}.paramnames")
        if not paramnames.is_file():
            raise ValueError(
                f"{str(files[0])!r} has no header and {str(paramnames)!r} does not exist: "
                "GetDist chains need their .paramnames file"
            )
        entries = [ln.split()[0] for ln in paramnames.read_text().splitlines() if ln.strip()]
        if len(entries) != table.shape[1] - 2:
            raise ValueError(
                f"{str(paramnames)!r} names {len(entries)} parameters but the chains have "
                f"{table.shape[1] - 2} parameter columns"
            )
        keep = [j for j, n in enumerate(entries) if not n.endswith("*")]
        names = entries
    if not keep:
        raise ValueError(f"{str(root)!r}: no sampled parameter columns")
    if column is not None:
        raise ValueError("GetDist chains carry their ln posterior (-minuslogpost): drop --column")
    weights, minus_ln_post = table[:, 0], table[:, 1]
    samples = table[:, 2:][:, keep]
    return from_arrays(
        samples, -minus_ln_post, [names[j] for j in keep], str(path), weights, "getdist"
    )
