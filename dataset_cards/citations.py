"""BibTeX of the works every mammosynth release builds on (the card's citation section)."""

from __future__ import annotations

SOURCE_PAPERS: dict[str, str] = {
    "methods": """@inproceedings{alshihri2026synthetic,
  title     = {Generation and Validation of Synthetic Mammography Images Using Diffusion and Blending Approaches},
  author    = {Alshihri, Fatima and Makki, Aqeelah J. and Al Shammari, Fay A. and Alsheeha, Abdullah A. and
               Albati, Shahad M. and Moreno Mengibar, Pedro Jose and Almehaid, Mona F. and Albshan, Salman and
               Ibrahim, Hend Samir and ElRefaei, Manal Ahmed and Eliraqi, Fatma and Alkathiri, Yousef and
               Almoalem, Ammar and Al-Msalam, Hamad},
  booktitle = {Medical Imaging with Deep Learning (MIDL), under review},
  year      = {2026}
}""",
    "mam-e": """@article{montoyadelangel2024mame,
  title   = {{MAM-E}: Mammographic Synthetic Image Generation with Diffusion Models},
  author  = {Montoya-del-Angel, Ricardo and Sam-Millan, Karla and Vilanova, Joan C. and Mart{\\'i}, Robert},
  journal = {Sensors},
  volume  = {24},
  number  = {7},
  pages   = {2076},
  year    = {2024},
  doi     = {10.3390/s24072076}
}""",
    "review": """@article{pesapane2025synthetic,
  title   = {The Role of Synthetic Data and Generative {AI} in Breast Imaging: Promise, Pitfalls, and Pathways Forward},
  author  = {Pesapane, Filippo and D'Amelio, Lucrezia and Nicosia, Luca and Mallardi, Carmen and Bozzini, Anna and
             Meneghetti, Lorenza and Carrafiello, Gianpaolo and Cassano, Enrico and Santicchia, Sonia},
  journal = {Diagnostics},
  volume  = {15},
  number  = {23},
  pages   = {2996},
  year    = {2025},
  doi     = {10.3390/diagnostics15232996}
}""",
}
