"""The model and GPU catalogues: `models.yaml` and `skus.yaml` loaded into `ModelSpec` and `Sku` values.

The built-in catalogues ship as package data (`opscale/data/*.yaml`, read through importlib.resources,
so they work from a wheel or a zip); a directory holding the same two files can replace them. Every
entry is validated field by field: an error names the file, the entry and the field, and an unknown
name lists the known ones. This module reads files only when asked; it holds no global state.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from opscale.model import ModelSpec, Sku

MODELS_FILE = "models.yaml"
SKUS_FILE = "skus.yaml"

_T = TypeVar("_T", ModelSpec, Sku)


class CatalogError(ValueError):
    """A catalogue file is unreadable or one of its entries is malformed."""


class UnknownNameError(ValueError):
    """A model or SKU name that the catalogue does not hold."""

    def __init__(self, kind: str, name: str, known: tuple[str, ...]) -> None:
        super().__init__(f"unknown {kind} {name!r}; known {kind}s: {', '.join(known)}")
        self.kind = kind
        self.name = name
        self.known = known


@dataclasses.dataclass(frozen=True, slots=True)
class Catalog:
    """Models and SKUs by name. Lookups ignore case; `models` and `skus` keep the files' order."""

    models: tuple[ModelSpec, ...]
    skus: tuple[Sku, ...]
    _models_by_key: Mapping[str, ModelSpec] = dataclasses.field(init=False, repr=False, compare=False)
    _skus_by_key: Mapping[str, Sku] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_models_by_key", _index("model", self.models))
        object.__setattr__(self, "_skus_by_key", _index("sku", self.skus))

    def model(self, name: str) -> ModelSpec:
        """The model called `name` (any case); UnknownNameError lists the known names otherwise."""
        found = self._models_by_key.get(name.casefold())
        if found is None:
            raise UnknownNameError("model", name, self.model_names)
        return found

    def sku(self, name: str) -> Sku:
        """The SKU called `name` (any case); UnknownNameError lists the known names otherwise."""
        found = self._skus_by_key.get(name.casefold())
        if found is None:
            raise UnknownNameError("sku", name, self.sku_names)
        return found

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    @property
    def sku_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.skus)


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load `models.yaml` and `skus.yaml` from the directory `path`, or the built-in ones when None.

    Raises CatalogError naming the file, the entry and the field of the first malformed entry.
    """
    if path is None:
        return default_catalog()
    directory = Path(path)
    if not directory.is_dir():
        raise CatalogError(f"{directory}: not a directory holding {MODELS_FILE} and {SKUS_FILE}")
    models = _parse(_read_text(directory / MODELS_FILE), str(directory / MODELS_FILE), "models", ModelSpec)
    skus = _parse(_read_text(directory / SKUS_FILE), str(directory / SKUS_FILE), "skus", Sku)
    return Catalog(models=models, skus=skus)


@functools.cache
def default_catalog() -> Catalog:
    """The catalogue shipped with opscale. Parsed once per process: it is immutable package data."""
    data = resources.files("opscale").joinpath("data")
    models_text = data.joinpath(MODELS_FILE).read_text(encoding="utf-8")
    skus_text = data.joinpath(SKUS_FILE).read_text(encoding="utf-8")
    return Catalog(
        models=_parse(models_text, f"opscale/data/{MODELS_FILE}", "models", ModelSpec),
        skus=_parse(skus_text, f"opscale/data/{SKUS_FILE}", "skus", Sku),
    )


def parse_models(text: str, source: str = "<models>") -> tuple[ModelSpec, ...]:
    """Parse the text of a models file (top-level key `models`: a list of entries)."""
    return _parse(text, source, "models", ModelSpec)


def parse_skus(text: str, source: str = "<skus>") -> tuple[Sku, ...]:
    """Parse the text of a SKUs file (top-level key `skus`: a list of entries)."""
    return _parse(text, source, "skus", Sku)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _parse(text: str, source: str, key: str, cls: type[_T]) -> tuple[_T, ...]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise CatalogError(f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get(key), list):
        raise CatalogError(f"{source}: expected a top-level '{key}:' holding a list of entries")
    return tuple(_entry(raw, source, index, cls) for index, raw in enumerate(document[key], start=1))


def _entry(raw: Any, source: str, index: int, cls: type[_T]) -> _T:
    label = f"entry {index}"
    if isinstance(raw, dict) and isinstance(raw.get("name"), str) and raw["name"].strip():
        label = f"entry {index} ({raw['name']!r})"
    where = f"{source}: {label}"
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: expected a mapping of field: value, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise CatalogError(f"{where}: field {unknown[0]!r} is not a field of {cls.__name__} "
                           f"(fields: {', '.join(fields)})")
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        if name not in raw:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise CatalogError(f"{where}: field {name!r} is missing")
            continue
        values[name] = _coerce(raw[name], spec.type, f"{where}: field {name!r}")
    try:
        item = cls(**values)
    except ValueError as exc:
        raise CatalogError(f"{where}: {exc}") from exc
    if isinstance(item, ModelSpec) and item.experts and not 1 <= item.experts_per_token <= item.experts:
        raise CatalogError(f"{where}: field 'experts_per_token': must be between 1 and experts "
                           f"({item.experts}) for a mixture-of-experts model, got {item.experts_per_token}")
    return item


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    # Field annotations are strings under `from __future__ import annotations`.
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if kind == "str":
        if not isinstance(value, str) or not value.strip():
            raise CatalogError(f"{where}: expected a non-empty string, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise CatalogError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CatalogError(f"{where}: expected a number, got {value!r}")
        return float(value)
    raise CatalogError(f"{where}: fields of type {kind} cannot be read from a catalogue")


def _index(kind: str, items: tuple[_T, ...]) -> dict[str, _T]:
    by_key: dict[str, _T] = {}
    for item in items:
        key = item.name.casefold()
        if key in by_key:
            raise CatalogError(f"duplicate {kind} name {item.name!r} (names are case-insensitive)")
        by_key[key] = item
    return by_key
