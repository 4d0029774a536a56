"""Online learning (Velox): offline features θ, per-user online weights, versioned swaps."""
