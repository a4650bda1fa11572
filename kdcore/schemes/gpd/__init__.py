"""Gap-preserving distillation (GPD, gpd.md): a wider dynamic teacher built from the student.

Step 1 (this package so far): Inverse Reparameterization, `expand(student, ratio, noise)`.
"""

from kdcore.schemes.gpd.expand import expand
from kdcore.schemes.gpd.layers import GPDBatchNorm1d, GPDBatchNorm2d

__all__ = ["GPDBatchNorm1d", "GPDBatchNorm2d", "expand"]
