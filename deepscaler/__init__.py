"""deepscaler: GRPO post-training of small LLMs on verifiable math."""

__version__ = "0.1.0"
