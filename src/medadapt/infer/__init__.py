"""medadapt.infer."""
