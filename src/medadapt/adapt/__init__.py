"""medadapt.adapt."""
