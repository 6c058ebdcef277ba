"""BibTeX: the works every mammosynth release builds on, and the entry of the release itself (the
card's "How to cite this dataset" section and Croissant's ``citeAs``)."""

from __future__ import annotations

import datetime
import re
from typing import Any

HUB_DATASETS = "https://huggingface.co/datasets/"


def release_url(repo_id: str | None) -> str | None:
    return f"{HUB_DATASETS}{repo_id}" if repo_id else None


def _bib(text: str) -> str:
    """A value BibTeX reads as written: its special characters escaped."""
    return re.sub(r"([&%$#_])", r"\\\1", text)


def release_bibtex(spec: Any, year: int | None = None) -> str:
    """``@misc`` entry of the release: name, version, git tag, authors, Hub URL at that tag."""
    key = re.sub(r"[^A-Za-z0-9]+", "_", f"{spec.name}_{spec.version}").strip("_").lower()
    fields = [
        ("title", _bib(spec.pretty_name)),
        ("author", " and ".join(_bib(a) for a in spec.authors)),
        ("year", str(year or datetime.datetime.now(datetime.timezone.utc).year)),
        ("version", _bib(spec.version)),
        ("note", f"Synthetic mammography dataset, git tag {_bib(spec.tag())}"),
    ]
    url = release_url(spec.hub.repo_id)
    if url:
        fields += [
            ("publisher", "Hugging Face"),
            ("howpublished", f"\\url{{{url}}}"),
            ("url", f"{url}/tree/{spec.tag()}"),
        ]
    width = max(len(k) for k, _ in fields)
    body = ",\n".join(f"  {k.ljust(width)} = {{{v}}}" for k, v in fields)
    return f"@misc{{{key},\n{body}\n}}"


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
