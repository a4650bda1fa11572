"""The architecture zoo; importing a module runs its `@register` lines."""

from kdcore.models.zoo import convnets, mlp, mobilenet, resnet, vit, wrn

__all__ = ["convnets", "mlp", "mobilenet", "resnet", "vit", "wrn"]
