"""Runs: a recipe (`recipe`) executed stage by stage (`stages`), its report (`results`), studies that vary a
recipe along one axis (`study`), and what a run shows and logs (`runlog`)."""

from .recipe import PIPELINE_STAGES, Recipe, load_recipe, recipe_from_dict
from .stages import run
from .study import run_study

__all__ = ["PIPELINE_STAGES", "Recipe", "load_recipe", "recipe_from_dict", "run", "run_study"]
