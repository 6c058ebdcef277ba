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
  year    = {2024}
}""",
    "review": """@article{synthetic_breast_imaging_review_2025,
  title   = {The Role of Synthetic Data and Generative {AI} in Breast Imaging: Promise, Pitfalls, and Pathways Forward},
  journal = {Diagnostics},
  year    = {2025}
}""",
}
