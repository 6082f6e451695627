"""jaxcl: continual learning and machine unlearning as pure, compiled JAX training steps."""

__version__ = "0.1.0"
