"""Prediction only: the SAM predictor (prompted, automatic), slice-wise volumes, cases from files, ensembles,
modality banks and the 3D sliding window. Nothing here trains, scores or writes a run folder."""
