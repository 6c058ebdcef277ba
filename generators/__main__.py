"""``python -m mammosynth.generators SPEC [--method M]``, the entry for
``accelerate launch -m mammosynth.generators SPEC``: `mammosynth generate`, with the CLI's exit codes."""

import sys

from mammosynth.builders.core.errors import run_click
from mammosynth.generators.commands import generate

if __name__ == "__main__":
    run_click(generate, sys.argv[1:], "python -m mammosynth.generators")
