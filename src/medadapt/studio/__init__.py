"""medadapt studio: label a few scans in the browser with box + click prompts, saved as training labels.

A local web app (FastAPI + uvicorn, ``medadapt studio DATA_DIR``) over a folder of cases: the page
(static HTML/JS with the vendored NiiVue viewer) shows a case in three planes, the interactive
session (:mod:`medadapt.infer.interactive`) turns boxes and clicks into masks, and a save writes a
label volume with the image's geometry beside the images. ``cases`` finds the cases and owns the
label paths, ``state`` keeps the open cases and their sessions, ``app`` is the HTTP layer.
FastAPI comes with the ``[studio]`` extra; nothing here is imported by the rest of medadapt.
"""
