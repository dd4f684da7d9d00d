"""Circuit discovery methods, one module a method, each scoring heads or edges: head selection by exact
activation patching (``head_patching``), edge attribution (``edge_attribution``, EAP and EAP-IG), exact
edge patching (``edge_patching``; both on the edge graph of ``edges``) and SAE codes (``sae_codes``)."""
