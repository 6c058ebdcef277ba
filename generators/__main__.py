"""``python -m mammosynth.generators SPEC [--method M]``, the entry for
``accelerate launch -m mammosynth.generators SPEC``; same exit codes as the CLI."""

import sys

from mammosynth.builders.cli import main

if __name__ == "__main__":
    main(["generate", *sys.argv[1:]])
