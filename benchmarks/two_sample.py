"""Classifier two-sample test (C2ST): can a classifier tell generated items from real ones?

Lopez-Paz and Oquab, "Revisiting Classifier Two-Sample Tests", ICLR 2017, arXiv:1610.06545.
Equal numbers of real and generated items are labelled 0 / 1, flattened to feature vectors and
fed to two scikit-learn classifiers (L2 logistic regression on standardised features and
histogram gradient boosting); the k-fold cross-validated accuracy of the better one is the
statistic. 0.5 means the classifier cannot tell the two apart; 1.0 means it always can.

The function is imported by the quality benchmarks; run as a script it checks itself on two
Gaussians (identical: about 0.5; shifted by one standard deviation: well above 0.5)::

    python benchmarks/two_sample.py
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

__all__ = ["c2st", "png_levels"]


def png_levels(images) -> np.ndarray:
    """Images (N, ...) in [-1, 1] (a torch tensor) -> (N, D) 8-bit levels in [0, 1], as a PNG
    stores them: what a user sees and what the C2ST of generated images should compare."""
    levels = ((images.clamp(-1, 1) + 1) * 127.5).round()
    # Divide in float64: float32 k/255 differs from the float64 k/255 of real data in the last
    # bits, and a histogram classifier bins the two apart (a C2ST artefact, not image content).
    return (levels.double() / 255.0).flatten(1).numpy()


def c2st(real: np.ndarray, fake: np.ndarray, folds: int = 5, seed: int = 0) -> dict[str, float]:
    """5-fold C2ST accuracies of logistic regression and gradient boosting, and the better one.

    Arguments:
        real, fake: arrays of shape (N, ...) and (M, ...) with the same item shape; the larger
            set is subsampled (seeded) to the size of the smaller, so chance is exactly 0.5.
        folds: number of stratified cross-validation folds.
        seed: seed of the subsampling, the fold split and the boosting.

    Returns:
        ``{"logistic": acc, "boosting": acc, "c2st": max(acc), "n": items per class}``.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    real = np.asarray(real, dtype=np.float64).reshape(len(real), -1)
    fake = np.asarray(fake, dtype=np.float64).reshape(len(fake), -1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real items have {real.shape[1]} features, generated {fake.shape[1]}")
    n = min(len(real), len(fake))
    if n < 2 * folds:
        raise ValueError(f"C2ST needs at least {2 * folds} items per class, got {n}")
    rng = np.random.default_rng(seed)
    real = real[rng.choice(len(real), n, replace=False)]
    fake = fake[rng.choice(len(fake), n, replace=False)]
    x = np.concatenate([real, fake])
    y = np.concatenate([np.zeros(n, dtype=int), np.ones(n, dtype=int)])
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    classifiers = {
        "logistic": make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)),
        "boosting": HistGradientBoostingClassifier(random_state=seed),
    }
    scores = {
        name: float(cross_val_score(model, x, y, cv=split, scoring="accuracy").mean())
        for name, model in classifiers.items()
    }
    return {**scores, "c2st": max(scores.values()), "n": n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="items per class (default 400)")
    parser.add_argument("--dim", type=int, default=16, help="features per item (default 16)")
    args = parser.parse_args(argv)
    if args.n < 10 or args.dim < 1:
        print(f"error: need --n >= 10 and --dim >= 1, got {args.n} and {args.dim}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(args.n, args.dim)), rng.normal(size=(args.n, args.dim))
    shifted = rng.normal(size=(args.n, args.dim)) + 1.0 / np.sqrt(args.dim)
    rows = {"same distribution": c2st(a, b), "shifted by 1 sd": c2st(a, shifted)}
    print("| case | logistic | boosting | C2ST |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['logistic']:.3f} | {r['boosting']:.3f} | {r['c2st']:.3f} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
