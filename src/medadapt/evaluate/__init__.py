"""medadapt.evaluate."""
