"""`python -m gemma_cli.doctor --probe-llama`: the child process that imports llama.cpp for the doctor."""

import json
import sys

from gemma_cli.doctor.hardware import probe_payload

if sys.argv[1:] == ["--probe-llama"]:
    print(json.dumps(probe_payload()))
