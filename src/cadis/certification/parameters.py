"""The one rule for a run's σ, α, N0 and N: `cadis certify`'s flags, `CertifyConfig` and the settings `analyze`
reads from sidecars are all checked here (smoothing.py keeps a guard of its own for library callers)."""

from __future__ import annotations

import math
import sys

from cadis.errors import CadisError, quote

MAX_DRAWS = 10**7  # draws per image: beyond this a run on one image takes days even on a GPU
SMALLEST_ALPHA = sys.float_info.min  # below it α is subnormal and the bound's arithmetic loses all precision
HINTS = {"sigma": "try 0.25 or 0.5", "alpha": "0.001 is usual", "n0": "100 is usual", "n": "10000 or more is usual"}


def parameter_problem(name: str, value: object) -> str | None:
    """Why `value` cannot be a run's `name` (sigma, alpha, n0 or n), as "must be ...; hint", or None."""
    hint = HINTS[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = f"a whole number >= 1 and <= {MAX_DRAWS}" if name in ("n0", "n") else "a number"
        return f"must be {kind} (got {quote(value)}); {hint}"
    if name == "sigma" and not 0 < value < math.inf:
        return f"must be a finite number > 0 (got {value}); {hint}"
    if name == "alpha":
        if not 0 < value < 0.5:
            return f"must be a finite number > 0 and < 0.5 (got {value}); {hint}"
        if value < SMALLEST_ALPHA:
            return (f"must be a finite number > 0 and < 0.5, and at least {SMALLEST_ALPHA:.4g} (the smallest "
                    f"normal float; got {value!r}); {hint}")
    if name in ("n0", "n"):
        whole = isinstance(value, int) or (math.isfinite(value) and value == int(value))
        if not (whole and 1 <= value <= MAX_DRAWS):
            return f"must be a whole number >= 1 and <= {MAX_DRAWS} (got {_show(value)}); {hint}"
    return None


def _show(value: int | float) -> str:
    return f"{value:g}" if isinstance(value, float) else quote(value).strip("'")


def check_run_parameters(sigma: float | None = None, alpha: float | None = None, n0: int | None = None,
                         n: int | None = None) -> None:
    """Raise a CadisError naming the flag (--sigma, --alpha, --n0, --n) for a setting outside its range, or for a
    σ, N and α whose largest certifiable radius is not finite."""
    for name, value in (("sigma", sigma), ("alpha", alpha), ("n0", n0), ("n", n)):
        problem = None if value is None else parameter_problem(name, value)
        if problem:
            raise CadisError(f"--{name} {problem}.")
    if sigma is not None and alpha is not None and n is not None:
        from cadis.certification.smoothing import max_radius  # torch: only once all three are known

        if not math.isfinite(max_radius(sigma, int(n), alpha)):
            raise CadisError(f"--sigma {sigma} with --n {n} and --alpha {alpha} allows no finite radius; "
                             "choose a smaller sigma.")
