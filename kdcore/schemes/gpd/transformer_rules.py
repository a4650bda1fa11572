"""Placeholder: filled in by the GPD work in progress."""
