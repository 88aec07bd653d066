"""How a sweep searches epsilon: one validated :class:`SweepSettings`, and the epsilon-search protocol with its two
implementations, the batched bracket search (:class:`BracketSearch`) and VERONA's binary search over a grid
(:class:`VeronaGridSearch`).

``--backend verona --verifier X`` means (VERONA's search, verifier X): :func:`search_for` is the one place that
maps a backend name to a search. A verifier (backend) never knows how eps is searched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from robverify.errors import RobverifyError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from robverify.backends.base import Backend
    from robverify.runs.executors import Executor
    from robverify.runs.jobs import Samples
    from robverify.runs.rundir import RunDir

Progress = Callable[[int], None]

__all__ = ["BracketSearch", "EpsilonSearch", "SweepSettings", "VeronaGridSearch", "parse_grid", "search_for"]


def parse_grid(text: str) -> list[float]:
    """``START:STOP:STEP`` (inclusive of START and of STOP when reached) or ``e1,e2,...``."""
    try:
        if ":" in text:
            start, stop, step = (float(t) for t in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            values = [round(start + i * step, 12) for i in range(n)]
        else:
            values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise RobverifyError(f"--grid: expected START:STOP:STEP or a comma list of numbers, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise RobverifyError(f"--grid: expected non-negative finite eps values, got {text!r}")
    return values


@dataclass(frozen=True)
class SweepSettings:
    """What a sweep searches, checked once where it is built.

    Attributes:
        tol: width at which a continuous bracket counts as closed (> 0).
        grid: the epsilon list of a grid search (in the order given), or None for a continuous search.
        eps_max: the largest eps a continuous search tries (finite, > 0).
    """

    tol: float = 1e-4
    grid: tuple[float, ...] | None = None
    eps_max: float = 1.0

    def __post_init__(self) -> None:
        if not self.tol > 0:
            raise RobverifyError(f"--tol must be > 0, got {self.tol}")
        if not (math.isfinite(self.eps_max) and self.eps_max > 0):
            raise RobverifyError(f"--eps-max must be a finite number > 0, got {self.eps_max}")
        object.__setattr__(self, "tol", float(self.tol))
        object.__setattr__(self, "eps_max", float(self.eps_max))
        if self.grid is not None:
            grid = tuple(float(g) for g in self.grid)
            if not grid or any(not math.isfinite(g) or g < 0 for g in grid):
                raise RobverifyError(f"--grid: expected non-negative finite eps values, got {list(self.grid)}")
            object.__setattr__(self, "grid", grid)

    @classmethod
    def parse(cls, tol: float = 1e-4, grid: str | Sequence[float] | None = None, eps_max: float = 1.0
              ) -> SweepSettings:
        """From command-line / study values: ``grid`` as ``START:STOP:STEP``, ``e1,e2,...`` or a list."""
        values = parse_grid(grid) if isinstance(grid, str) and grid else (None if not grid else list(grid))
        return cls(tol=tol, grid=None if values is None else tuple(values), eps_max=eps_max)

    def fingerprint(self) -> dict[str, Any]:
        """The settings as a run's fingerprint records them."""
        return dict(tol=self.tol, grid=None if self.grid is None else list(self.grid), eps_max=self.eps_max)


class EpsilonSearch(Protocol):
    """Searches the per-sample bracket ``[eps_lo, eps_hi]`` of a run's samples with a backend as the verifier."""

    name: str

    def check(self, settings: SweepSettings, executor: str = "local") -> None:
        """Refuse settings (or an executor) this search cannot use (RobverifyError), before any run directory is
        opened."""

    def sweep(self, run: RunDir, backend: Backend, samples: Samples, settings: SweepSettings, *,
              progress: Progress | None = None, executor: Executor | None = None) -> pd.DataFrame:
        """Run (or resume) the sweep in ``run`` (its chunks on ``executor``; default: this process); returns the
        finalised tidy sweep table."""


class BracketSearch:
    """robverify's batched bracket search (:func:`robverify.runs.search.critical_epsilon`), continuous or on a grid."""

    name = "bracket"

    def check(self, settings: SweepSettings, executor: str = "local") -> None:
        return None

    def sweep(self, run: RunDir, backend: Backend, samples: Samples, settings: SweepSettings, *,
              progress: Progress | None = None, executor: Executor | None = None) -> pd.DataFrame:
        from robverify.runs.jobs import run_sweep

        return run_sweep(run, backend, samples, settings, progress=progress, executor=executor)


class VeronaGridSearch:
    """VERONA's ``BinarySearchEpsilonValueEstimator`` over the grid, one (image, eps) query at a time
    (:func:`robverify.runs.verona_search.run_verona_sweep`)."""

    name = "verona"

    def check(self, settings: SweepSettings, executor: str = "local") -> None:
        if settings.grid is None:
            raise RobverifyError("--backend verona needs --grid (VERONA searches an epsilon list)")
        if executor != "local":
            raise RobverifyError("--backend verona runs VERONA's own search, one query at a time in this process: "
                                 "use --executor local (or --backend native / bab with --executor ray)")

    def sweep(self, run: RunDir, backend: Backend, samples: Samples, settings: SweepSettings, *,
              progress: Progress | None = None, executor: Executor | None = None) -> pd.DataFrame:
        from robverify.runs.verona_search import run_verona_sweep

        self.check(settings, "local" if executor is None else executor.name)
        return run_verona_sweep(run, backend, samples, settings.grid or (), domain=samples.domain, progress=progress)


#: backends whose name means "this search, with the verifier the backend holds"; all others: BracketSearch
_SEARCHES: dict[str, Callable[[], EpsilonSearch]] = {"verona": VeronaGridSearch}


def search_for(backend: str) -> EpsilonSearch:
    """The epsilon search a sweep with ``--backend backend`` runs."""
    return _SEARCHES.get(backend, BracketSearch)()
