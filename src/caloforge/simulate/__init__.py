"""Reference (Geant4) simulation of calorimeter showers."""

from caloforge.simulate.geometry import Geometry, calochallenge_ds2_like, ild_like

__all__ = ["Geometry", "calochallenge_ds2_like", "ild_like"]
