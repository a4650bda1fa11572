"""The architecture zoo: one module per family, each architecture one `@register` line
(`kdcore.models.registry` imports every module here)."""
