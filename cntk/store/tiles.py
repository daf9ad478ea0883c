"""A resumable, tiled kernel matrix on disk.

Layout of a store folder:
    meta.json               what the matrix is: architecture, kind, dtype, sizes, tile size,
                            and a sha256 fingerprint of the inputs (a store never mixes inputs):
                            of their identity when the caller gives one (the data set, chosen
                            indices, preprocessing and raw bytes: experiments/harness/data.py), so that
                            the last bits of a preprocessing never matter; else of their bytes
    tiles/r{I}_c{J}.npy     one tile, rows I*T.., columns J*T.. (numpy .npy)
    meta.copy.json          a second copy of meta.json: a damaged meta.json is restored from it
    tiles/r{I}_c{J}.sha256  its checksum, written after the tile, and the digest of the meta.json it
                            belongs to (a tile is never counted for another matrix; if both meta
                            files are lost, the next gram run rewrites them from its settings and
                            keeps exactly the tiles written for those settings)
    tiles/r{I}_c{J}.seconds its compute time (for the cost of a kernel; not part of its identity; a
                            tile computed in one pass with other stores' (``compute_tile_group``)
                            records its equal share of the pass)

Both files are written atomically (temporary file + rename), so a killed job leaves at most a
tile without its checksum, which counts as missing; a tile whose bytes do not match its checksum
(corrupted, truncated) counts as failed; both are recomputed, never used.

Why .npy tiles with checksums rather than zarr: every tile is an independent, atomically renamed
file in numpy's own well-kept format, readable without this package, verifiable by checksum,
and safe for many writers on a shared (NFS/Lustre) file system, where no locking is needed
because no two jobs write the same tile.

Which tiles: rows x columns of ``n_rows`` row inputs by ``n_cols`` column inputs; with
``symmetric`` (rows and columns are the same inputs) only tiles with J >= I are stored.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cntk.api import kernel
from cntk.architecture import Architecture
from cntk.depths import kernels
from cntk.store.atomic import write_atomic


def fingerprint(x: torch.Tensor, identity: dict | None = None) -> str:
    """sha256 of the inputs' identity (a JSON-able description, with x's shape and dtype) when
    given, else of their bytes, shape and dtype."""
    h = hashlib.sha256(f"{tuple(x.shape)} {x.dtype}".encode())
    if identity is not None:
        h.update(b"identity " + json.dumps(identity, sort_keys=True).encode())
    else:
        h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class MetaUnreadable(ValueError):
    """meta.json and its copy are both unreadable."""


def _parse_meta(meta_path: Path) -> "StoreMeta":
    return StoreMeta(**json.loads(meta_path.read_text()))


def _read_meta(path: Path) -> "StoreMeta":
    """meta.json, or its copy when meta.json is damaged (then meta.json is restored from the copy)."""
    meta_path = path / "meta.json"
    try:
        return _parse_meta(meta_path)
    except (OSError, json.JSONDecodeError, TypeError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0]
    try:
        meta = _parse_meta(path / "meta.copy.json")
    except (OSError, json.JSONDecodeError, TypeError, UnicodeDecodeError):
        raise MetaUnreadable(f"{meta_path} is unreadable (truncated or corrupt: {first}) and has no readable copy: "
                             "rerun the same experiment=gram command, which rewrites it from its settings and keeps "
                             "every finished tile of exactly those settings") from None
    try:
        write_atomic(meta_path, _meta_bytes(meta))
    except OSError:
        pass  # read-only store: the copy serves
    return meta


def _meta_bytes(meta: "StoreMeta") -> bytes:
    return json.dumps(asdict(meta), indent=1).encode()


def _write_meta(path: Path, meta: "StoreMeta") -> None:
    write_atomic(path / "meta.json", _meta_bytes(meta))
    write_atomic(path / "meta.copy.json", _meta_bytes(meta))


def _digest(meta: "StoreMeta") -> str:
    """What a tile's checksum file records of the matrix it belongs to."""
    return hashlib.sha256(json.dumps(asdict(meta), sort_keys=True).encode()).hexdigest()


