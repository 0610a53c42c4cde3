"""Fast inference and smaller models: ONNX / OpenVINO export and runtimes (``backend`` picks one), int8
quantisation, adapter merging, encoder distillation."""
