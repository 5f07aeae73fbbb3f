"""Save and load trained kernels as plain arrays plus JSON, refusing a model whose layout differs.

A saved kernel is a directory with two files:

* ``arrays.npz`` -- every array of the kernel (network weights, standardisation, mass
  matrix, ...) as an uncompressed NumPy archive, read back with ``allow_pickle=False``:
  loading cannot run code, whatever the file holds.
* ``kernel.json`` -- what the arrays mean: the kind of kernel, the name (pytree key path),
  shape and dtype of every array, the parameter layout of the model it was trained on
  (``Layout.fingerprint``), the method's own settings (e.g. the network's hyperparameters,
  so that its structure can be rebuilt), the package versions, and the SHA-256 of
  ``arrays.npz`` (an integrity check against truncated or edited files; not a security
  boundary, which ``allow_pickle=False`` already is).

The module knows nothing about any method: a method saves a pytree of arrays and a JSON
dict (``save_kernel``), and loads by reading the JSON (``read_metadata``), checking the
layout (``check_layout``), building a template pytree of the right structure from the JSON,
and filling it (``load_arrays``). Every learned method saves and loads through it.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from pymc_neural_steps.target import Layout, LayoutMismatchError
from pymc_neural_steps.validation import check_finite_arrays

__all__ = [
    "ARRAYS_FILE",
    "CorruptKernelError",
    "FORMAT",
    "FORMAT_VERSION",
    "METADATA_FILE",
    "check_layout",
    "load_arrays",
    "read_for_model",
    "read_metadata",
    "save_kernel",
]

FORMAT = "pymc_neural_steps.kernel"
FORMAT_VERSION = 1
ARRAYS_FILE = "arrays.npz"
METADATA_FILE = "kernel.json"
_ALLOWED_KINDS = "fiub"  # float, int, unsigned, bool: no object arrays, ever


class CorruptKernelError(ValueError):
    """A saved kernel's files are damaged: not JSON, not an archive, or truncated."""


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("pymc-neural-steps", "pymc", "pytensor", "jax", "equinox", "optax", "numpy"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "unknown"
    return out


def _leaves_with_names(tree) -> list[tuple[str, np.ndarray]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path), np.asarray(leaf)) for path, leaf in flat]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_kernel(
    path: str | os.PathLike,
    *,
    kind: str,
    arrays: Any,
    layout: Layout | dict,
    metadata: dict,
) -> Path:
    """Write ``arrays`` (a pytree of arrays; ``None`` leaves are skipped) and ``metadata``
    (JSON-serialisable) for a kernel of ``kind`` trained on a model with ``layout``.

    ``path`` is a directory, created if needed; existing files of a saved kernel in it are
    replaced. Returns the directory.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    named = _leaves_with_names(arrays)
    for name, value in named:
        if value.dtype.kind not in _ALLOWED_KINDS:
            raise TypeError(f"array {name} has dtype {value.dtype}; only numeric arrays are saved")
    files = {f"a{i:04d}": value for i, (_, value) in enumerate(named)}
    arrays_path = directory / ARRAYS_FILE
    with arrays_path.open("wb") as f:
        np.savez(f, **files)
    fingerprint = layout.fingerprint() if isinstance(layout, Layout) else dict(layout)
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "layout": fingerprint,
        "arrays": [
            {"file": key, "name": name, "shape": list(value.shape), "dtype": value.dtype.str}
            for key, (name, value) in zip(files, named, strict=True)
        ],
        "arrays_sha256": _sha256(arrays_path),
        "versions": _versions(),
        **metadata,
    }
    reserved = {"format", "format_version", "kind", "layout", "arrays", "arrays_sha256", "versions"}
    clash = reserved & set(metadata)
    if clash:
        raise ValueError(f"metadata may not use the reserved keys {sorted(clash)}")
    (directory / METADATA_FILE).write_text(json.dumps(document, indent=2, sort_keys=True))
    return directory


def read_metadata(path: str | os.PathLike, *, kind: str | None = None) -> dict:
    """The JSON of a saved kernel, checked for format and (optionally) kind."""
    directory = Path(path)
    meta_path = directory / METADATA_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} does not exist: {directory} is not a saved kernel")
    try:
        document = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptKernelError(f"{meta_path} is not valid JSON ({err}): the file is damaged") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not a {FORMAT} file")
    if int(document.get("format_version", -1)) > FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} has format version {document['format_version']}; this version of "
            f"pymc_neural_steps reads up to {FORMAT_VERSION}"
        )
    if kind is not None and document.get("kind") != kind:
        raise ValueError(f"{directory} holds a {document.get('kind')!r} kernel, not {kind!r}")
    return document


def check_layout(metadata: dict, layout: Layout) -> None:
    """Raise ``LayoutMismatchError`` naming the first variable in which ``layout`` differs
    from the layout the saved kernel was trained on."""
    saved = metadata.get("layout")
    if not isinstance(saved, dict) or "variables" not in saved:
        raise LayoutMismatchError("the saved kernel does not record its model's parameter layout")
    layout.check_compatible(saved, what="the model the saved kernel was trained on")


def read_for_model(path: str | os.PathLike, kind: str, model, vars=None) -> tuple[Layout, dict]:  # noqa: A002
    """The first steps of every method's ``load``: ``model``'s parameter layout (the model
    in context when None) and the saved kernel's metadata, refused with
    ``LayoutMismatchError`` naming the variable if the layouts differ."""
    import pymc as pm

    from pymc_neural_steps.target import build_layout

    layout = build_layout(pm.modelcontext(model), vars)
    metadata = read_metadata(path, kind=kind)
    check_layout(metadata, layout)
    return layout, metadata


def load_arrays(path: str | os.PathLike, template: Any, metadata: dict | None = None) -> Any:
    """Fill ``template`` (a pytree of arrays of the right structure, shapes and dtypes)
    with the saved arrays. Names, shapes and dtypes must match the template exactly."""
    directory = Path(path)
    metadata = read_metadata(directory) if metadata is None else metadata
    arrays_path = directory / ARRAYS_FILE
    if _sha256(arrays_path) != metadata.get("arrays_sha256"):
        raise ValueError(
            f"{arrays_path} does not match the checksum recorded in {METADATA_FILE}: "
            "the files were modified or do not belong together"
        )
    entries = metadata.get("arrays", [])
    expected = _leaves_with_names(template)
    if [e["name"] for e in entries] != [name for name, _ in expected]:
        raise ValueError(
            "the saved arrays do not have the structure this kernel expects: saved "
            f"{[e['name'] for e in entries]}, expected {[name for name, _ in expected]}"
        )
    try:
        values = _read_arrays(arrays_path, entries, expected)
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as err:
        raise CorruptKernelError(
            f"{arrays_path} cannot be read ({type(err).__name__}: {err}): the file is damaged "
            "or truncated"
        ) from None
    check_finite_arrays(values, what=str(arrays_path))
    flat, treedef = jax.tree_util.tree_flatten(template)
    return jax.tree_util.tree_unflatten(treedef, values)


def _read_arrays(arrays_path: Path, entries: list, expected: list) -> list[np.ndarray]:
    values = []
    with arrays_path.open("rb") as f, np.load(f, allow_pickle=False) as npz:
        for entry, (name, like) in zip(entries, expected, strict=True):
            value = npz[entry["file"]]
            if value.shape != like.shape or value.dtype != like.dtype:
                raise ValueError(
                    f"saved array {name} has shape {value.shape} and dtype {value.dtype}; "
                    f"expected {like.shape} and {like.dtype}"
                )
            values.append(value)
    return values
