"""caloforge: fast calorimeter shower simulation with generative models."""

__version__ = "0.1.0"

__all__ = ["__version__"]
