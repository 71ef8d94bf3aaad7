"""The Optuna study of `tunelab tune`: its storage, sampler and pruner, opening (or continuing) it, and the loop a
worker runs until the study has its trials.

The study lives in a database: a SQLite file in the study folder by default, or any SQLAlchemy URL, so that
workers on several machines share one study. The study's `tune.trials` are enqueued as waiting trials when it is
created ("tickets", with no values fixed: the sampler draws them when a worker takes one); a worker takes a
ticket in one database update, so two workers never run the same trial and the study never runs more than its
trials. Every running trial beats a heartbeat; a trial whose worker died (SIGKILL, a lost machine) goes silent,
is marked failed by the next worker that looks (`fail_stale_trials`) and enqueued again with the same values
(`RetryFailedTrialCallback`). A trial another worker is running keeps beating, so it is never taken from it. A
worker stops when no ticket is left and no trial is running: until then it waits, so a dead worker's last trial
is run again rather than lost.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryFailedTrialCallback
from optuna.trial import FrozenTrial, TrialState

from tunelab.config import TunelabConfig
from tunelab.core.errors import ConfigError
from tunelab.recipes.runs import run_path
from tunelab.tune_config import Distribution, TuneSection

SPACE_ATTR = "tunelab_space"
"""The study's user attribute that holds its search space, metrics and directions: a later start with another
space is refused instead of mixing two searches in one study."""
ERROR_ATTR = "error"
"""A trial's user attribute naming why it failed as a trial (diverged, an invalid combination of values)."""
TICKET_ATTR = "ticket"
"""A trial's user attribute marking one of the study's enqueued trials (kept by the rerun of a dead worker's)."""
SURPLUS_ATTR = "surplus"
"""A trial's user attribute marking one that Optuna created past the study's tickets (two workers asked for the
last ticket at the same moment): it is failed at once, trains nothing, and is left out of the report."""
Goal = Literal["minimize", "maximize"]
_MINIMIZED = ("loss", "ppl", "perplexity", "seconds", "params", "_mb", "error")


@dataclass(frozen=True)
class StudyPlan:
    """What a study optimises, resolved from the `tune:` section."""

    name: str
    folder: Path
    """`<output.dir>/<study>/`: the trials' run folders and the report."""
    storage: str
    metrics: list[str]
    directions: list[Goal]
    prune_on: str | None
    """The validation metric reported during training (None: no pruning)."""
    prune_sign: float
    """+1, or -1 when `prune_on` improves the other way than the study's metric (reported negated)."""
    space: dict[str, Distribution]

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1

    def signature(self) -> dict[str, Any]:
        """What must match for a study to be continued: the space, metrics and directions."""
        params = {k: d.model_dump(exclude_defaults=True) for k, d in sorted(self.space.items())}
        return {"params": params, "metrics": self.metrics, "directions": self.directions}


def direction_of(metric: str) -> Goal:
    """`minimize` for losses, perplexities, seconds, parameter counts, memory and errors; else `maximize`."""
    return "minimize" if any(metric.endswith(s) for s in _MINIMIZED) else "maximize"


