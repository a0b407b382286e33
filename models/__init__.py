"""docraft's modelling toolkit: declare models once, share them with every process."""

from models.model import FieldSpec, Model, field

__all__ = ["FieldSpec", "Model", "field"]
