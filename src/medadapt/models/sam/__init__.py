"""medadapt.models.sam."""
