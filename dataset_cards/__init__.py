"""mammosynth.dataset_cards."""
