"""Whether this server is shared by visitors. Kept apart from `hosting` (which loads torch and the model code) so
that app.py can decide before the heavy imports, and draw the navigation at once on a cold start."""

from __future__ import annotations

import os

HOSTED_ENV = "CADIS_HOSTED"


def hosted() -> bool:
    """Whether this server is shared by visitors: $CADIS_HOSTED is 1, true, yes or on, or it is unset on a Hugging
    Face Space (which sets $SPACE_ID)."""
    flag = os.environ.get(HOSTED_ENV, "").strip().lower()
    return flag in {"1", "true", "yes", "on"} or (flag == "" and bool(os.environ.get("SPACE_ID")))
