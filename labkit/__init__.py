"""labkit: a hands-on DeepSpeed lab kit."""

__version__ = "0.1.0"
