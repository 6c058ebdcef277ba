"""mammosynth.training."""
