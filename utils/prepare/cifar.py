"""Read CIFAR-10/100 from the python-pickle archive, its extracted folder or a folder holding either."""
from __future__ import annotations

import io
import pickle
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional

import numpy as np

from utils.prepare.errors import PrepareError

URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGE_BYTES = 3 * 32 * 32  # one row of b"data": the R, G and B planes, each 32x32 row-major
NAME_RE = re.compile(r"\w[\w\- ]{0,99}")  # a class name must be usable as a folder name


@dataclass(frozen=True)
class Spec:
    """File names and pickle keys of one CIFAR variant."""

    archive: str  # the published archive
    folder: str  # the folder inside it
    train: tuple[str, ...]  # train pickles, in the standard order
    test: tuple[str, ...]
    meta: str
    label_key: bytes
    names_key: bytes
    n_classes: int

    @property
    def files(self) -> tuple[str, ...]:
        return self.train + self.test + (self.meta,)


SPECS: Mapping[str, Spec] = {
    "cifar10": Spec("cifar-10-python.tar.gz", "cifar-10-batches-py",
                    tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
                    b"labels", b"label_names", 10),
    "cifar100": Spec("cifar-100-python.tar.gz", "cifar-100-python", ("train",), ("test",), "meta",
                     b"fine_labels", b"fine_label_names", 100),
}


# ---------------------------------------------------------------- unpickling

def _numpy_reconstruct() -> Callable:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# The only globals the CIFAR pickles (Python 2 cPickle, protocol 2) refer to: numpy's array and
# dtype constructors. Anything else is refused, so a foreign file cannot run code.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _Unpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only ALLOWED_GLOBALS."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which no CIFAR file does"
                                         ) from None


def unpickle(where: str, data: bytes) -> dict:
    """Load one CIFAR pickle (dict with bytes keys) like pickle.load(f, encoding="bytes")."""
    try:
        obj = _Unpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # truncated or foreign data raises many types
        raise PrepareError(f"{where}: not a valid CIFAR pickle ({exc.__class__.__name__}: {exc}); the "
                           "file is damaged or truncated, download it again") from exc
    if not isinstance(obj, dict):
        raise PrepareError(f"{where}: holds a {type(obj).__name__}, not the dict of a CIFAR file; "
                           "download it again")
    return obj


def _field(obj: dict, key: bytes, where: str) -> object:
    for k in (key, key.decode()):
        if k in obj:
            return obj[k]
    have = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
    raise PrepareError(f"{where}: no {key!r} entry (keys: {have}); this is not the expected CIFAR "
                       "file, download it again")


