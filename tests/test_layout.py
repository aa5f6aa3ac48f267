"""The house rules the layout keeps: the engine imports no web framework, files stay small, one
error type, and only the service holds the accelerator."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import REPO

WEB_FRAMEWORKS = ("gradio", "gradio_client", "fastapi", "starlette", "uvicorn")
CODE = [*REPO.glob("pipelines/**/*.py"), *REPO.glob("ui/*.py"), *REPO.glob("rest/*.py"),
        *REPO.glob("presets/*.py"), *REPO.glob("bench/*.py"), *REPO.glob("deploy/*.py"), REPO / "app.py"]


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_pipelines_imports_no_web_framework():
    offenders = {str(path.relative_to(REPO)): sorted(module for module in imported_modules(path)
                                                      if module.split(".")[0] in WEB_FRAMEWORKS)
                 for path in REPO.glob("pipelines/**/*.py")}
    assert {path: modules for path, modules in offenders.items() if modules} == {}
    # and nothing it imports pulls one in
    modules = [str(path.relative_to(REPO).with_suffix("")).replace("/", ".") for path in REPO.glob("pipelines/**/*.py")]
    modules = [module.removesuffix(".__init__") for module in modules if not module.endswith("__main__")]
    check = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
             f"print(sorted(n for n in sys.modules if n.split('.')[0] in {WEB_FRAMEWORKS!r}))")
    done = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_layers_point_one_way():
    """ui/rest -> service -> modes -> models: the models know no modes, the modes no service."""
    def layer_imports(folder: str) -> set[str]:
        return {module for path in REPO.glob(f"{folder}/**/*.py") for module in imported_modules(path)}

    assert not {m for m in layer_imports("pipelines/models") if m.startswith(("pipelines.modes", "pipelines.service"))}
    assert not {m for m in layer_imports("pipelines/modes") if m.startswith("pipelines.service")}
    assert not {m for m in layer_imports("pipelines") if m.startswith(("ui", "rest"))}
    # The engine knows nothing of the Ray deployment built on it.
    assert not {m for m in layer_imports("pipelines") if m.split(".")[0] in ("deploy", "ray")}


def test_no_file_over_400_lines():
    long = {str(path.relative_to(REPO)): lines for path in CODE if (lines := len(path.read_text().splitlines())) > 400}
    assert long == {}


def test_one_error_type_carries_a_field_problem():
    """No module but pipelines/errors.py defines an exception with a `field`."""
    defining = []
    for path in CODE:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(getattr(base, "id", "").endswith(("Error", "Exception"))
                                                      for base in node.bases):
                if "self.field" in ast.unparse(node):
                    defining.append(f"{path.relative_to(REPO)}:{node.name}")
    assert defining == ["pipelines/errors.py:FieldError"]


def test_only_the_service_takes_the_accelerator_lock():
    """The modes, the UI and the REST layer never take the manager's lock; the service does."""
    takers = sorted(str(path.relative_to(REPO)) for path in CODE
                    if "manager.lock" in path.read_text() and "models" not in path.parts)
    assert takers == ["pipelines/service.py"]


def test_the_spacefile_ships_every_package_app_py_imports():
    """Deta Space packages only what `include:` names: every top-level package app.py reaches."""
    spacefile = (REPO / "Spacefile").read_text()
    included = {line.strip()[2:] for line in spacefile.splitlines() if line.strip().startswith("- ")}
    local = {module.split(".")[0] for module in imported_modules(REPO / "app.py")} & {
        path.name for path in REPO.iterdir() if (path / "__init__.py").exists()}
    assert local and local <= included
