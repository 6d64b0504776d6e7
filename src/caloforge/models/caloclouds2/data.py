"""CaloClouds II training data (shared with CaloClouds: :mod:`caloforge.models.pointdata`)."""

from caloforge.models.pointdata import TrainingData, load_training_data

__all__ = ["TrainingData", "load_training_data"]
