"""The seven structures as one parameterised family."""

from genrobust.models.classifier import LatentClassifier, ModelConfig, pass_rows
from genrobust.models.structures import STRUCTURES, Structure

__all__ = ["LatentClassifier", "ModelConfig", "pass_rows", "STRUCTURES", "Structure"]
