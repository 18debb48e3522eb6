"""Compose params.yaml from conf/ exactly as `dvc exp run` does (DVC's own Hydra composition).

    python -m lmforge.compose [OVERRIDE ...]      # `make params ARGS="profile=tiny prune.amount=0.7"`

`make params` (this module's command line) does more than compose, so that a bad value never reaches DVC:
- its overrides are kept in conf/make_params.yaml, the last entry of conf/config.yaml's defaults list,
  so that `dvc exp run -S key=value` composes on top of them instead of silently dropping them
  (`make params` with no overrides empties it again);
- the result is validated (every section, then the checks across sections) before anything is
  written: on a bad value it prints one line and leaves params.yaml and conf/ as they were;
- it holds DVC's repository lock while it writes, and refuses while any stage holds its lock
  (checkpoints/<stage>.lock: DVC releases its own lock while a stage's command runs), so it never
  rewrites params.yaml under a running `dvc repro` / `dvc exp run`;
- `--keep` recomposes params.yaml from conf/ with the overrides already kept in conf/make_params.yaml,
  and always writes it: the recovery after a refused `dvc exp run -S key=bad`, which leaves the rejected
  composition in params.yaml (where `git checkout params.yaml` may see nothing to restore: a value of the
  same size, and git trusts its stat cache).
"""

from __future__ import annotations

import contextlib
import difflib
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lmforge.errors import ConfigError, LmforgeError

CONF_DIR = Path("conf")
PERSISTED = "make_params.yaml"  # in conf/: what the last `make params` set
PERSISTED_HEADER = """\
# @package _global_
# Written by `make params` (python -m lmforge.compose); never edit by hand. The overrides of its last call,
# composed after every other default, so that `dvc exp run -S key=value` starts from them, not from the
# bare conf/. `make params` without overrides empties it.
"""


def compose(output: str | Path = "params.yaml", overrides: list[str] | None = None,
            conf_dir: str | Path = CONF_DIR) -> None:
    """The plain composition of `conf_dir` (with its make_params.yaml) and `overrides` into `output`."""
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(str(output), str(Path(conf_dir).resolve()), None, "config", "", list(overrides or []))


def persisted_overrides(overrides: list[str], conf_dir: str | Path = CONF_DIR) -> str:
    """conf/make_params.yaml for `overrides`: group choices as defaults-list overrides, values as values."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise ConfigError(f"make params: {one_line(str(exc))}") from exc
    defaults: list[str] = []
    values = OmegaConf.create({})
    for override in parsed:
        text = override.input_line
        if override.is_sweep_override() or override.is_delete():
            raise ConfigError(f"make params: {text!r}: sweeps and deletions (~key) cannot be kept in conf/{PERSISTED}; "
                              "set a value instead")
        key, value = override.key_or_group, override.value()
        if (Path(conf_dir) / key).is_dir() and override.package is None:  # a config group: profile=tiny
            entry = f"/{key}: {'null' if value is None else value}"  # profile=null: no profile
            if override.is_add():  # Hydra wants added groups before the overrides in a defaults list
                defaults.insert(0, entry)
            else:
                defaults.append(f"override {entry}")
        else:
            OmegaConf.update(values, key, value, force_add=True)
    text = PERSISTED_HEADER
    if defaults:
        text += "defaults:\n" + "".join(f"  - {entry}\n" for entry in defaults) + "  - _self_\n"
    if values:
        text += OmegaConf.to_yaml(values)
    return text


@contextlib.contextmanager
def dvc_lock(root: Path) -> Iterator[None]:
    """DVC's repository lock, which `dvc repro` and `dvc exp run` hold while they run."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.lock import LockError
    from dvc.repo import Repo

    try:
        repo = Repo(str(root), uninitialized=False)
    except NotDvcRepoError:  # not a DVC repository: nothing can be running
        yield
        return
    try:
        with repo.lock:
            yield
    except LockError as exc:
        raise ConfigError("make params: a DVC command (`dvc repro` / `dvc exp run`) holds the repository lock; "
                          "params.yaml is not rewritten while it runs: wait for it to finish") from exc
    finally:
        repo.close()


def refuse_while_a_stage_runs(root: Path) -> None:
    """A stage's lock (lmforge.locks.lock_stage) is held for its whole command, while DVC's is not."""
    from lmforge.locks import running_stages

    running = running_stages(root)
    if running:
        raise ConfigError(f"make params: a stage is running ({', '.join(running)}); params.yaml is not rewritten "
                          "while a stage runs (its outputs would not match it): wait for it to finish")


def one_line(message: str) -> str:
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def explain_composition_error(exc: Exception, conf_dir: Path) -> str:
    """Hydra's multi-line composition error as one line; an unknown option comes with the nearest valid ones.
    (Unknown keys do not reach Hydra: make_params.yaml adds them, and `validate_params` names them.)"""
    message = str(exc)
    missing_option = re.search(r"Could not find '([^']+)/([^']+)'", message)
    if missing_option:
        group, option = missing_option.groups()
        options = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
        nearest = difflib.get_close_matches(option, options, n=3, cutoff=0.5)
        hint = f" (nearest valid: {', '.join(nearest)})" if nearest else ""
        return f"make params: unknown option '{group}={option}'{hint}. Options of '{group}': {', '.join(options)}"
    return f"make params: {one_line(message)}"


def make_params(overrides: list[str] | None, root: str | Path = ".") -> None:
    """`make params`: compose conf/ + `overrides`, validate, then write conf/make_params.yaml and params.yaml.
    `overrides` None: keep conf/make_params.yaml as it is and recompose params.yaml from it (`--keep`)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from lmforge.artifacts import write_text
    from lmforge.config import PARAMS_FILE, load_params, validate_params

    root = Path(root)
    conf_dir, output = root / CONF_DIR, root / PARAMS_FILE
    refuse_while_a_stage_runs(root)
    if overrides is None:
        kept = conf_dir / PERSISTED
        persisted = kept.read_text(encoding="utf-8") if kept.is_file() else PERSISTED_HEADER
    else:
        persisted = persisted_overrides(overrides, conf_dir)
    with dvc_lock(root), tempfile.TemporaryDirectory() as tmp:
        trial_conf, trial = Path(tmp) / "conf", Path(tmp) / PARAMS_FILE
        shutil.copytree(conf_dir, trial_conf)
        (trial_conf / PERSISTED).write_text(persisted, encoding="utf-8")
        try:
            compose(trial, [], trial_conf)
        except (HydraException, OmegaConfBaseException, ValueError) as exc:
            raise ConfigError(explain_composition_error(exc, trial_conf)) from exc
        validate_params(load_params(trial), PARAMS_FILE)
        refuse_while_a_stage_runs(root)  # again: a stage may have started while this one composed
        write_text(conf_dir / PERSISTED, persisted)
        write_text(output, trial.read_text(encoding="utf-8"))


def main(argv: list[str]) -> int:
    keep = argv == ["--keep"]
    try:
        if "--keep" in argv and not keep:
            raise ConfigError("make params: --keep recomposes from the kept overrides and takes no others")
        make_params(None if keep else argv)
    except LmforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if keep:
        print(f"params.yaml recomposed from {CONF_DIR}/ with the overrides kept in {CONF_DIR / PERSISTED}")
        return 0
    print(f"params.yaml composed from {CONF_DIR}/" + (f" with {' '.join(argv)}" if argv else "")
          + f" (kept in {CONF_DIR / PERSISTED} for `dvc exp run`)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
