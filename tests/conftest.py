import os

# keep tests deterministic and light on the 2-core CI machine
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