@dataclass
class StoreMeta:
    arch: dict
    kind: str
    dtype: str
    n_rows: int
    n_cols: int
    tile: int
    symmetric: bool
    rows_sha256: str
    cols_sha256: str
    fingerprint: str = "bytes"  # "identity" or "bytes": what rows_sha256 / cols_sha256 hash

    @property
    def grid(self) -> tuple[int, int]:
        return -(-self.n_rows // self.tile), -(-self.n_cols // self.tile)

    def tiles(self) -> list[tuple[int, int]]:
        gi, gj = self.grid
        return [(i, j) for i in range(gi) for j in range(gj) if not (self.symmetric and j < i)]


def _differences(have, want) -> str:
    """'field: stored X, asked Y' for every field (arch fields one by one) where two metas differ."""
    a = have if isinstance(have, dict) else asdict(have)
    b = want if isinstance(want, dict) else asdict(want)
    out = []
    for k in a.keys() | b.keys():
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += [f"{k}.{f}: stored {a[k].get(f)!r}, asked {b[k].get(f)!r}"
                    for f in sorted(a[k].keys() | b[k].keys()) if a[k].get(f) != b[k].get(f)]
        elif a.get(k) != b.get(k):
            out.append(f"{k}: stored {a.get(k)!r}, asked {b.get(k)!r}")
    return "; ".join(sorted(out))


def _fingerprints(rows: torch.Tensor, cols: torch.Tensor | None, identity: tuple[dict, dict | None] | None) -> dict:
    ids = identity or (None, None)
    return {"rows_sha256": fingerprint(rows, ids[0]),
            "cols_sha256": fingerprint(rows, ids[0]) if cols is None else fingerprint(cols, ids[1]),
            "fingerprint": "bytes" if identity is None else "identity"}


class TileStore:
    """A kernel matrix K(rows, cols) of ``arch`` in tiles under ``path``."""

    def __init__(self, path: str | Path, meta: StoreMeta):
        self.path, self.meta = Path(path), meta
        self.digest = _digest(meta)

    def _check(self, check: Path) -> tuple[str, str | None]:
        """(tile sha256, the digest of the matrix it was written for, or None in older stores)."""
        lines = check.read_text().split()
        return (lines[0] if lines else ""), (lines[1] if len(lines) > 1 else None)

    def _vouches(self, check: Path, raw: bytes) -> bool:
        """Whether the checksum file vouches for these bytes as a tile of this matrix."""
        sha, digest = self._check(check)
        return hashlib.sha256(raw).hexdigest() == sha and digest in (None, self.digest)

    def _forget_unattributed(self) -> None:
        """After meta.json was rebuilt: checksums that name no matrix cannot be attributed: dropped
        (their tiles count as missing and are recomputed)."""
        for check in (self.path / "tiles").glob("*.sha256"):
            if self._check(check)[1] is None:
                check.unlink(missing_ok=True)

    # -- creation -----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, rows: torch.Tensor, cols: torch.Tensor | None, arch: Architecture,
             kind: str = "ntk", tile: int = 256, identity: tuple[dict, dict | None] | None = None) -> "TileStore":
        """Create the store, or reopen it after checking that it holds the same matrix.
        identity: (rows' identity, cols' identity or None) to fingerprint instead of the bytes."""
        if tile < 1:
            raise ValueError(f"tile must be >= 1, got {tile}")
        symmetric = cols is None
        meta = StoreMeta(
            arch=asdict(arch), kind=kind, dtype=str(rows.dtype).replace("torch.", ""), n_rows=len(rows),
            n_cols=len(rows) if symmetric else len(cols), tile=tile, symmetric=symmetric,
            **_fingerprints(rows, cols, identity),
        )
        path = Path(path)
        meta_path = path / "meta.json"
        if meta_path.exists() or (path / "meta.copy.json").exists():
            try:
                old = _read_meta(path)
            except MetaUnreadable:  # rebuilt from these settings: only tiles written for them count
                _write_meta(path, meta)
                store = cls(path, meta)
                store._forget_unattributed()
                return store
            if old != meta:
                raise ValueError(f"{path} holds a different matrix ({_differences(old, meta)}): "
                                 "use another store path for this one")
            if not (path / "meta.copy.json").exists():
                write_atomic(path / "meta.copy.json", _meta_bytes(meta))  # stores made before the copy
        else:
            (path / "tiles").mkdir(parents=True, exist_ok=True)
            _write_meta(path, meta)
        return cls(path, meta)

    @classmethod
    def load(cls, path: str | Path) -> "TileStore":
        meta_path = Path(path) / "meta.json"
        if not meta_path.exists() and not (Path(path) / "meta.copy.json").exists():
            raise FileNotFoundError(f"{path} is not a tile store (no meta.json): run experiment=gram first")
        return cls(path, _read_meta(Path(path)))

    # -- tiles ----------------------------------------------------------------------------------
    def _files(self, i: int, j: int) -> tuple[Path, Path]:
        base = self.path / "tiles" / f"r{i}_c{j}"
        return base.with_suffix(".npy"), base.with_suffix(".sha256")

    def _bounds(self, i: int, j: int) -> tuple[slice, slice]:
        t = self.meta.tile
        return slice(i * t, min((i + 1) * t, self.meta.n_rows)), slice(j * t, min((j + 1) * t, self.meta.n_cols))

    def state(self, i: int, j: int) -> str:
        """'done', 'missing' (no tile or no checksum yet) or 'failed' (bytes do not match the checksum)."""
        data, check = self._files(i, j)
        if not data.exists() or not check.exists():
            return "missing"
        return "done" if self._vouches(check, data.read_bytes()) else "failed"

    def checksum(self, i: int, j: int) -> str:
        """The sha256 recorded for tile (i, j) ('' when it has none)."""
        check = self._files(i, j)[1]
        return self._check(check)[0] if check.exists() else ""

    def status(self) -> dict[str, list[tuple[int, int]]]:
        out: dict[str, list[tuple[int, int]]] = {"done": [], "missing": [], "failed": []}
        for ij in self.meta.tiles():
            out[self.state(*ij)].append(ij)
        return out

    def read_tile(self, i: int, j: int, verify: bool = True) -> np.ndarray:
        """Tile (i, j); with verify, its checksum is checked first (raises if missing or corrupt)."""
        data, check = self._files(i, j)
        raw = data.read_bytes() if data.exists() else b""
        if verify and (not check.exists() or not self._vouches(check, raw)):
            raise ValueError(f"tile ({i}, {j}) of {self.path} is missing or corrupt: rerun experiment=gram to recompute it")
        return np.load(io.BytesIO(raw))

    def write_tile(self, i: int, j: int, block: np.ndarray, seconds: float | None = None) -> None:
        data, check = self._files(i, j)
        if seconds is not None:
            write_atomic(data.with_suffix(".seconds"), f"{seconds:.6f}\n".encode())
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(block))
        raw = buf.getvalue()
        check.unlink(missing_ok=True)  # never a checksum that vouches for older bytes
        write_atomic(data, raw)
        write_atomic(check, f"{hashlib.sha256(raw).hexdigest()}\n{self.digest}\n".encode())

    def compute_tile(self, i: int, j: int, rows: torch.Tensor, cols: torch.Tensor | None, **kernel_options) -> str:
        """Compute tile (i, j) unless it is done; returns its state before ('done', 'missing', 'failed')."""
        state = self.state(i, j)
        if state == "done":
            return state
        arch = Architecture(**self.meta.arch)
        rs, cs = self._bounds(i, j)
        t0 = time.perf_counter()
        if self.meta.symmetric and i == j:
            block = kernel(rows[rs], None, arch, self.meta.kind, progress=False, **kernel_options)
        else:
            block = kernel(rows[rs], (rows if cols is None else cols)[cs], arch, self.meta.kind, progress=False,
                           **kernel_options)
        self.write_tile(i, j, block.cpu().numpy(), seconds=time.perf_counter() - t0)
        return state

    def readout(self) -> tuple[int, str]:
        """(depth, kind) of the matrix this store holds."""
        return int(self.meta.arch["depth"]), self.meta.kind

    def cost(self) -> dict[str, float]:
        """Kernel entries and compute seconds of the timed tiles ({'entries', 'seconds', 'timed_tiles', 'tiles'})."""
        entries, seconds, timed = 0, 0.0, 0
        tiles = self.meta.tiles()
        for i, j in tiles:
            path = self._files(i, j)[0].with_suffix(".seconds")
            try:
                seconds += float(path.read_text())
            except (OSError, ValueError):
                continue
            rs, cs = self._bounds(i, j)
            h, w = rs.stop - rs.start, cs.stop - cs.start
            entries += h * (h + 1) // 2 if self.meta.symmetric and i == j else h * w
            timed += 1
        return {"entries": entries, "seconds": seconds, "timed_tiles": timed, "tiles": len(tiles)}

    def check_matrix(self, arch: Architecture, kind: str, dtype: torch.dtype | str) -> None:
        """Raise (one line, naming each differing field and its two values) unless this store holds
        the kernel of ``arch``, ``kind`` and ``dtype``: a store is never read as another kernel."""
        want = {"arch": asdict(arch), "kind": kind, "dtype": str(dtype).replace("torch.", "")}
        have = {"arch": self.meta.arch, "kind": self.meta.kind, "dtype": self.meta.dtype}
        if want != have:
            raise ValueError(f"{self.path} holds another kernel ({_differences(have, want)}): solve with the store's "
                             "settings, or compute this kernel with experiment=gram into its own store")

    def check_inputs(self, rows: torch.Tensor, cols: torch.Tensor | None,
                     identity: tuple[dict, dict | None] | None = None) -> None:
        """Raise unless rows (and cols) are the inputs this store was made for (by identity when
        given, else by bytes, as the store was fingerprinted)."""
        want = _fingerprints(rows, cols, identity)
        if want["fingerprint"] != self.meta.fingerprint:
            raise ValueError(f"{self.path} was fingerprinted by {self.meta.fingerprint}, these inputs by "
                             f"{want['fingerprint']}: recompute it into another store path")
        if want["rows_sha256"] != self.meta.rows_sha256 or (cols is not None and want["cols_sha256"] != self.meta.cols_sha256):
            raise ValueError(f"these inputs are not the ones {self.path} was made for (another data set, subset, "
                             "preprocessing or image): use another store path")

    def compute(self, rows: torch.Tensor, cols: torch.Tensor | None, job: int = 0, num_jobs: int = 1,
                progress: bool = True, identity: tuple[dict, dict | None] | None = None,
                **kernel_options) -> dict[str, int]:
        """Compute this job's share of the tiles (round robin over the tile list) that are not done.
        Returns counts of tiles computed, skipped (already done) and recomputed (were failed)."""
        if not 0 <= job < num_jobs:
            raise ValueError(f"job index {job} must be in [0, {num_jobs})")
        self.check_inputs(rows, cols, identity)
        from tqdm.auto import tqdm

        counts = {"computed": 0, "skipped": 0, "recomputed": 0}
        mine = [ij for k, ij in enumerate(self.meta.tiles()) if k % num_jobs == job]
        for i, j in tqdm(mine, desc=f"tiles (job {job}/{num_jobs})", disable=not progress, unit="tile"):
            before = self.compute_tile(i, j, rows, cols, **kernel_options)
            counts[{"done": "skipped", "missing": "computed", "failed": "recomputed"}[before]] += 1
        return counts

    def bounds(self, i: int, j: int) -> tuple[slice, slice]:
        """Row and column slices of tile (i, j) in the whole matrix."""
        return self._bounds(i, j)

    def assemble(self) -> np.ndarray:
        """The whole matrix (symmetric stores mirrored); every tile verified; raises if any is not done."""
        out = np.zeros((self.meta.n_rows, self.meta.n_cols), dtype=self.meta.dtype)
        bad = {"missing": 0, "failed": 0}
        for i, j in self.meta.tiles():
            data, check = self._files(i, j)
            if not data.exists() or not check.exists():
                bad["missing"] += 1
                continue
            raw = data.read_bytes()  # read and verified once
            if not self._vouches(check, raw):
                bad["failed"] += 1
                continue
            rs, cs = self._bounds(i, j)
            block = np.load(io.BytesIO(raw))
            out[rs, cs] = block
            if self.meta.symmetric and i != j:
                out[cs, rs] = block.T
        if bad["missing"] or bad["failed"]:
            raise ValueError(f"{self.path}: {bad['missing']} tiles missing and {bad['failed']} failed: "
                             "rerun experiment=gram with the same settings to complete it")
        return out


