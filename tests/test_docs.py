"""The documentation works as written: docs/extending.md's filter is the one in
examples/nudging.py, the Python blocks of the pages run in order and their command lines
run; every public name is in the API reference; the site's navigation, images and
included files exist (`make docs` builds the site with mkdocs --strict)."""

import pathlib
import re

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "extending.md"


def _blocks(language: str, page: pathlib.Path = PAGE) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), flags=re.S)


def test_the_page_shows_the_example_file():
    example = (ROOT / "examples" / "nudging.py").read_text()
    assert _blocks("python")[0].strip() in example


def test_the_python_blocks_run_and_track_the_truth(capsys):
    namespace: dict = {}
    for block in _blocks("python"):
        exec(compile(block, str(PAGE), "exec"), namespace)  # noqa: S102 - the page's own code
    out = capsys.readouterr().out
    rmse = float(out.splitlines()[0])
    assert 0.3 < rmse < 0.9  # nudging with strength 0.5 under unit observation noise
    assert np.isfinite(float(namespace["slope"]))
    assert np.all(np.asarray(namespace["swept"].n_failed) == 0)
    assert isinstance(namespace["Nudging"](0.5), namespace["kx"].AbstractFilter)


def test_the_command_lines_run(capsys, monkeypatch):
    # each line as `kalmax ...` runs it, in this process (the entry point is tested in tests/test_cli.py),
    # from the repository's root as the page says
    from kalmax import cli

    monkeypatch.chdir(ROOT)
    for line in _blocks("bash")[0].strip().splitlines():
        args = line.split()[1:]
        args[args.index("--cycles") + 1] = "150"
        assert cli.main([*args, "--burn-in", "50"]) == 0, capsys.readouterr().err
        assert "rmse" in capsys.readouterr().out


def test_the_learning_page_runs_and_recovers_the_forcing(capsys):
    page = ROOT / "docs" / "learning.md"
    namespace: dict = {}
    for block in _blocks("python", page):
        exec(compile(block, str(page), "exec"), namespace)  # noqa: S102 - the page's own code
    lines = capsys.readouterr().out.splitlines()
    assert abs(float(lines[0]) - 8.0) < 0.3  # gradient fit
    assert abs(float(lines[1]) - 8.0) < 0.3  # state augmentation
    obs_var, level_var = (float(x) for x in lines[2].split())  # EM on the Nile
    assert abs(obs_var / 15099 - 1) < 0.01 and abs(level_var / 1469.1 - 1) < 0.01
    assert np.isfinite(float(namespace["loss"]))


# -- the documentation site (mkdocs.yml; `make docs` builds it with --strict) -------------

DOCS = ROOT / "docs"
# the namespaces whose public names (`__all__`) the API reference must cover
PUBLIC_NAMESPACES = ("kalmax", "kalmax.models", "kalmax.problems", "kalmax.datasets", "kalmax.metrics",
                     "kalmax.inversion", "kalmax.learning", "kalmax.continuous", "kalmax.distributed")
# pages whose Python blocks run in order in one namespace (extending.md and learning.md above)
RUNNABLE_PAGES = ("index.md", "getting-started.md", "concepts.md", "methods/kalman.md", "methods/threedvar.md",
                  "methods/ensemble.md", "methods/smoothers.md", "methods/inversion.md", "methods/continuous.md",
                  "experiments.md")


def _api_objects() -> dict[str, object]:
    import importlib

    documented = {}
    for page in sorted((DOCS / "api").glob("*.md")):
        for path in re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), flags=re.M):
            module_name, _, name = path.rpartition(".")
            documented[path] = getattr(importlib.import_module(module_name), name)
    return documented


def test_every_public_name_is_in_the_api_reference():
    import importlib

    documented = _api_objects()
    by_identity = {id(obj) for obj in documented.values()}
    missing = []
    for namespace in PUBLIC_NAMESPACES:
        module = importlib.import_module(namespace)
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type(module)):
                continue  # a subpackage: its own names are checked
            if id(obj) not in by_identity and f"{namespace}.{name}" not in documented:
                missing.append(f"{namespace}.{name}")
    assert not missing, f"public names missing from docs/api/*.md: {missing}"


def test_the_navigation_names_existing_pages_and_images():
    config = (ROOT / "mkdocs.yml").read_text()
    pages = re.findall(r":\s+([\w/-]+\.md)\s*$", config, flags=re.M)
    assert len(pages) >= 15
    for page in pages:
        assert (DOCS / page).is_file(), page
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert on_disk <= set(pages), f"pages not in the navigation: {on_disk - set(pages)}"
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (DOCS / "examples.md").read_text()):
        assert (DOCS / image).stat().st_size > 10_000, image
    for snippet in re.findall(r'^--8<-- "([^"]+)"', (DOCS / "benchmarks.md").read_text(), flags=re.M):
        assert (ROOT / snippet).is_file(), snippet


def test_the_gallery_commands_name_existing_examples_and_options():
    for line in _blocks("bash", DOCS / "examples.md"):
        script, option = re.match(r"\.venv/bin/python (examples/\w+\.py) (--\w+)", line.strip()).groups()
        assert option in (ROOT / script).read_text(), (script, option)


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_the_pages_python_blocks_run(page, capsys):
    path = DOCS / page
    blocks = _blocks("python", path)
    assert blocks, f"{page} has no Python block"
    namespace: dict = {"__name__": "docs_page"}
    for block in blocks:
        exec(compile(block, str(path), "exec"), namespace)  # noqa: S102 - the page's own code
    assert capsys.readouterr().out.strip()
