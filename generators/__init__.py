"""mammosynth.generators."""
