"""classify --features: per-video arrays in one .npz, written as the videos finish, resumable.

The file is a zip of .npy members (what numpy.savez writes and numpy.load opens): one member per video,
named by the video's key (its real absolute path, ``"resolved"`` in its JSON line) plus ``.npy``, written
(numpy.lib.format.write_array, stored, not compressed) when the video's last view is computed and before
its JSON line; and, once per file, ``view_index`` (what each row of a video's array is) and ``settings``
(the run's settings as a JSON string, a 0-d str array: a file is resumed only by a run with the same ones).

A killed run leaves the members it wrote and no central directory (zip writes it on close). Opening such a
file for appending (FeaturesFile.open, prepare, merge_parts) first repairs it: the local member headers are
read from the start, the archive is cut after the last complete member (an empty member, one whose data runs
past the end or one not followed by another zip record is the one being written; a member the file ends in,
or ends just after, must match its CRC-32), and a central directory of the members found is written. So a
kill loses only the arrays of the videos being computed. Under torchrun each rank writes PATH.part-RANK
and rank 0 merges the parts into PATH (members already in PATH kept), as cli/corpus.py ResultsFile does
with the JSON lines. A key already in the file is not written again (first written wins): a video whose
array was written but whose line was not (a kill between the two) keeps that array when the resumed run
computes it again.
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Set

import numpy as np

from .errors import UsageError

VIEW_INDEX = "view_index"
SETTINGS = "settings"

_LOCAL = b"PK\x03\x04"
_CENTRAL = b"PK\x01\x02"
_END = b"PK\x05\x06"
_END64 = b"PK\x06\x06"
_RECORDS = (_LOCAL, _CENTRAL, _END, _END64)
_ZIP_MAGIC = (_LOCAL, _END)  # how a zip (an npz) starts: its first member, or the end record of an empty one
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # signature, version, os, flags, method, time, date, crc, sizes, lengths
_EMPTY_END = struct.Struct("<4s4H2LH")
_DATA_DESCRIPTOR = 0x08
_UTF8 = 0x800


@dataclass
class _Member:
    name: str
    header_offset: int
    data_offset: int
    size: int
    crc: int
    flags: int
    time: int
    date: int
    version: int


def _zip64_sizes(extra: bytes, size: int, file_size: int):
    """Sizes from a local header's zip64 extra field (0x0001), where the 32-bit fields hold 0xFFFFFFFF."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        if tag == 1:
            values = list(struct.unpack_from("<" + "Q" * (length // 8), extra, pos + 4))
            if file_size == 0xFFFFFFFF and values:
                file_size = values.pop(0)
            if size == 0xFFFFFFFF and values:
                size = values.pop(0)
        pos += 4 + length
    return size, file_size


def _crc(f, offset: int, size: int) -> int:
    f.seek(offset)
    crc, left = 0, size
    while left:
        chunk = f.read(min(left, 1 << 20))
        if not chunk:
            break
        crc, left = zlib.crc32(chunk, crc), left - len(chunk)
    return crc


def scan(f, length: int) -> List[_Member]:
    """The complete stored members of a zip from its start, read from their local headers (no central
    directory needed): the reading stops at the first record that is not a complete stored member."""
    members: List[_Member] = []
    pos = 0
    while pos + _LOCAL_HEADER.size <= length:
        f.seek(pos)
        head = f.read(_LOCAL_HEADER.size)
        if head[:4] != _LOCAL:
            break
        _, version, _, flags, method, time, date, crc, size, file_size, name_len, extra_len = _LOCAL_HEADER.unpack(head)
        name, extra = f.read(name_len), f.read(extra_len)
        if len(name) < name_len or len(extra) < extra_len or flags & _DATA_DESCRIPTOR or method != zipfile.ZIP_STORED:
            break
        size, file_size = _zip64_sizes(extra, size, file_size)
        data = pos + _LOCAL_HEADER.size + name_len + extra_len
        end = data + size
        if size == 0 or size != file_size or end > length:  # a member being written: its header not yet final
            break
        f.seek(end)
        after = f.read(4)
        if len(after) == 4:
            if after not in _RECORDS:  # its sizes are not those of the data that follows
                break
        elif not any(r.startswith(after) for r in _RECORDS) or _crc(f, data, size) != crc:
            break  # the archive's last member: whole only if its checksum says so
        members.append(_Member(name.decode("utf-8" if flags & _UTF8 else "cp437"), pos, data, size, crc, flags,
                               time, date, version))
        pos = end
    return members


def _info(m: _Member) -> zipfile.ZipInfo:
    date_time = ((m.date >> 9) + 1980, (m.date >> 5) & 0xF, m.date & 0x1F, m.time >> 11, (m.time >> 5) & 0x3F,
                 (m.time & 0x1F) * 2)
    info = zipfile.ZipInfo(m.name, date_time=date_time)
    info.compress_type = zipfile.ZIP_STORED
    info.flag_bits = m.flags
    info.CRC, info.compress_size, info.file_size = m.crc, m.size, m.size
    info.header_offset = m.header_offset
    info.extract_version = info.create_version = max(m.version, 20)
    info.external_attr = 0o600 << 16
    return info


def _is_zip(path: str) -> bool:
    try:
        zipfile.ZipFile(path).close()
        return True
    except (zipfile.BadZipFile, OSError):
        return False


def repair(path: str) -> int:
    """Make `path` a valid zip of its complete members (see the module docstring); returns their count.
    A valid zip is left as it is."""
    if _is_zip(path):
        with zipfile.ZipFile(path) as zf:
            return len(zf.infolist())
    with open(path, "r+b") as f:
        length = f.seek(0, os.SEEK_END)
        members = scan(f, length)
        end = members[-1].data_offset + members[-1].size if members else 0
        f.truncate(end)
        f.seek(end)
        f.write(_EMPTY_END.pack(_END, 0, 0, 0, 0, 0, end, 0))  # a valid, empty central directory at `end`
    with zipfile.ZipFile(path, "a") as zf:
        zf.filelist.extend(_info(m) for m in members)
        zf.comment = b""  # marks the archive modified: close() writes the central directory of its filelist
    return len(members)


def members(path: str) -> Dict[str, zipfile.ZipInfo]:
    """Member name -> info of an archive, read-only: a killed run's file (no central directory) by scan()."""
    try:
        with zipfile.ZipFile(path) as zf:
            return {i.filename: i for i in zf.infolist()}
    except FileNotFoundError:
        return {}
    except zipfile.BadZipFile:
        with open(path, "rb") as f:
            return {m.name: _info(m) for m in scan(f, f.seek(0, os.SEEK_END))}


def _read_member(path: str, info: zipfile.ZipInfo) -> bytes:
    with open(path, "rb") as f:  # through the local header: works with or without a central directory
        f.seek(info.header_offset)
        head = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
        f.seek(info.header_offset + _LOCAL_HEADER.size + head[-2] + head[-1])
        return f.read(info.compress_size)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(array, order="C"), allow_pickle=False)
    return buf.getvalue()


def _recorded_settings(path: str, info: Optional[zipfile.ZipInfo]) -> Optional[dict]:
    if info is None:
        return None
    try:
        value = np.lib.format.read_array(io.BytesIO(_read_member(path, info)), allow_pickle=False)
        return json.loads(str(value))
    except (ValueError, OSError):
        return None


class FeaturesFile:
    """The features archive of one rank: PATH itself in a single-process run, PATH.part-RANK under torchrun.

    write(key, array) adds member KEY.npy unless KEY is there already; open() writes `constants` (e.g.
    view_index) and the settings once per file; close() writes the central directory; merge_parts() (rank
    0) moves the part files' members into PATH."""

    def __init__(self, path: str, rank: int = 0, world_size: int = 1) -> None:
        self.path, self.rank, self.world_size = path, rank, world_size
        self.own = path if world_size == 1 else f"{path}.part-{rank}"
        self._zip: Optional[zipfile.ZipFile] = None
        self._names: Set[str] = set()

    def part_files(self) -> List[str]:
        return sorted(glob.glob(glob.escape(self.path) + ".part-*"))

    def keys(self) -> Set[str]:
        """The keys of every member in PATH and the part files (read-only; a killed run's files included)."""
        names: Set[str] = set()
        for path in [self.path, *self.part_files()]:
            names.update(members(path))
        return {n[:-4] if n.endswith(".npy") else n for n in names}

    def check_settings(self, settings: dict, what: str) -> None:
        """UsageError if PATH or a part file was written with other settings (`what`: how to fix it)."""
        from .resume import _differences

        for path in [self.path, *self.part_files()]:
            found = members(path)
            if not found:
                continue
            recorded = _recorded_settings(path, found.get(SETTINGS + ".npy"))
            which = "" if path == self.path else f"its part file {path} "
            if recorded is None:
                raise UsageError(f"--features {self.path}: {which}holds arrays but no settings member: not written "
                                 "by classify --features; give another path")
            if recorded != settings:
                raise UsageError(f"--features {self.path}: {which}was written with other settings "
                                 f"({_differences(recorded, settings)}); {what}")

    def open(self, settings: dict, constants: Optional[Dict[str, np.ndarray]] = None) -> None:
        if os.path.exists(self.own) and os.path.getsize(self.own):
            repair(self.own)
            self._zip = zipfile.ZipFile(self.own, "a")
        else:
            self._zip = zipfile.ZipFile(self.own, "w")
        self._names = set(self._zip.namelist())
        for key, value in {**(constants or {}), SETTINGS: np.array(json.dumps(settings, sort_keys=True))}.items():
            self.write(key, value)

    def write(self, key: str, array: np.ndarray) -> bool:
        """Add KEY.npy (True), or nothing when the file has it already (False). The member is in the file
        (the OS's) when this returns."""
        assert self._zip is not None, "FeaturesFile.open() first"
        name = key + ".npy"
        if name in self._names:
            return False
        self._zip.writestr(name, _npy(array))
        self._zip.fp.flush()
        self._names.add(name)
        return True

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def start_over(self) -> None:
        """Rank 0, before any rank writes: PATH and its part files removed."""
        for path in [self.path, *self.part_files()]:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass

    def prepare(self) -> None:
        """Rank 0, before any rank writes: a killed run's PATH repaired and its part files merged into it."""
        if os.path.exists(self.path) and os.path.getsize(self.path):
            repair(self.path)
        self.merge_parts()

    def merge_parts(self) -> None:
        """Rank 0, after every rank closed its part: the members missing from PATH appended, the parts removed."""
        parts = self.part_files()
        if not parts:
            return
        exists = os.path.exists(self.path) and os.path.getsize(self.path)
        if exists:
            repair(self.path)
        with zipfile.ZipFile(self.path, "a" if exists else "w") as out:
            seen = set(out.namelist())
            for part in parts:
                if not os.path.getsize(part):
                    continue
                repair(part)
                with zipfile.ZipFile(part) as zf:
                    for info in zf.infolist():
                        if info.filename not in seen:
                            out.writestr(info.filename, zf.read(info))
                            seen.add(info.filename)
        for part in parts:
            os.remove(part)


def setting(args: argparse.Namespace) -> Optional[str]:
    """What a record's settings say of --features: the file's path relative to the --output file's folder
    (so the two may move together), absolute without --output; None without --features."""
    path = getattr(args, "features", None)
    if path is None:
        return None
    output = getattr(args, "output", None)
    if output in (None, "-"):
        return os.path.abspath(path)
    return os.path.relpath(os.path.abspath(path), os.path.dirname(os.path.abspath(output)))


def check_options(args: argparse.Namespace) -> Optional[str]:
    """--features / --features-only, before any model is built; returns the features path (or None)."""
    path = getattr(args, "features", None)
    if getattr(args, "features_only", False):
        if path is None:
            raise UsageError("--features-only: needs --features FILE.npz (the arrays are the run's only output)")
        if getattr(args, "ground_truth", None) is not None:
            raise UsageError("--ground-truth: scores the class probabilities, which --features-only does not "
                             "compute; drop one of them")
    if path is None:
        return None
    if os.path.isdir(path):
        raise UsageError(f"--features {path}: is a directory, expected a file such as "
                         f"{os.path.join(path, 'features.npz')}")
    output = getattr(args, "output", None)
    if output not in (None, "-") and os.path.abspath(output) == os.path.abspath(path):
        raise UsageError(f"--features {path}: is the --output file; give the arrays a file of their own")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"--features {path}: the directory {directory} does not exist")
    try:  # a file of a unique name: ranks probing at once do not meet
        tempfile.NamedTemporaryFile(dir=directory, prefix=".features-probe-").close()
    except OSError as exc:
        raise UsageError(f"--features {path}: cannot write in {directory} ({exc.strerror or exc})") from None
    if os.path.exists(path):
        try:
            with open(path, "r+b") as f:
                head = f.read(4)
        except OSError as exc:
            raise UsageError(f"--features {path}: cannot be written ({exc.strerror or exc})") from None
        if head and head not in _ZIP_MAGIC:
            raise UsageError(f"--features {path}: exists and is not an .npz (zip) file; give another path")
        found = members(path)
        if found and SETTINGS + ".npy" not in found:
            raise UsageError(f"--features {path}: an .npz not written by classify --features (it has no "
                             f"{SETTINGS} member); give another path")
    return path


def check_resume(ff: FeaturesFile, settings: dict, kept: Iterable[dict], resuming: bool) -> None:
    """A resumed run (--output FILE, no --overwrite): the archive (and any part files) hold this run's
    settings and an array for every kept record that names one."""
    if not resuming:
        return
    ff.check_settings(settings, "give the same options, another --features path, or --overwrite to start over")
    named = [r["features"] for r in kept if isinstance(r.get("features"), str)]
    if not named:
        return
    have = ff.keys()
    missing = [k for k in named if k not in have]
    if missing:
        raise UsageError(f"--features {ff.path}: {len(missing)} of the {len(named)} videos recorded with an array "
                         f"have none in it (first: {missing[0]}); --overwrite starts over")
