"""t2ijax: text-to-image research in JAX/Flax (ELLA, ECLIPSE, eDiff-I, ERNIE-ViLG 2.0, SUR-adapter)."""

__version__ = "0.1.0"
