"""``python tests/scripts/kill_after_saves.py N <jaxcl arguments>``: the jaxcl command line, with
this process SIGKILLed right after its N-th checkpoint save (the resume tests' fault injection;
it lives here, not in the library). With ``JAXCL_TEST_INTERRUPT=1``: a KeyboardInterrupt (Ctrl-C)
there instead."""

import os
import signal
import sys

from jaxcl import checkpoint, cli

LIMIT = int(sys.argv[1])
_save = checkpoint.Checkpointer.save
saves = 0


def save(self, *args, **kwargs):
    global saves
    out = _save(self, *args, **kwargs)
    saves += 1
    if saves >= LIMIT:
        if os.environ.get("JAXCL_TEST_INTERRUPT"):
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGKILL)
    return out


checkpoint.Checkpointer.save = save
sys.exit(cli.main(sys.argv[2:]))
