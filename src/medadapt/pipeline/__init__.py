"""Multi-step work above training and inference: fit, then tune post-processing, then report; modality banks;
fitting for use (every labelled case, cross-validation) and applying a run to new images.

One command of the CLI calls one function here when its work needs several layers (``engine`` to
train, ``infer`` to predict on validation cases, ``deploy`` for a faster frozen encoder, ``report``
for the run page), so those layers never call each other sideways.
"""
