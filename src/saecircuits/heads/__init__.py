"""Head-level weight graphs: how attention heads compose through their weights."""
