"""Which family a checkpoint belongs to, looked up by the format key it stores.

The registry knows the built-in families by the packages that define them and imports
nothing heavy to list them: a family's package only describes it (:class:`~caloforge.models.
protocol.Family`); its networks are imported when one of its models is loaded. Other packages
add families through the ``caloforge.families`` entry-point group (each entry a
:class:`Family`), the environment variable ``CALOFORGE_FAMILIES`` (comma-separated
``module:attribute`` references to :class:`Family` objects; child processes inherit it), or
at run time with :func:`register`.

>>> sorted(f.name for f in families())[:4]
['bibae', 'caloclouds1', 'caloclouds2', 'calodream']
>>> family_for_format("caloforge-calodream").name
'calodream'
"""

from __future__ import annotations

import importlib
from pathlib import Path

from caloforge.models.checkpoint import checkpoint_file, read_checkpoint
from caloforge.models.protocol import CheckpointError, Family, ShowerGenerator
from caloforge.plugins import plugins

__all__ = [
    "DEFAULT_MODEL",
    "families",
    "family_for_format",
    "family_of",
    "get_family",
    "load_generator",
    "register",
    "reload",
    "resolve_model",
    "shipped_models",
]

#: Packages whose ``FAMILY`` is a built-in family.
BUILTIN = (
    "caloforge.models.bibae",
    "caloforge.models.caloclouds1",
    "caloforge.models.caloclouds2",
    "caloforge.models.calodream",
    "caloforge.models.caloinn",
    "caloforge.models.epic",
    "caloforge.models.l2lflows",
)
#: The shipped model that ``--model default`` means.
DEFAULT_MODEL = "caloclouds2-cm"

_FAMILIES: dict[str, Family] = {}
_LOADED = {"builtin": False}


def register(family: Family) -> Family:
    """Add ``family`` (replacing one of the same name); returns it."""
    for other in list(_FAMILIES.values()):
        clash = set(other.formats) & set(family.formats)
        if other.name != family.name and clash:
            raise ValueError(f"format key {sorted(clash)[0]!r} is already read by the family '{other.name}'")
    _LAST_LOADED.clear()
    _FAMILIES[family.name] = family
    return family


def _load_builtin() -> None:
    if _LOADED["builtin"]:
        return
    _LOADED["builtin"] = True
    for module in BUILTIN:
        register(importlib.import_module(module).FAMILY)
    for family in plugins("caloforge.families", "CALOFORGE_FAMILIES", "FAMILY", Family):
        register(family)


def reload() -> None:
    """Forget the registered families; the next lookup loads the built-in and plug-in ones anew
    (after ``CALOFORGE_FAMILIES`` changed, say)."""
    _FAMILIES.clear()
    _LOADED["builtin"] = False
    _LAST_LOADED.clear()


def families() -> list[Family]:
    """Every registered family (built-in ones first)."""
    _load_builtin()
    return list(_FAMILIES.values())


def get_family(name: str) -> Family:
    """The family called ``name``."""
    _load_builtin()
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family '{name}': use one of {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def family_for_format(key: str) -> Family:
    """The family that reads checkpoints whose ``format`` is ``key``."""
    for family in families():
        if key in family.formats:
            return family
    known = ", ".join(k for f in families() for k in f.formats)
    raise CheckpointError(f"no model family reads checkpoints of format {key!r} (known: {known})")


def shipped_models() -> dict[str, tuple[Family, str]]:
    """Shipped model names → (family, asset file name)."""
    return {name: (f, asset) for f in families() for name, asset in f.shipped.items()}


def resolve_model(model: str | Path) -> Path:
    """Path of a checkpoint: ``default`` or a shipped model's name, a run directory or a file."""
    name = DEFAULT_MODEL if str(model) == "default" else str(model)
    shipped = shipped_models()
    if name in shipped:
        from caloforge import asset_path

        return asset_path(shipped[name][1])
    path = checkpoint_file(model)
    if not path.exists():
        raise FileNotFoundError(
            f"model '{model}' not found: give 'default', {', '.join(shipped)}, "
            "a run directory or a checkpoint file"
        )
    return path


def family_of(model: str | Path) -> tuple[Family, Path, dict]:
    """The family of ``model`` (as :func:`resolve_model` takes it), its checkpoint path and contents.

    The file is read with ``weights_only=True`` (:func:`~caloforge.models.checkpoint.read_checkpoint`):
    nothing in it runs.
    """
    path = resolve_model(model)
    state = read_checkpoint(path)
    return family_for_format(state["format"]), path, state


#: The generator loaded last, by its file's identity (path, size, modification time): a command
#: that asks for the same model again (conditions, then generation) reads its checkpoint once.
_LAST_LOADED: dict[tuple, ShowerGenerator] = {}


def load_generator(model: str | Path) -> ShowerGenerator:
    """The :class:`~caloforge.models.protocol.ShowerGenerator` of ``model`` (any registered family).

    The last one loaded is kept: asking again for the same, unchanged file returns the same
    object without reading the checkpoint again (a changed file, e.g. recalibrated in place, is
    read anew; :func:`register` and :func:`reload` forget it). Callers must not change it."""
    path = resolve_model(model)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key in _LAST_LOADED:
        return _LAST_LOADED[key]
    family, path, state = family_of(path)
    generator = family.load(path, state)
    _LAST_LOADED.clear()
    _LAST_LOADED[key] = generator
    return generator
