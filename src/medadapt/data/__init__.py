"""Image files become training cases: dataset layouts, few-shot splits, prompts, intensity, augmentation.

Layer packages import the module they need (``medadapt.data.datasets``); only a package whose modules
form one family (``medadapt.data.classification``) re-exports its public names.
"""
