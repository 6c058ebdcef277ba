"""mammosynth.validation."""
