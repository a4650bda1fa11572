"""Gap-preserving distillation (GPD, gpd.md): a wider dynamic teacher built from the student.

`expand(student, ratio, noise)` is Inverse Reparameterization (gpd.md §1); `expansion` also
returns the factors the hard strategy (§2) cuts the student back out with. Layer rules live in
`rules.py` (registry) and the modules that register them.
"""

from kdcore.schemes.gpd.expand import Expansion, expand, expansion
from kdcore.schemes.gpd.layers import GPDBatchNorm1d, GPDBatchNorm2d

__all__ = ["Expansion", "GPDBatchNorm1d", "GPDBatchNorm2d", "expand", "expansion"]
