"""Distillation methods (losses); see `registry` for how one plugs in."""
