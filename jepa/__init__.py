"""jepa: distributed H-JEPA and video JEPA pretraining."""

__version__ = "0.1.0"
