"""Teams on one gateway: per-key limits and budgets."""
