"""saecircuits: sparse autoencoders on language-model activations, feature matching, and circuits.

The flow, one module a stage: text -> models -> store (activations) -> sae / training -> evaluation,
dashboards, matching, heads, tasks, ablation -> report. See the README for the commands.
"""

from saecircuits.core.errors import SaecircuitsError

__version__ = "0.1.0"
__all__ = ["SaecircuitsError", "__version__"]
