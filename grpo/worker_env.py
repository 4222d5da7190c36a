"""What each GRPO worker is handed from the driver's environment, and how secrets travel.

Ray writes a worker's ``runtime_env`` (``env_vars`` included) in plain text into its logs
(``<ray temp>/session_*/logs/runtime_env_agent.log``, world-readable). So ``runtime_env`` carries only
an allow-list of harmless variables per role (cache folders, offline switches, thread counts); a name
that looks like a secret (a ``TOKEN``, ``KEY``, ``SECRET``, ``PASSWORD``, ``CREDENTIALS`` or ``AUTH`` part) is never
copied, whatever the list says.

Secrets go to the one role that needs them, the reward workers, as a constructor argument (``Secret``
values), which Ray keeps in its object store and the GCS but does not log; Ray sends the same
arguments again when it restarts a dead worker. The worker puts them into its own process
environment, where the judge looks for them (``api_key_env``). Which variables are secrets: every
``api_key_env`` of a judge named in the reward entries, and ``rewards.secret_env`` (for custom rewards).
Checked by tests/grpo/test_secrets.py (a planted key and HF token, a short run, grep of Ray's temp
folder and the run folder).
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping

ROLES = ("policy", "rollout", "reward")

_COMMON = ("SQRL_CACHE", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE",
           "TRANSFORMERS_CACHE", "TRANSFORMERS_VERBOSITY", "SENTENCE_TRANSFORMERS_HOME", "TORCH_HOME",
           "TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS", "SQRL_CPU_BF16")
ROLE_ENV: dict[str, tuple[str, ...]] = {
    "policy": _COMMON + ("DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR"),
    "rollout": _COMMON + ("VLLM_",),  # a trailing "_": every name with that prefix
    "reward": _COMMON,
}
"""Variables copied from the driver into each role's ``runtime_env`` (when set there)."""

SECRET_NAME = re.compile(r"(^|_)(TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIALS?|AUTH)(_|$)", re.IGNORECASE)
"""A variable name that looks like a secret (``HF_TOKEN``, ``VLLM_API_KEY``; not ``TOKENIZERS_PARALLELISM``)."""


class Secret:
    """A string that does not show itself in ``repr``/``str`` (logs, tracebacks, Ray's actor listings)."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __reduce__(self):
        return (Secret, (self._value,))


def worker_env(role: str, environ: Mapping[str, str] | None = None, torch_threads: int | None = None,
               exclude: Iterable[str] = ()) -> dict[str, str]:
    """The ``env_vars`` of ``role``'s runtime env: the allow-listed variables set in ``environ``, never a
    secret-looking name nor one in ``exclude``."""
    if role not in ROLE_ENV:
        raise ValueError(f"unknown worker role {role!r}; known: {', '.join(ROLE_ENV)}")
    environ = os.environ if environ is None else environ
    allowed, excluded = ROLE_ENV[role], set(exclude)

    def wanted(name: str) -> bool:
        listed = any(name.startswith(a) if a.endswith("_") else name == a for a in allowed)
        return listed and name not in excluded and not SECRET_NAME.search(name)

    env = {k: v for k, v in environ.items() if wanted(k)}
    if torch_threads:
        env["OMP_NUM_THREADS"] = str(torch_threads)
    return env


def secret_names(entries: Iterable[Any], extra: Iterable[str] = ()) -> list[str]:
    """Every ``api_key_env`` of a judge in the reward ``entries`` (their params, at any depth; a judge given
    by name or path is read), then ``extra``."""
    from judges.base import load_judge_config

    names: list[str] = []

    def walk(obj: Any, key: str | None = None) -> None:
        if key == "judge" and isinstance(obj, (str, os.PathLike)):
            try:
                obj = load_judge_config(obj)
            except (OSError, ValueError):
                return  # not a judge config; RewardSet.from_config reports a bad one
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                if k == "api_key_env" and isinstance(v, str) and v:
                    names.append(v)
                else:
                    walk(v, str(k))
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    for entry in entries:
        walk(entry.get("params", {}) if isinstance(entry, Mapping) else getattr(entry, "params", {}))
    names.extend(extra)
    return list(dict.fromkeys(names))


def collect_secrets(names: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, Secret]:
    """The named variables that are set in ``environ``, as ``Secret`` values."""
    environ = os.environ if environ is None else environ
    return {n: Secret(environ[n]) for n in names if environ.get(n)}


def install_secrets(secrets: Mapping[str, Secret] | None) -> None:
    """Put ``secrets`` into this process's environment (inside a reward worker)."""
    for name, value in (secrets or {}).items():
        os.environ[name] = value.reveal() if isinstance(value, Secret) else str(value)
