"""The house rules that the code's structure keeps (DESIGN.md, STYLE.md): one abstract
contract per family with final methods, no private name or private jax module across a
module boundary, no module-level caches or mutable globals. (The import layers are
checked by `lint-imports`, which `make test` runs.)"""

import inspect
import pathlib
import re

import equinox as eqx

import kalmax as kx
from kalmax.filters import AbstractFilter
from kalmax.inversion import AbstractInversion
from kalmax.smoothers import AbstractSmoother

SOURCES = sorted((pathlib.Path(kx.__file__).parent).rglob("*.py"))


def _source_lines():
    for path in SOURCES:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            yield path, number, line


def test_no_private_jax_module_is_imported():
    hits = [f"{p}:{n}" for p, n, line in _source_lines() if "jax._src" in line]
    assert not hits, hits


def test_no_private_name_crosses_a_module_boundary():
    # `from .module import _name` (private modules such as `_checks` are imported whole)
    pattern = re.compile(r"^\s*from\s+\.+\w[\w.]*\s+import\s+.*\b_[a-z]\w*")
    hits = [f"{p}:{n}: {line.strip()}" for p, n, line in _source_lines() if pattern.search(line)]
    assert not hits, hits


def test_no_module_level_cache_or_mutable_global():
    mutable = re.compile(r"^[A-Za-z_]\w*\s*(:[^=]+)?=\s*(\{\}|\[\]|dict\(\)|list\(\)|set\(\))\s*$")
    hits = [f"{p}:{n}" for p, n, line in _source_lines() if mutable.match(line) or "lru_cache" in line or line.startswith("global ")]
    assert not hits, hits


def _public_classes():
    for name in kx.__all__:
        value = getattr(kx, name)
        if inspect.isclass(value):
            yield value


def test_every_method_keeps_its_family_contract_and_is_final():
    families = (AbstractFilter, AbstractInversion, AbstractSmoother)
    methods = [cls for cls in _public_classes() if issubclass(cls, families) and not inspect.isabstract(cls)]
    names = {cls.__name__ for cls in methods}
    for expected in ("KalmanFilter", "ExtendedKalmanFilter", "UnscentedKalmanFilter", "ThreeDVar", "EnKF", "LETKF",
                     "EnKFN", "RTSSmoother", "EKI", "ETKI", "EKS", "UKI"):
        assert expected in names, expected
    for cls in methods:
        assert issubclass(cls, eqx.Module)
        # abstract or final: no concrete method is the base of another concrete method
        for other in methods:
            assert other is cls or not issubclass(other, cls), f"{other.__name__} subclasses the concrete {cls.__name__}"
    for cls in _public_classes():
        if cls.__name__.startswith("Abstract"):
            assert inspect.isabstract(cls) or cls in (kx.AbstractFilter,), f"{cls.__name__} is named abstract but is not"


def test_no_stringified_abstract_var():
    # under `from __future__ import annotations`, equinox does not see "eqx.AbstractVar[...]" and makes
    # it a field of the abstract base (shifting its subclasses' fields); required fields are documented
    hits = [f"{p}:{n}" for p, n, line in _source_lines() if re.search(r":\s*(eqx\.)?AbstractVar\[", line)]
    assert not hits, hits
