"""Gap-preserving distillation (GPD, gpd.md): a wider dynamic teacher built from the student.

`expand(student, ratio, noise)` is Inverse Reparameterization (gpd.md §1); `expansion` also
returns the factors the hard strategy (§2) cuts the student back out with. Every layer rule is
listed in `rule_table.py`; `plan/` decides on the traced graph which tensors are widened.
"""

from kdcore.schemes.gpd.expand import Expansion, expand, expansion
from kdcore.schemes.gpd.layers import GPDBatchNorm1d, GPDBatchNorm2d

__all__ = ["Expansion", "GPDBatchNorm1d", "GPDBatchNorm2d", "expand", "expansion"]
