r"""Read posterior chains from the files samplers write, detected from the file itself.

``load_chains(path, format="auto")`` returns :class:`Chains` (samples, ln posterior, names,
weights). Formats (``--format`` in the CLI):

=========  ==============================================================================
npz        ``.npz`` with ``samples``, ``ln_posterior`` (+ ``names``, ``weights``)
npy        ``X.npy`` + ``X_ln_posterior.npy`` (or ``"a.npy,b.npy"``)
text       whitespace table with a header naming the ln-posterior column
arviz      ArviZ InferenceData, netCDF (``.nc``) or zarr (needs ``normkit[chains]``)
bilby      bilby result, JSON or HDF5 (HDF5 needs ``normkit[chains]``)
emcee      emcee ``HDFBackend`` file (needs ``normkit[chains]``)
ptmcmc     PTMCMCSampler / enterprise folder: ``chain_1.txt`` (+ ``pars.txt``)
getdist    GetDist / Cobaya chains: ``root.txt`` + ``root.paramnames``, or Cobaya headers
=========  ==============================================================================

Detection: folders holding ``chain_1.txt`` are PTMCMC, others zarr; HDF5 files are told apart
by their groups (emcee's ``chain``/``log_prob``, bilby's ``posterior``, otherwise netCDF);
JSON is bilby; text with a ``.paramnames`` sibling or a ``weight minuslogpost`` header is
GetDist. Pickles are refused without being opened beyond their first bytes: they can run code
(dynesty results only exist as pickles; export them first, see :data:`PICKLE_HINT`).
``burn_in`` drops a leading fraction of every chain (default: 0.25 for the raw sampler
outputs emcee and ptmcmc, else 0).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flows.posterior.readers.arrays import read_npy, read_npz, read_text
from flows.posterior.readers.bilby_result import is_bilby_hdf5, read_bilby
from flows.posterior.readers.common import Chains, discard_burn_in, optional_import
from flows.posterior.readers.emcee_backend import is_emcee_backend, read_emcee
from flows.posterior.readers.getdist_chains import chain_files, read_getdist
from flows.posterior.readers.inference_data import read_inference_data
from flows.posterior.readers.ptmcmc import chain_file, read_ptmcmc

__all__ = ["BURN_IN", "Chains", "FORMATS", "detect_format", "load_chains"]

Reader = Callable[[Path, str | int | None], Chains]
FORMATS: dict[str, Reader] = {
    "npz": read_npz,
    "npy": read_npy,
    "text": read_text,
    "arviz": read_inference_data,
    "bilby": read_bilby,
    "emcee": read_emcee,
    "ptmcmc": read_ptmcmc,
    "getdist": read_getdist,
}
BURN_IN = {"emcee": 0.25, "ptmcmc": 0.25}
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".dill", ".save", ".pt", ".pth", ".joblib")
PICKLE_HINT = (
    "normkit never unpickles (a pickle can run code). For dynesty, export the equally "
    "weighted samples: s = results.samples_equal(); save them with their ln posterior, e.g. "
    "np.savez('run.npz', samples=s, ln_posterior=[ln_like(t) + ln_prior(t) for t in s]); "
    "or save results.samples with weights=np.exp(results.logwt - results.logz[-1]) and "
    "ln_posterior = results.logl + ln_prior"
)


def _head(path: Path, size: int = 8) -> bytes:
    with path.open("rb") as handle:
        return handle.read(size)


def _is_pickle(path: Path) -> bool:
    head = _head(path, 2)
    # protocol 2+ pickles start with PROTO (0x80) and the protocol number
    return path.suffix in PICKLE_SUFFIXES or (len(head) == 2 and head[0] == 0x80 and head[1] <= 5)


def _getdist_like(path: Path) -> bool:
    files = chain_files(path)
    if not files:
        return False
    root = files[0].with_name(files[0].name.removesuffix(".txt"))
    siblings = {root, root.with_name(root.name.rsplit(".", 1)[0]),
                root.with_name(root.name.rsplit("_", 1)[0])}
    if any(s.with_name(f"{s.name}.paramnames").is_file() for s in siblings):
        return True
    first = files[0].read_text(errors="replace").split("\n", 1)[0].lstrip("#").split()
    return first[:2] == ["weight", "minuslogpost"]


def detect_format(path: str | Path) -> str:
    """The format name of ``path`` (see the module docstring); ValueError if none fits."""
    text = str(path)
    path = Path(text)
    if "," in text and text.endswith(".npy"):
        return "npy"
    if not path.exists():
        if chain_files(path):
            return "getdist"  # a GetDist root: root.txt / root_1.txt beside it
        raise ValueError(f"chain file {text!r} does not exist")
    if path.is_dir():
        if chain_file(path) is not None:
            return "ptmcmc"
        if any((path / marker).exists() for marker in (".zgroup", "zarr.json", "posterior")):
            return "arviz"
        raise ValueError(
            f"{text!r} is a folder, but neither a PTMCMC output folder (chain_1.txt) nor an "
            "ArviZ zarr store; give a chain file"
        )
    if _is_pickle(path):
        raise ValueError(f"{text!r} is a pickle; {PICKLE_HINT}")
    if path.suffix == ".npz":
        return "npz"
    if path.suffix == ".npy":
        return "npy"
    if path.suffix == ".json":
        return "bilby"
    if path.name in ("chain_1.txt", "chain_1.0.txt"):
        return "ptmcmc"
    if _head(path) == HDF5_MAGIC:
        h5py = optional_import("h5py")
        try:
            with h5py.File(path, "r") as handle:
                if is_emcee_backend(handle):
                    return "emcee"
                if is_bilby_hdf5(handle):
                    return "bilby"
        except OSError as err:
            raise ValueError(f"{text!r} is not a readable HDF5 file: {err}") from None
        return "arviz"
    if _getdist_like(path):
        return "getdist"
    return "text"


def load_chains(
    path: str | Path,
    column: str | int | None = None,
    format: str = "auto",
    burn_in: float | None = None,
) -> Chains:
    """Read chains from ``path`` in ``format`` ("auto": detected), dropping the burn-in.

    Arguments:
        path: a file, a folder (PTMCMC output, zarr store) or a GetDist root.
        column: the ln-posterior column or variable (name, or integer index for tables).
        format: one of :data:`FORMATS` or "auto".
        burn_in: fraction of each chain to drop; None: the format's default (:data:`BURN_IN`).

    Every problem (missing file, a folder where a file is needed, a truncated archive, an
    unknown column, a missing optional package) is a one-line ValueError.
    """
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format {format!r} is unknown; choose auto or one of: "
                         f"{', '.join(FORMATS)}")
    name = detect_format(path) if format == "auto" else format
    target = Path(str(path))
    if name not in ("npy", "getdist") and not target.exists():
        raise ValueError(f"chain file {str(path)!r} does not exist")
    if name not in ("ptmcmc", "arviz") and target.is_dir():
        raise ValueError(f"{str(path)!r} is a folder; the {name} format needs a file")
    if target.is_file() and _is_pickle(target):
        raise ValueError(f"{str(path)!r} is a pickle; {PICKLE_HINT}")
    try:
        chains = FORMATS[name](target, column)
    except (OSError, KeyError) as err:
        raise ValueError(f"{str(path)!r} could not be read as {name}: {err}") from None
    return discard_burn_in(chains, BURN_IN.get(name, 0.0) if burn_in is None else burn_in)
