"""medadapt.cli."""
