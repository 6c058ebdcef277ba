"""``python -m mammosynth.training sd35-lora|inpaint CONFIG``, the entry for multi-GPU runs
(``accelerate launch -m mammosynth.training sd35-lora CONFIG``): the `mammosynth train` group, with
the CLI's exit codes."""

import sys

from mammosynth.builders.core.errors import run_click
from mammosynth.training.commands import train

if __name__ == "__main__":
    run_click(train, sys.argv[1:], "python -m mammosynth.training")
