"""Labeling-function modules shipped with dawnstream; a topology names one by import path."""
