"""Run-level scoring for every task: a segment run or ensemble on a dataset (``segment_run``), a classifier
run (``classify_run``), a 3D run (``volumetric_run``), prediction folders (``folders``), summaries with
bootstrap CIs (``summary``) and classification scores (``classification``). The metric maths is
:mod:`medadapt.metrics`."""
