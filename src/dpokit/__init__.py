"""dpokit: preference optimization (DPO and its family) for causal language models."""

__version__ = "0.1.0"
