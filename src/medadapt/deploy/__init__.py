"""medadapt.deploy."""