def _same_but_readout(stores: list[TileStore]) -> None:
    """Raise unless the stores hold one architecture's kernels of the same inputs and tiling, apart
    from the depth and the kind (what one pass of ``cntk.kernels`` can fill)."""
    def key(s: TileStore) -> dict:
        m = asdict(s.meta)
        m["arch"] = {k: v for k, v in m["arch"].items() if k != "depth"}
        return {k: v for k, v in m.items() if k != "kind"}

    first = key(stores[0])
    for s in stores[1:]:
        if key(s) != first:
            raise ValueError(f"{s.path} and {stores[0].path} differ in more than depth and kind "
                             f"({_differences(key(stores[0]), key(s))}): they cannot share one pass")


def compute_tile_group(stores: list[TileStore], i: int, j: int, rows: torch.Tensor, cols: torch.Tensor | None,
                       **kernel_options) -> list[str]:
    """Tile (i, j) of every store that lacks it, in one pass (``cntk.kernels``: every depth and kind
    from one recursion) when more than one does.  The stores hold the same architecture's kernels of
    the same inputs and tiling at several depths and kinds (else ValueError).  Returns each store's
    state before ('done', 'missing', 'failed'); each written tile records an equal share of the
    pass's seconds."""
    if not stores:
        raise ValueError("compute_tile_group needs at least one store")
    _same_but_readout(stores)
    states = [s.state(i, j) for s in stores]
    todo = [s for s, state in zip(stores, states) if state != "done"]
    if len(todo) == 1:
        todo[0].compute_tile(i, j, rows, cols, **kernel_options)
    elif todo:
        lead = todo[0]
        arch = Architecture(**lead.meta.arch)
        depths = sorted({s.readout()[0] for s in todo})
        kinds = [k for k in ("ntk", "nngp") if any(s.readout()[1] == k for s in todo)]
        rs, cs = lead.bounds(i, j)
        other = None if lead.meta.symmetric and i == j else (rows if cols is None else cols)[cs]
        t0 = time.perf_counter()
        blocks = kernels(rows[rs], other, arch, depths=depths, kinds=kinds, progress=False, **kernel_options)
        share = (time.perf_counter() - t0) / len(todo)
        for s in todo:
            s.write_tile(i, j, blocks[s.readout()].cpu().numpy(), seconds=share)
    return states
