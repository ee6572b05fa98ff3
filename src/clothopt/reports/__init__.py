"""Reports: one table renderer, the paper's tables, and the backbone and sampler comparisons."""
