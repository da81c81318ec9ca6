"""Data sets that ship inside pip packages (no download): the scikit-learn digits."""

from __future__ import annotations

import numpy as np

DIGITS_TEST_FRACTION = 0.25


def digits_split(seed: int = 0, test_fraction: float = DIGITS_TEST_FRACTION
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 1797 scikit-learn 8x8 digits as a fixed stratified train / held-out split.

    Returns (x_train, y_train, x_test, y_test): images float32 [N, 1, 8, 8] in [0, 1]
    (the raw pixel values are 0..16), labels int64 [N]. The same seed gives the same split.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # scikit-learn is an optional ("demo") dependency
        raise ImportError("digits_split needs scikit-learn: pip install 'bqq-deploy[demo]'") from exc
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test_idx = []
    # Stratified: the same fraction of every class goes to the held-out set.
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        rng.shuffle(members)
        test_idx.append(members[: round(test_fraction * len(members))])
    test_mask = np.zeros(len(labels), dtype=bool)
    test_mask[np.concatenate(test_idx)] = True
    return images[~test_mask], labels[~test_mask], images[test_mask], labels[test_mask]
