"""medadapt.models."""
