"""Local files only: t2ijax never downloads a model, so a hub id where a folder is expected fails at once."""

from __future__ import annotations

import os


def not_local_message(path, what: str = "") -> str:
    what = f"{what} " if what else ""
    return (f"{what}{os.fspath(path)!r} is not a local folder. t2ijax never downloads models: download it elsewhere "
            f"(e.g. `huggingface-cli download {os.fspath(path)} --local-dir DIR`) and pass the local folder path.")


def require_local_folder(path, what: str = "") -> str:
    """`path` as a string if it is an existing folder, else FileNotFoundError with the download hint."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(not_local_message(path, what))
    return path
