"""Prediction serving (Clipper): request/reply over topics, AIMD batching, caching, Exp3/Exp4 selection."""
