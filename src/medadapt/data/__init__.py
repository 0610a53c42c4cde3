"""medadapt.data."""
