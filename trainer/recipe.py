"""Training recipes: a callable named `pkg.module:function`, and its recorded code version.

A recipe is called as ``fn(tables, params, seed)`` where `tables` maps "schema.table" to a
polars DataFrame (rows in a canonical order, see `trainer.fingerprint.canonical_order`),
and returns a `RecipeResult`. Everything random in it must derive from `seed`, or
`tidelog rebuild` cannot reproduce the model. See docs/trainer.md.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import inspect
import os
import subprocess
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tidelog.errors import TrainingError

__all__ = [
    "Params",
    "RecipeResult",
    "RecipeVersion",
    "Recipe",
    "recipe",
    "is_recipe",
    "find_callable",
    "load_recipe",
    "run_recipe",
    "code_version",
    "file_sha256",
]

Params = dict[str, str | int | float]
F = TypeVar("F", bound=Callable[..., Any])
_TABLES_ATTR = "__tidelog_tables__"
_MARK_ATTR = "__tidelog_recipe__"


@dataclass
class RecipeResult:
    """What a recipe returns.

    `features` is the frame the model predicts on (polars or pandas); tidelog uses it for
    the MLflow signature and input example and to fingerprint the predictions that
    `rebuild` must reproduce. `deterministic=False` says the artefact bytes may differ
    between identical fits (predictions must still match). `pip_requirements=None` pins
    scikit-learn and cloudpickle; pass a list, or "infer" for MLflow's slow inference.
    """

    model: Any
    metrics: dict[str, float]
    features: Any
    deterministic: bool = True
    pip_requirements: list[str] | str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RecipeVersion:
    reference: str
    path: str | None
    sha256: str | None
    git_commit: str | None
    git_status: str | None  # "clean", "modified", "untracked"; None outside a repository
    package: str | None
    package_version: str | None

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "path": self.path, "sha256": self.sha256,
                "git_commit": self.git_commit, "git_status": self.git_status,
                "package": self.package, "package_version": self.package_version}


@dataclass(frozen=True)
class Recipe:
    reference: str
    fn: Callable[..., Any]
    version: RecipeVersion
    tables: tuple[str, ...] | None  # declared with @recipe(tables=...)


def recipe(*, tables: Sequence[str] | None = None) -> Callable[[F], F]:
    """Mark a function as a recipe, optionally with the tables it reads (so `tidelog train`
    needs no --tables). The API runs only marked functions (see `is_recipe`)."""

    def mark(fn: F) -> F:
        setattr(fn, _MARK_ATTR, True)
        if tables is not None:
            setattr(fn, _TABLES_ATTR, tuple(tables))
        return fn

    return mark


def is_recipe(fn: Any) -> bool:
    """Whether `fn` was marked with `@recipe(...)` (not merely callable)."""
    return getattr(fn, _MARK_ATTR, False) is True


def _split(reference: str) -> tuple[str, str]:
    module, sep, attr = reference.partition(":")
    if not sep or not module or not attr:
        raise TrainingError(
            f"recipe {reference!r} is not an import path: write it as 'pkg.module:function', "
            "e.g. 'examples.churn:train'")
    return module, attr


def _import(module_name: str, reference: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise TrainingError(
                f"cannot import recipe {reference}: no module named {missing!r}. Run tidelog "
                "from the directory that contains it (or pass --app-dir), or install the "
                "package that provides it", recipe=reference) from exc
        raise TrainingError(
            f"recipe module {module_name} imports {missing!r}, which is not installed; "
            "install it into the environment tidelog runs in", recipe=reference) from exc
    except Exception as exc:
        raise TrainingError(
            f"importing recipe module {module_name} raised {type(exc).__name__}: {exc}"
            f"{_where(exc)}; fix the module and retry", recipe=reference) from exc


def find_callable(reference: str) -> tuple[Any, Any]:
    """(the module, the object `reference` names in it); imports the module."""
    module_name, attr = _split(reference)
    module = _import(module_name, reference)
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            defined = sorted(n for n, v in vars(module).items()
                             if callable(v) and not n.startswith("_")
                             and getattr(v, "__module__", None) == module_name)
            raise TrainingError(
                f"recipe {reference}: module {module_name} has no attribute {attr!r}; "
                f"callables it defines: {', '.join(defined) or 'none'}", recipe=reference)
        fn = getattr(fn, part)
    if not callable(fn):
        raise TrainingError(
            f"recipe {reference} is a {type(fn).__name__}, not a function; point at a "
            "callable taking (tables, params, seed)", recipe=reference)
    return module, fn


def load_recipe(reference: str) -> Recipe:
    module, fn = find_callable(reference)
    declared = getattr(fn, _TABLES_ATTR, None)
    return Recipe(reference, fn, code_version(reference, fn, module),
                  tuple(declared) if declared else None)


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" (at {last.filename}:{last.lineno} in {last.name})"


def run_recipe(recipe: Recipe, tables: Mapping[str, Any], params: Params, seed: int
               ) -> RecipeResult:
    try:
        result = recipe.fn(dict(tables), dict(params), seed)
    except Exception as exc:
        raise TrainingError(
            f"recipe {recipe.reference} raised {type(exc).__name__}: {exc}{_where(exc)}; "
            "fix the recipe or its parameters and retry", recipe=recipe.reference) from exc
    return _check_result(recipe.reference, result)


def _check_result(reference: str, result: Any) -> RecipeResult:
    if isinstance(result, Mapping):
        try:
            result = RecipeResult(**result)
        except TypeError as exc:
            raise TrainingError(f"recipe {reference} returned a mapping that is not a "
                                f"RecipeResult: {exc}", recipe=reference) from exc
    if not isinstance(result, RecipeResult):
        raise TrainingError(
            f"recipe {reference} returned {type(result).__name__}; return "
            "trainer.recipe.RecipeResult(model=..., metrics=..., features=...)",
            recipe=reference)
    if not callable(getattr(result.model, "predict", None)):
        raise TrainingError(f"recipe {reference} returned a model without predict(); tidelog "
                            "logs scikit-learn-style estimators", recipe=reference)
    if len(result.features) == 0:
        raise TrainingError(f"recipe {reference} returned empty features; tidelog needs at "
                            "least one row to fingerprint predictions", recipe=reference)
    try:
        result.metrics = {str(k): float(v) for k, v in result.metrics.items()}
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"recipe {reference} returned a non-numeric metric: {exc}",
                            recipe=reference) from exc
    return result


# -- code version -----------------------------------------------------------------------

def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _git(directory: Path, *args: str) -> str | None:
    # GIT_OPTIONAL_LOCKS=0: `status` must not refresh (write) the user's index.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        out = subprocess.run(["git", "-C", str(directory), *args], capture_output=True,
                             text=True, timeout=10, env=env, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_version(path: Path) -> tuple[str | None, str | None]:
    commit = _git(path.parent, "rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git(path.parent, "status", "--porcelain", "--", path.name)
    if status is None:
        return commit, None
    if not status:
        return commit, "clean"
    return commit, "untracked" if status.startswith("??") else "modified"


def _package_version(module_name: str, path: Path | None) -> tuple[str | None, str | None]:
    """The installed distribution that ships `path` (not merely one with the same top name)."""
    if path is None:
        return None, None
    top = module_name.split(".")[0]
    for name in importlib.metadata.packages_distributions().get(top, []):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for file in dist.files or []:
            if file.name == path.name and Path(str(dist.locate_file(file))).resolve() == path:
                return name, dist.version
    return None, None


def code_version(reference: str, fn: Callable[..., Any], module: Any) -> RecipeVersion:
    try:
        source = inspect.getsourcefile(fn) or getattr(module, "__file__", None)
    except TypeError:
        source = getattr(module, "__file__", None)
    path = Path(source).resolve() if source else None
    sha = file_sha256(path) if path and path.is_file() else None
    commit, status = _git_version(path) if path and path.is_file() else (None, None)
    package, version = _package_version(module.__name__, path)
    return RecipeVersion(reference, str(path) if path else None, sha, commit, status,
                         package, version)
