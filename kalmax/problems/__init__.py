"""Ready-made inverse problems, each with what is needed to check a method's answer.

    linear_gaussian(key, d, p)   y = H u + eta: the exact posterior and the least-squares solution
    darcy_problem(key, n, modes) Darcy flow (Iglesias, Law & Stuart 2013): the true log-permeability
    lorenz96_problem(key)        Lorenz-96 forcings from time-averaged statistics (Cleary et al. 2021)
"""

from .darcy import DarcyProblem, darcy_problem
from .linear import LinearForward, LinearGaussianProblem, gaussian_posterior, least_squares, linear_gaussian
from .lorenz96 import Lorenz96Calibration, Lorenz96Statistics, lorenz96_problem

__all__ = [
    "DarcyProblem",
    "LinearForward",
    "LinearGaussianProblem",
    "Lorenz96Calibration",
    "Lorenz96Statistics",
    "darcy_problem",
    "gaussian_posterior",
    "least_squares",
    "linear_gaussian",
    "lorenz96_problem",
]
