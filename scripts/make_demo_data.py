"""Build src/robustweights/assets/fashion-mnist-small.npz, the ``demo`` dataset.

A seeded, class-balanced pick from the official Fashion-MNIST files (Debian's
``dataset-fashion-mnist`` puts them in /usr/share/datasets/fashion-mnist):
500 images per class from the training split and 100 per class from the test
split, kept in their official order. Saved with ``np.savez_compressed`` as
``x_train`` uint8 (5000, 28, 28), ``y_train`` uint8 (5000,), ``x_test`` uint8
(1000, 28, 28), ``y_test`` uint8 (1000,).

    PYTHONPATH=src python scripts/make_demo_data.py [--src DIR] [--out FILE] [--seed 0]
"""

import argparse
import hashlib
from pathlib import Path

import numpy as np

from robustweights.readers import read_mnist

ASSET = Path(__file__).resolve().parents[1] / "src/robustweights/assets/fashion-mnist-small.npz"


def balanced_pick(y: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``per_class`` random examples of each class 0..9."""
    return np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(10)]
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--src", default="/usr/share/datasets/fashion-mnist", help="folder with the four IDX files"
    )
    ap.add_argument("--out", default=str(ASSET))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    x_train, y_train, x_test, y_test = read_mnist(Path(args.src))  # x (N, 1, 28, 28)
    rng = np.random.default_rng(args.seed)
    tr, te = balanced_pick(y_train, 500, rng), balanced_pick(y_test, 100, rng)
    np.savez_compressed(
        args.out,
        x_train=x_train[tr, 0],
        y_train=y_train[tr].astype(np.uint8),
        x_test=x_test[te, 0],
        y_test=y_test[te].astype(np.uint8),
    )
    raw = Path(args.out).read_bytes()
    print(
        f"wrote {args.out}: {len(tr)} train / {len(te)} test, {len(raw)} bytes, "
        f"sha256 {hashlib.sha256(raw).hexdigest()}"
    )


if __name__ == "__main__":
    main()
