"""One registry of model classes: RecBole built-ins, this package's models, third-party models.

Third-party RecBole model classes are declared through the ``recbole_bench.models`` entry-point
group, so a researcher benchmarks their own model without touching the harness::

    [project.entry-points."recbole_bench.models"]
    MyRec = "my_package.my_rec:MyRec"
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path

from recbole.model.abstract_recommender import AbstractRecommender

import recbole_ext.models

ENTRY_POINT_GROUP = "recbole_bench.models"

# RecBole's model sub-packages, searched in this order (as recbole.utils.get_model does).
_RECBOLE_SUBPACKAGES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
)


class UnknownModelError(LookupError):
    """No registered model has the requested name."""


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its name, class, family (RecBole model type) and where it comes from."""

    name: str
    cls: type
    source: str  # "recbole", "recbole_ext" or "entry-point:<distribution>"
    # RecBole's class of the same name that this one replaces ("module.Class"), if any.
    shadows: str | None = None

    @property
    def family(self) -> str:
        model_type = getattr(self.cls, "type", None)
        return model_type.name.lower() if model_type is not None else "unknown"


def _recbole_module_names() -> dict[str, str]:
    """Lower-case model file name -> dotted module, without importing the modules."""
    import recbole.model

    found: dict[str, str] = {}
    root = Path(recbole.model.__file__).parent
    for sub in _RECBOLE_SUBPACKAGES:
        for info in pkgutil.iter_modules([str(root / sub)]):
            if not info.name.startswith("_"):
                found.setdefault(info.name, f"recbole.model.{sub}.{info.name}")
    return found


def _model_classes_in(module: object) -> list[type]:
    return [
        obj
        for name, obj in vars(module).items()
        if inspect.isclass(obj)
        and issubclass(obj, AbstractRecommender)
        and obj.__module__ == module.__name__  # type: ignore[attr-defined]
        and not name.startswith("_")
        and not inspect.isabstract(obj)
    ]


def _shadowed(name: str) -> str | None:
    """The dotted path of RecBole's model class named ``name``, if RecBole has one."""
    module_name = _recbole_module_names().get(name.lower())
    if module_name is None:
        return None
    try:
        spec = _recbole_model(name)
    except UnknownModelError:
        return None
    return f"{module_name}.{spec.name}" if spec is not None else None


@cache
def _own_models() -> dict[str, ModelSpec]:
    specs: dict[str, ModelSpec] = {}
    for info in pkgutil.iter_modules(recbole_ext.models.__path__):
        module = importlib.import_module(f"recbole_ext.models.{info.name}")
        for cls in _model_classes_in(module):
            name = cls.__name__
            specs[name] = ModelSpec(name, cls, "recbole_ext", _shadowed(name))
    return specs


@cache
def _entry_point_models() -> dict[str, ModelSpec]:
    specs: dict[str, ModelSpec] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if not (inspect.isclass(cls) and issubclass(cls, AbstractRecommender)):
            raise TypeError(f"entry point {ep.name} = {ep.value} is not a RecBole model class")
        dist = ep.dist.name if ep.dist is not None else "unknown"
        specs[ep.name] = ModelSpec(ep.name, cls, f"entry-point:{dist}", _shadowed(ep.name))
    return specs


def _recbole_model(name: str) -> ModelSpec | None:
    module_name = _recbole_module_names().get(name.lower())
    if module_name is None:
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # exlib models need optional packages (lightgbm, xgboost)
        raise UnknownModelError(
            f"model {name!r} needs the package {exc.name!r}, which is not installed"
        ) from exc
    for cls in _model_classes_in(module):
        if cls.__name__.lower() == name.lower():
            return ModelSpec(cls.__name__, cls, "recbole")
    return None


def model_names() -> list[str]:
    """Every name the registry answers to (RecBole's names are their file names' class names)."""
    return sorted(set(_own_models()) | set(_entry_point_models()) | set(_recbole_names()))


@cache
def _recbole_names() -> tuple[str, ...]:
    names = []
    for file_name in _recbole_module_names():
        try:
            spec = _recbole_model(file_name)
        except UnknownModelError:
            continue  # its optional dependency is missing
        if spec is not None:
            names.append(spec.name)
    return tuple(names)


def get(name: str) -> ModelSpec:
    """Resolve a model name (case-insensitive) to its spec.

    Own models and entry points shadow RecBole built-ins of the same name.
    """
    for table in (_entry_point_models(), _own_models()):
        for key, spec in table.items():
            if key.lower() == name.lower():
                return spec
    spec = _recbole_model(name)
    if spec is not None:
        return spec
    close = difflib.get_close_matches(name, model_names(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `bench models` lists them"
    raise UnknownModelError(f"unknown model {name!r}{hint}")


def all_models() -> list[ModelSpec]:
    """Every registered model, sorted by name."""
    return [get(name) for name in model_names()]
