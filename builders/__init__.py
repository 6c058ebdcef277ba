"""mammosynth.builders."""
