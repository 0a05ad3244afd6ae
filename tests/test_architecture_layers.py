"""The ML core and the statistics are plain libraries: they never import Django or the web apps."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ["generator/data", "generator/causal", "generator/training", "generator/evaluation", "analysis/stats.py"]
FORBIDDEN = ("django", "rest_framework", "celery", "studyplatform", "generator.models", "generator.tasks")


def core_files():
    for entry in CORE:
        path = ROOT / entry
        yield from ([path] if path.is_file() else sorted(path.rglob("*.py")))


def imported_modules(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_core_modules_do_not_import_the_web_framework():
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in core_files()
        for module in imported_modules(path)
        if module.split(".")[0] in FORBIDDEN or module in FORBIDDEN
    ]
    assert not offenders, "\n".join(offenders)


def test_the_check_sees_the_core(tmp_path):
    assert any(p.name == "graph.py" for p in core_files())
    bad = tmp_path / "bad.py"
    bad.write_text("from django.db import models\nimport celery\n")
    assert list(imported_modules(bad)) == ["django.db", "celery"]


def package_imports(package):
    return [
        (path.relative_to(ROOT), module)
        for path in sorted((ROOT / package).rglob("*.py"))
        for module in imported_modules(path)
    ]


def test_the_study_app_never_imports_the_analysis():
    offenders = [
        f"{path} imports {module}"
        for path, module in package_imports("studyplatform")
        if module.split(".")[0] == "analysis"
    ]
    assert not offenders, "\n".join(offenders)


def test_the_export_column_contract_sits_below_the_study_app_and_the_analysis():
    project = ("studyplatform", "analysis", "generator", "jobs", "django")
    offenders = [
        f"{path} imports {module}"
        for path, module in package_imports("studycolumns")
        if module.split(".")[0] in project
    ]
    assert not offenders, "\n".join(offenders)


def test_the_generator_app_never_imports_the_study_app():
    offenders = [
        f"{path} imports {module}"
        for path, module in package_imports("generator")
        if module.split(".")[0] == "studyplatform"
    ]
    assert not offenders, "\n".join(offenders)


def test_the_import_contracts_hold(monkeypatch):
    """The contracts in pyproject.toml (no cycles between the modules of any app, the layers analysis -> study ->
    generator -> jobs, the Django-free core) hold: the suite fails on a broken one, not only `make lint`."""
    from importlinter.cli import lint_imports

    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0
