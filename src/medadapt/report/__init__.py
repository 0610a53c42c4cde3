"""medadapt.report."""
