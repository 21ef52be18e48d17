"""Test configuration: float64 available and strict dtype promotion everywhere."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
