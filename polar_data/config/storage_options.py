"""fsspec storage options (``loader.storage_options``, ``nwb.storage_options``): how to reach
files, never written down with what a build or a run produced.

Credentials belong in the environment or a named profile, not in a config file: s3fs reads
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` (and
``AWS_PROFILE``, ``~/.aws/credentials``) itself, and ``profile: NAME`` picks a profile of
``~/.aws/credentials``. Options that only say where and how to connect (``endpoint_url``,
``anon``, ``profile``, ``region_name``, ``use_ssl``, ...) are kept.

Two rules, one definition each:

* a build records no storage option at all (:func:`without_storage_options`: they do not
  change what the store holds, so they stay out of ``build.json``);
* a run writes its config (``<run>/config.yaml``, the hyperparameters of ``hparams.yaml``, the
  TensorBoard events and every checkpoint) through :func:`redact`: every secret-looking key
  (:func:`is_secret_key`) keeps its name with the value :data:`REDACTED`, at any depth
  (``client_kwargs: {aws_secret_access_key: ...}``). Reading such a config back,
  :func:`usable` drops those entries, so a resumed run takes its credentials from the
  environment again instead of sending the placeholder as a key.
"""

from __future__ import annotations

import re

REDACTED = "<redacted: give credentials through the environment or a profile>"
OPTION = "storage_options"  # the key of a config section (loader, nwb) that holds them

# words of a key name (split at non-letters and camelCase) that mark a secret value
SECRET_WORDS = frozenset({"key", "secret", "token", "password", "passwd", "pwd", "credential",
                          "credentials", "sas", "auth", "authorization", "cookie",
                          "cookies", "private"})
# words that end a key name which only *names* a secret-free setting
_NOT_SECRET = frozenset({"profile", "endpoint", "region", "anon", "url"})


def _words(key: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(key))
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def is_secret_key(key: str) -> bool:
    """True for option names whose value may be a credential: ``key``, ``secret``,
    ``token``, ``password``, ``aws_access_key_id``, ``aws_secret_access_key``,
    ``aws_session_token``, ``account_key``, ``sas_token``, ``connection_string``,
    ``credentials``, ``SSECustomerKey``... (not ``endpoint_url``, ``anon``, ``profile``)."""
    words = _words(key)
    if not words or words[-1] in _NOT_SECRET:
        return False
    return bool(SECRET_WORDS.intersection(words)) or "_".join(words) == "connection_string"


def without_storage_options(section: dict) -> dict:
    """A config section (as a dict) without its ``storage_options``: what a build records
    of it (``build.json``)."""
    return {k: v for k, v in section.items() if k != OPTION}


def redact(options):
    """A copy of ``options`` (a mapping, possibly nested, or a list of them) with the value of
    every secret-looking key replaced by :data:`REDACTED`; everything else as it was."""
    if isinstance(options, dict):
        return {k: REDACTED if is_secret_key(k) and v not in (None, "") else redact(v)
                for k, v in options.items()}
    if isinstance(options, (list, tuple)):
        return type(options)(redact(v) for v in options)
    return options


def usable(options):
    """``options`` without the entries :func:`redact` replaced (at any depth): what a config
    read back from a run folder may pass to fsspec (the credentials come from the
    environment)."""
    if isinstance(options, dict):
        return {k: usable(v) for k, v in options.items() if v != REDACTED}
    if isinstance(options, (list, tuple)):
        return type(options)(usable(v) for v in options if v != REDACTED)
    return options


def secret_keys(options, prefix: str = "") -> list[str]:
    """Dotted names of the secret-looking keys set in ``options`` (for a warning)."""
    found = []
    if isinstance(options, dict):
        for k, v in options.items():
            name = f"{prefix}.{k}" if prefix else str(k)
            if is_secret_key(k) and v not in (None, "", REDACTED):
                found.append(name)
            else:
                found += secret_keys(v, name)
    return found


def _map_config(cfg, fn):
    """``cfg`` (a config dataclass such as DataConfig / RunConfig) with ``fn`` applied to the
    ``storage_options`` of each of its sections that has them (``loader``, ``nwb``)."""
    from dataclasses import fields, is_dataclass, replace

    changed = {}
    for f in fields(cfg):
        section = getattr(cfg, f.name)
        if is_dataclass(section) and hasattr(section, OPTION):
            changed[f.name] = replace(section, **{OPTION: fn(getattr(section, OPTION))})
    return replace(cfg, **changed)


def redact_config(cfg):
    """``cfg`` with every section's storage options :func:`redact`-ed: what a run writes."""
    return _map_config(cfg, redact)


def usable_config(cfg):
    """``cfg`` with every section's storage options :func:`usable`: what a run uses of a
    config read back from a run folder (placeholders dropped, credentials from the
    environment)."""
    return _map_config(cfg, usable)


def config_secrets(cfg) -> list[str]:
    """Dotted names (``loader.storage_options.secret``) of the secrets set in ``cfg``."""
    from dataclasses import fields, is_dataclass

    found = []
    for f in fields(cfg):
        section = getattr(cfg, f.name)
        if is_dataclass(section) and hasattr(section, OPTION):
            found += secret_keys(getattr(section, OPTION), f"{f.name}.{OPTION}")
    return found
