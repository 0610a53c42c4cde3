"""Training engine shared by every task: config, optimisers and schedules, losses, the loop
(accelerate, accumulation, clipping, bf16, validation, early stopping, resume), logs, seeding and
the frozen-encoder embedding cache; and each task's training plug-in (``*_task.py``) and fit entry
point (``*_fit.py``, ``pretrain.py``).

Import from the modules themselves (``medadapt.engine.trainer``, ``medadapt.engine.config``, ...).
"""
