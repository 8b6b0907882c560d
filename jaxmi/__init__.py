"""jaxmi: model-inversion attacks and defenses for image classifiers in JAX."""

__version__ = "0.1.0"