def parse_batch(obj: dict, where: str, spec: Spec) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N,32,32,3] (RGB) and labels int64 [N] of one data batch."""
    data = _field(obj, b"data", where)
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != IMAGE_BYTES):
        found = (f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray)
                 else type(data).__name__)
        raise PrepareError(f"{where}: b'data' should be a uint8 array [N, {IMAGE_BYTES}], found "
                           f"{found}; download the file again")
    raw = _field(obj, spec.label_key, where)
    try:
        labels = np.asarray(raw, dtype=np.int64) if isinstance(raw, (list, tuple, np.ndarray)) else None
    except (TypeError, ValueError, OverflowError):
        labels = None
    if labels is None or labels.ndim != 1 or len(labels) != len(data):
        raise PrepareError(f"{where}: {spec.label_key!r} should be {len(data)} integer labels (one per "
                           "image); download the file again")
    bad = np.flatnonzero((labels < 0) | (labels >= spec.n_classes))
    if bad.size:
        raise PrepareError(f"{where}: {bad.size} labels outside 0..{spec.n_classes - 1} (first at "
                           f"index {bad[0]}: {labels[bad[0]]}); download the file again")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def parse_names(obj: dict, where: str, spec: Spec) -> list[str]:
    """The class names of a meta file, checked to be distinct, usable folder names."""
    raw = _field(obj, spec.names_key, where)
    if not isinstance(raw, (list, tuple)) or len(raw) != spec.n_classes:
        n = len(raw) if isinstance(raw, (list, tuple)) else type(raw).__name__
        raise PrepareError(f"{where}: {spec.names_key!r} should list {spec.n_classes} class names, "
                           f"found {n}; download the file again")
    names = []
    for n in raw:
        try:
            name = n.decode("utf-8") if isinstance(n, bytes) else n
        except UnicodeDecodeError:
            name = None
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise PrepareError(f"{where}: class name {n!r} cannot be a folder name; download the "
                               "file again")
        names.append(name)
    if len(set(names)) != len(names):
        raise PrepareError(f"{where}: class names repeat; download the file again")
    return names


# ---------------------------------------------------------------- locating and reading files

@dataclass(frozen=True)
class Located:
    """The extracted folder (archive=False) or the archive (archive=True) to read."""

    path: Path
    archive: bool


def _other_hint(dataset: str, seen: str) -> str:
    for other, spec in SPECS.items():
        if other != dataset and (spec.folder in seen or spec.archive in seen):
            return f" (these are {other} files: use --dataset {other})"
    return ""


def locate(dataset: str, source: Path | str) -> Located:
    """Find the CIFAR files in `source`: the archive, the extracted folder or a folder with either."""
    spec, source = SPECS[dataset], Path(source)
    if source.is_file():
        return Located(source, True)
    if not source.is_dir():
        raise PrepareError(f"{source}: not found; pass {spec.archive}, its extracted folder "
                           f"{spec.folder}/, or a folder holding either")
    if any((source / name).is_file() for name in spec.files):
        return Located(source, False)
    if (source / spec.folder).is_dir():
        return Located(source / spec.folder, False)
    if (source / spec.archive).is_file():
        return Located(source / spec.archive, True)
    hint = _other_hint(dataset, " ".join(p.name for p in source.iterdir()))
    raise PrepareError(f"{source}: no {dataset} files found{hint}; put {spec.archive} or its extracted "
                       f"folder {spec.folder}/ ({', '.join(spec.files)}) there, or omit --source to "
                       "download")


def _folder_files(folder: Path, spec: Spec) -> Iterator[tuple[str, str, bytes]]:
    for name in spec.files:
        path = folder / name
        if not path.is_file():
            raise PrepareError(f"{path}: file not found; the folder should hold "
                               f"{', '.join(spec.files)}: extract {spec.archive} again (or pass the "
                               "archive itself)")
        try:
            yield name, str(path), path.read_bytes()
        except OSError as exc:
            raise PrepareError(f"{path}: cannot read ({exc}); download it again") from exc


def _archive_files(archive: Path, spec: Spec, dataset: str) -> Iterator[tuple[str, str, bytes]]:
    """Read only the known members (never extracting anything to disk)."""
    wanted = {f"{spec.folder}/{name}": name for name in spec.files}
    found, seen = set(), []
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                member_name = member.name.removeprefix("./")
                seen.append(member_name)
                name = wanted.get(member_name)
                if name is None or name in found or not member.isfile():
                    continue
                fh = tar.extractfile(member)
                data = fh.read() if fh is not None else b""
                found.add(name)
                yield name, f"{member_name} (in {archive})", data
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise PrepareError(f"{archive}: cannot read the archive ({exc.__class__.__name__}: {exc}); "
                           f"it is damaged or truncated (or not {spec.archive}), download it again"
                           ) from exc
    missing = [m for m, name in wanted.items() if name not in found]
    if missing:
        hint = _other_hint(dataset, " ".join(seen[:5]))
        raise PrepareError(f"{archive}: no member {missing[0]}{hint}; this is not a complete "
                           f"{spec.archive}, download it again")


def read_cifar(dataset: str, source: Path | str, expected_counts: Optional[Mapping[str, int]] = None
               ) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Class names and {split: (images uint8 [N,32,32,3], labels [N])} in the standard order."""
    spec = SPECS[dataset]
    loc = locate(dataset, source)
    files = _archive_files(loc.path, spec, dataset) if loc.archive else _folder_files(loc.path, spec)
    parsed: dict[str, object] = {}
    for name, where, data in files:
        obj = unpickle(where, data)
        del data
        parse = parse_names if name == spec.meta else parse_batch
        parsed[name] = parse(obj, where, spec)
    splits = {}
    for split, names in (("train", spec.train), ("test", spec.test)):
        images = np.concatenate([parsed[n][0] for n in names])  # contiguous [N,32,32,3]
        labels = np.concatenate([parsed[n][1] for n in names])
        expected = None if expected_counts is None else expected_counts.get(split)
        if expected is not None and len(labels) != expected:
            raise PrepareError(f"{loc.path}: {len(labels)} {split} samples ({', '.join(names)}), "
                               f"expected {expected} for the full {split} set; use the complete "
                               "official files (or --no_count_check for a custom set)")
        splits[split] = (images, labels)
    return parsed[spec.meta], splits