def make_plan(cfg: TunelabConfig, config_path: Path | None, space: dict[str, Distribution]) -> StudyPlan:
    """The study's name, folder, storage, metrics and pruning as `cfg.tune` (or its defaults) says."""
    tune = cfg.tune or TuneSection()
    name = tune.study or run_path(cfg, config_path).name
    folder = Path(cfg.output.dir) / name
    metrics = [tune.metric] if isinstance(tune.metric, str) else list(tune.metric)
    if not metrics:
        raise ConfigError("tune.metric is an empty list: name at least one metric, e.g. tune.metric=val_loss.")
    given: list[str] = [tune.direction] * len(metrics) if isinstance(tune.direction, str) else list(tune.direction)
    if len(given) != len(metrics):
        raise ConfigError(
            f"tune.direction has {len(given)} entries for {len(metrics)} metrics ({', '.join(metrics)}): give one "
            "direction per metric, or `auto`."
        )
    directions: list[Goal] = [direction_of(m) if d == "auto" else _goal(d) for m, d in zip(metrics, given, strict=True)]
    pruner = tune.pruner if tune.pruner != "auto" else ("none" if len(metrics) > 1 else "median")
    if pruner != "none" and len(metrics) > 1:
        raise ConfigError(
            f"tune.pruner={pruner} with {len(metrics)} metrics: Optuna prunes single-metric studies only. Set "
            "tune.pruner=none (or auto), or tune one metric."
        )
    prune_on, sign = None, 1.0
    if pruner != "none":
        prune_on = tune.prune_on or (metrics[0] if metrics[0].startswith("val_") else "val_loss")
        sign = 1.0 if direction_of(prune_on) == directions[0] else -1.0
    storage = tune.storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    return StudyPlan(name, folder, storage, metrics, directions, prune_on, sign, space)


def _goal(direction: str) -> Goal:
    return "minimize" if direction == "minimize" else "maximize"


def open_storage(url: str, tune: TuneSection) -> RDBStorage:
    """The study database at `url` (tables created on first use), with heartbeats; an unreachable or malformed
    URL is a ConfigError that names it (password hidden)."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}  # several local workers take turns writing
    elif url.startswith(("postgresql", "mysql")):
        kwargs = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    for attempt in range(10):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url, engine_kwargs=kwargs, heartbeat_interval=tune.heartbeat, grace_period=3 * tune.heartbeat,
                    failed_trial_callback=RetryFailedTrialCallback(max_retry=tune.retries),
                )  # fmt: skip
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            if attempt == 9:
                raise _unreachable(url, exc) from None
            time.sleep(0.5)  # another worker is creating the tables at this moment: they exist once it is done
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
            raise _unreachable(url, exc) from None
    raise AssertionError("the loop returns or raises")


def _unreachable(url: str, exc: Exception) -> ConfigError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ConfigError(
        f"The study storage '{hide_password(url)}' cannot be opened: {reason}. Check the URL (a SQLAlchemy URL such "
        "as sqlite:///study.db or postgresql+psycopg://user:password@host:5432/db), that the server is up and "
        "reachable, and that its driver is installed; or leave tune.storage unset for a SQLite file in the study "
        "folder."
    )


def open_study(plan: StudyPlan, tune: TuneSection, *, seed: int | None = None) -> tuple[optuna.Study, bool]:
    """Create the study, or continue the one of that name when its space, metrics and directions are the same (a
    different one is refused and left as it was). Returns the study and whether this call created it. A new
    study gets `tune.enqueue`'s trials and then tickets up to `tune.trials`; a continued one is topped up to
    `tune.trials` (a larger `--trials` extends a finished study)."""
    plan.folder.mkdir(parents=True, exist_ok=True)
    storage = open_storage(plan.storage, tune)
    sampler, pruner = make_sampler(tune, plan, seed), make_pruner(tune, plan)
    try:
        study = optuna.create_study(
            storage=storage, study_name=plan.name, directions=plan.directions, sampler=sampler, pruner=pruner
        )
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=plan.name, storage=storage, sampler=sampler, pruner=pruner)
        _check_same(study, plan)
        _add_tickets(study, tune.trials)
        return study, False
    for values in tune.enqueue[: tune.trials]:
        study.enqueue_trial(values, user_attrs={TICKET_ATTR: True})
    _add_tickets(study, tune.trials)
    # Last: a worker that loads the study meanwhile waits for this, so it never adds tickets of its own.
    study.set_user_attr(SPACE_ATTR, plan.signature())
    return study, True


def _add_tickets(study: optuna.Study, trials: int) -> None:
    """Waiting trials until finished + running + waiting ones are `trials`."""
    have = sum(finished(t) or t.state in (TrialState.RUNNING, TrialState.WAITING) for t in real_trials(study))
    for _ in range(trials - have):
        study.enqueue_trial({}, user_attrs={TICKET_ATTR: True})


def real_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials without the surplus ones (`SURPLUS_ATTR`)."""
    return [t for t in study.get_trials(deepcopy=False) if SURPLUS_ATTR not in t.user_attrs]


