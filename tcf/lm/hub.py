"""``text_encoder.model`` as users name it, turned into a model folder: the one place that happens.

A local folder is used as it is; a Hugging Face repo id (``org/name``, optionally ``@revision``: a branch,
tag or commit) is resolved through ``huggingface_hub``: from the local cache when offline (``HF_HUB_OFFLINE=1``)
or when the Hub cannot be reached, downloaded when online. Only what tcf reads is fetched: ``config.json``, the
tokenizer files, ``*.safetensors`` (never pickled ``*.bin``) and a sentence-transformers folder's
``modules.json`` and module configs. Either way the answer is the folder holding the transformer (a
sentence-transformers folder may keep it in a sub-folder, see :mod:`tcf.lm.st_modules`)::

    resolve_model("models/opt-125m")                 # /abs/models/opt-125m
    resolve_model("facebook/opt-125m@main")          # <cache>/models--facebook--opt-125m/snapshots/<commit>
    hub_origin(model_dir)                            # HubOrigin('facebook/opt-125m', '<commit>') or None

A cached snapshot's folder is named by its commit, so a model folder from the cache says its own revision
(:func:`hub_origin`): that is what runs and artifacts record, and a new revision is a new folder.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from tcf.config import hub_model
from tcf.errors import TcfError
from tcf.lm.st_modules import MODULES_FILE, read_modules, transformer_dir
from tcf.lm.tokenize import TOKENIZER_FILES

# what a model folder needs at its root (a transformer at the root, a sentence-transformers folder's list)
ROOT_FILES = ("config.json", MODULES_FILE, "config_sentence_transformers.json", "sentence_bert_config.json",
              *TOKENIZER_FILES)
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")  # fnmatch: at any depth
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubOrigin:
    """Where a model folder from the Hugging Face cache came from: its repo and commit."""

    repo_id: str
    revision: str  # the commit hash

    def record(self) -> dict[str, str]:
        """What runs and artifact keys record of it."""
        return {"repo": self.repo_id, "revision": self.revision}


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as ``huggingface_hub`` finds it, read from the environment now (not at
    import): ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def hub_offline() -> bool:
    """Whether the Hub must not be asked (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set true)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in _TRUE


def resolve_model(model: str) -> Path:
    """The absolute folder holding the transformer that ``text_encoder.model`` names (see the module doc).

    Every problem is one TcfError: a repo that is not cached (saying whether tcf was offline or could not
    reach the Hub, and where the cache is), not on the Hub, or without safetensors weights."""
    hub = hub_model(model)
    if hub is None:
        return transformer_dir(Path(model).expanduser().resolve())
    repo, revision = hub
    return _snapshot(repo, revision, str(hub_cache_dir()), hub_offline())


def hub_origin(model_dir: str | Path) -> HubOrigin | None:
    """The repo and commit of a folder inside the hub cache (``…/models--org--name/snapshots/<commit>/…``);
    None for any other folder."""
    path = Path(model_dir)
    for folder in (path, *path.parents):
        if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
            return HubOrigin(folder.parent.parent.name.removeprefix("models--").replace("--", "/"), folder.name)
    return None


@functools.lru_cache(maxsize=16)
def _snapshot(repo: str, revision: str | None, cache: str, offline: bool) -> Path:
    """The transformer folder of ``repo`` at ``revision``, fetched once per process (then cached here: a
    command asks for its model many times, and the Hub should be asked once)."""
    name = f"{repo}@{revision}" if revision else repo
    snapshot = _download(name, repo, revision, ROOT_FILES + WEIGHT_PATTERNS, cache, offline)
    commit = snapshot.name  # the cache names a snapshot by its commit: fetch the modules at that very one
    modules = read_modules(snapshot)
    extra = [] if modules is None else [
        *([f"{modules.transformer}/{f}" for f in ROOT_FILES] if modules.transformer else []),
        *([f"{modules.pooling}/config.json"] if modules.pooling else [])]
    if extra:
        _download(name, repo, commit, extra, cache, offline)
    folder = transformer_dir(snapshot).resolve()
    if not any(folder.glob("*.safetensors")):
        if offline:
            raise TcfError(f"{name}: the cached snapshot {folder} has no .safetensors weights: the repo ships none, "
                           "or they were never downloaded (offline: HF_HUB_OFFLINE is set); tcf never loads pickled "
                           "*.bin weights")
        raise TcfError(f"{name} (commit {commit}) has no .safetensors weights; tcf never loads pickled *.bin "
                       "weights: choose a revision or repo that ships safetensors, or convert it to a local folder")
    return folder


def _download(name: str, repo: str, revision: str | None, patterns: tuple[str, ...] | list[str], cache: str,
              offline: bool) -> Path:
    """``snapshot_download`` of the files matching ``patterns``, its errors as one line each."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=offline,
                                      allow_patterns=list(patterns)))
    except HFValidationError as exc:
        raise TcfError(f"text_encoder.model: {name!r} is neither a local folder nor a valid Hugging Face repo id "
                       f"({_first_line(exc)})") from None
    except LocalEntryNotFoundError as exc:
        if type(exc).__name__ == "IncompleteSnapshotError":  # (newer huggingface_hub) a partial download
            raise TcfError(f"{name}: its snapshot in the Hugging Face cache {cache} is incomplete "
                           f"({_why(offline)}); complete the download where the Hub can be reached") from None
        raise TcfError(f"{name}: not a local folder, and not in the Hugging Face cache {cache} ({_why(offline)}); "
                       "download it where the Hub can be reached, or point HF_HUB_CACHE / HF_HOME at a cache "
                       "that holds it") from None
    except RevisionNotFoundError:
        raise TcfError(f"{name}: the Hugging Face Hub has no revision {revision!r} of {repo}") from None
    except GatedRepoError:
        raise TcfError(f"{name}: a gated repo on the Hugging Face Hub: accept its terms on its page and log in "
                       "(hf auth login)") from None
    except RepositoryNotFoundError:
        raise TcfError(f"{name}: not a local folder, and no such repo on the Hugging Face Hub (or a private "
                       "one: log in with hf auth login)") from None
    except HfHubHTTPError as exc:
        raise TcfError(f"{name}: the Hugging Face Hub answered: {_first_line(exc)}") from None
    except OSError as exc:
        raise TcfError(f"{cache}: cannot download {name} into the Hugging Face cache: {exc.strerror or exc}") \
            from None
    except Exception as exc:  # the HTTP client's own errors (a proxy refusing, …): still one line
        if not type(exc).__module__.startswith("httpx"):
            raise
        raise TcfError(f"{name}: cannot reach the Hugging Face Hub: {_first_line(exc)}") from None


def _why(offline: bool) -> str:
    if offline:
        return "offline: HF_HUB_OFFLINE is set"
    return "the Hugging Face Hub could not be reached, so tcf looked offline"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
