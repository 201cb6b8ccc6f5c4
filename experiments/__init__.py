"""The paper-reproduction pipeline around the library: the embedded benchmark (`results`: fine-tune, certify,
report, verdict) and the training of the embedded default's models (`zoo`). It lives in the repository, is run
from its root (`python -m experiments ...`), and writes what it finds to docs/results.md and experiments/results/.
"""
