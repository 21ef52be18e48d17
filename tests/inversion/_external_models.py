"""NumPy forward models for the tests of `invert_external`.

Defined at module level so that process pools can pickle them by reference;
this module imports NumPy only, so spawned workers start fast.
"""

import time

import numpy as np

# G(theta) = A theta, (p, d) = (5, 3)
A = np.array(
    [
        [1.0, 0.5, -0.3],
        [0.2, -1.0, 0.8],
        [-0.7, 0.3, 1.2],
        [0.9, 0.9, 0.1],
        [0.0, -0.4, 0.6],
    ]
)
THRESHOLD = 0.5


def linear(theta):
    return A @ np.asarray(theta)


def raises_above_threshold(theta):
    if theta[0] > THRESHOLD:
        raise ValueError(f"solver diverged: theta[0] = {theta[0]:.3f} > {THRESHOLD}")
    return A @ theta


def always_raises(theta):
    raise RuntimeError("license server unreachable")


def wrong_shape(theta):
    return (A @ theta)[:-1]


def returns_none(theta):
    return None


def slow_above_threshold(theta):
    if theta[0] > THRESHOLD:
        time.sleep(0.3)
    return A @ theta
