"""medadapt.engine."""
