"""Circuit discovery methods, each scoring every node or edge of the computation graph so a circuit of size k
keeps the best k: exact node patching (``node_patching``), EAP and EAP-IG (``attribution``), hard-concrete
masks (``edge_pruning``) and greedy refinement on validation prompts (``greedy``)."""