def is_ticket(trial: optuna.Trial) -> bool:
    """Whether `trial` was taken from the study's waiting trials (a ticket, an enqueued or a retried trial), not
    created by Optuna because none was left."""
    return bool(trial.user_attrs.get(TICKET_ATTR))


def _check_same(study: optuna.Study, plan: StudyPlan) -> None:
    saved = None
    for _ in range(50):  # a study another worker has just created gets its space a moment later
        saved = study.user_attrs.get(SPACE_ATTR)
        if saved is not None:
            break
        time.sleep(0.2)
    mine = plan.signature()
    if saved == json.loads(json.dumps(mine)):
        return
    if saved is None:
        diff = "it was not made by tunelab tune"
    else:
        keys = [k for k in ("params", "metrics", "directions") if saved.get(k) != mine[k]]
        diff = "; ".join(f"{k}: stored {json.dumps(saved.get(k))}, now {json.dumps(mine[k])}" for k in keys)
    raise ConfigError(
        f"Study '{plan.name}' in {hide_password(plan.storage)} already exists with another search space ({diff}). "
        "It was left as it was. Give this search another name (tune.study or --study), or restore the tune: "
        "section the study was started with to continue it."
    )


def make_sampler(tune: TuneSection, plan: StudyPlan, seed: int | None) -> optuna.samplers.BaseSampler:
    seed = tune.seed if seed is None else seed
    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if tune.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(tune.startup_trials, 1))


def make_pruner(tune: TuneSection, plan: StudyPlan) -> optuna.pruners.BasePruner:
    if plan.prune_on is None:
        return optuna.pruners.NopPruner()
    kind = "median" if tune.pruner == "auto" else tune.pruner
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource="auto", min_early_stopping_rate=0)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto")
    return optuna.pruners.MedianPruner(n_startup_trials=tune.startup_trials, n_warmup_steps=tune.warmup_steps)


def finished(trial: FrozenTrial) -> bool:
    """Completed, pruned, or failed as a trial (diverged; not a dead worker's trial, which is run again)."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and ERROR_ATTR in trial.user_attrs
    )


def work(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    *,
    timeout: float | None,
    poll: float,
    after_trial: Callable[[optuna.Study], None],
    catch: tuple[type[Exception], ...],
) -> None:
    """Take the study's waiting trials one by one until none is waiting or running (over every worker), or
    `timeout` seconds have passed. `objective` must refuse a trial that is not a ticket (`is_ticket`)."""
    start = time.monotonic()
    optuna.logging.set_verbosity(logging.ERROR)  # tunelab prints each trial itself; a failure is its own line
    while timeout is None or time.monotonic() - start < timeout:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial is enqueued again
        states = {t.state for t in study.get_trials(deepcopy=False)}
        if TrialState.WAITING in states:
            study.optimize(objective, n_trials=1, catch=(*catch, SurplusTrial), gc_after_trial=True)
            after_trial(study)
        elif TrialState.RUNNING in states:
            time.sleep(poll)  # the other workers' last trials: wait, and take over one whose worker died
        else:
            return


class SurplusTrial(Exception):
    """Raised by the objective for a trial past the study's tickets (see `SURPLUS_ATTR`)."""


def hide_password(url: str) -> str:
    head, at, tail = url.rpartition("@")
    if not at or "://" not in head:
        return url
    scheme, _, auth = head.partition("://")
    user = auth.split(":", 1)[0]
    return f"{scheme}://{user}:***@{tail}" if ":" in auth else url
