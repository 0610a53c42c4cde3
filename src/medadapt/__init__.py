"""medadapt: few-shot, parameter-efficient adaptation of medical imaging foundation models."""

__version__ = "0.1.0"
