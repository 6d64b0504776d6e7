"""caloforge: fast calorimeter shower simulation with generative models."""

from importlib.resources import files
from pathlib import Path

__version__ = "0.1.0"

__all__ = ["__version__", "asset_path", "generate"]


def __getattr__(name: str) -> object:
    """``caloforge.generate`` (:func:`caloforge.api.generate`), imported on first use so that
    ``import caloforge`` stays light."""
    if name == "generate":
        from caloforge.api import generate

        return generate
    raise AttributeError(f"module 'caloforge' has no attribute {name!r}")


def asset_path(name: str = "ild_reference.h5") -> Path:
    """Path of a file shipped in ``caloforge/assets`` (by default the Geant4 reference sample)."""
    path = Path(str(files("caloforge") / "assets" / name))
    if not path.exists():
        raise FileNotFoundError(f"caloforge ships no asset named '{name}'")
    return path
