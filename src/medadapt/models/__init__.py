"""Networks and their weights: ``sam/`` (SAM family), ``volumetric/`` (3D), ``classification/`` (ViT, CNN).

Each family package re-exports its public names; the SAM registry and checkpoint loader sit beside them.
"""
