"""docraft's modelling toolkit: declare models once, share them with every process."""

from models.model import FieldSpec, Model, Relation, field
from models.types import Ref

__all__ = ["FieldSpec", "Model", "Ref", "Relation", "field"]
