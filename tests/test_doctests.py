"""The `>>>` examples of the docstrings run: those of pure functions as written, those that need a model, a corpus or
the Hub are marked `# doctest: +SKIP` where they stand."""

import doctest
import importlib
import pkgutil

import pytest

import bis_prm

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(bis_prm.__path__, prefix="bis_prm.")
    if not name.startswith(("bis_prm.cli", "bis_prm.recipes"))
    and name != "bis_prm.__main__"
    and "visualprocessbench.visualprocessbench" not in name
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=flags)
    for test in finder.find(module, name, globs=vars(module).copy()):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} failing example(s) in {name}"
