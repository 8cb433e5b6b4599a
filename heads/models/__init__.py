"""Fusion heads for ``heads train``: importing this package registers every head in ``HEADS``.

``create_head(name, inputs, task, **cfg)`` builds one; ``list_heads()`` lists name, help and default config.
"""
from .base import HEADS, NEEDS, Head, create_head, list_heads, masked_mean, pooled_image, pooled_text
from . import concat, cross, gnn, image_region, mmbt, refnet, singlestream, text_bert, unimodal, vilbert, visualbert  # noqa: F401  (registration)

__all__ = ["HEADS", "NEEDS", "Head", "create_head", "list_heads", "masked_mean", "pooled_image", "pooled_text"]
