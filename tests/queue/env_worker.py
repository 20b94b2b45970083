"""A stand-in worker process for protocol tests: it writes the environment lbproxy gave it to
``$ENV_DUMP_DIR/<RUNPOD_POD_ID>.json`` and waits, so the test itself speaks the worker protocol with it."""

import json
import os
import signal
import sys
from pathlib import Path

wanted = {k: v for k, v in os.environ.items() if k.startswith(("RUNPOD_", "LBPROXY_"))}
target = Path(os.environ["ENV_DUMP_DIR"]) / f"{os.environ['RUNPOD_POD_ID']}.json"
target.with_suffix(".tmp").write_text(json.dumps(wanted))
target.with_suffix(".tmp").rename(target)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
signal.pause()
