"""jaxagents: multimodal-agent research systems in JAX (Flax linen, Optax, Pallas)."""

__version__ = "0.1.0.dev0"
