"""fer_batch/config.py: the run's settings sit below the runner and the engines, which never import each other."""

import ast
from pathlib import Path

import fer_batch

PACKAGE = Path(fer_batch.__file__).parent


def imported_modules(module: str, top_level_only: bool) -> set[str]:
    """The fer_batch modules that ``fer_batch/<module>.py`` imports (anywhere, or only at module level)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("fer_batch.")}


def test_the_engines_never_import_the_runner():
    for engine in ("ray_engine", "engines", "work"):
        assert "fer_batch.runner" not in imported_modules(engine, top_level_only=False), engine


def test_the_runner_imports_the_ray_engine_only_when_a_run_asks_for_it():
    # Lazily, inside _make_engine: the default install and `fer-batch --help` never touch Ray.
    assert not any(name.startswith("fer_batch.ray_engine") for name in imported_modules("runner", top_level_only=True))


def test_config_imports_no_other_fer_batch_module():
    assert imported_modules("config", top_level_only=False) == set()


def test_library_callers_keep_their_imports():
    from fer_batch import LabelConfig as public
    from fer_batch.config import LabelConfig, UsageError
    from fer_batch.runner import LabelConfig as from_runner
    from fer_batch.runner import UsageError as usage_from_runner
    from fer_batch.runner import label_files  # noqa: F401

    assert public is LabelConfig is from_runner
    assert usage_from_runner is UsageError
