"""latentdefence: latent-space defences for image classifiers (DLD and LAD), measured honestly."""

__version__ = "0.1.0"
