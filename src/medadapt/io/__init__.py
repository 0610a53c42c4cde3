"""Reading and writing images, volumes, checkpoints and artifacts."""
