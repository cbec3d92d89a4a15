"""bis_prm: Balanced-Information Score data selection and training for multimodal process reward models."""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
