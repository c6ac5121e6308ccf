"""Locate the files of a Paddle inference model directory, in either format."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ppdeploy.errors import ArtifactError, ModelNotFoundError, one_line
from ppdeploy.fsutil import sha256_files

PREFIX = "inference"
# Bytes per element of each VarType.Type a parameter can hold (paddle/fluid/framework/framework.proto).
_DTYPE_BYTES = {0: 1, 1: 2, 2: 4, 3: 8, 4: 2, 5: 4, 6: 8, 19: 8, 20: 1, 21: 1, 22: 2, 23: 8, 24: 16, 32: 1, 33: 1}
_MAX_DESC_BYTES = 1 << 16
_MAX_LOD_LEVELS = 16


@dataclass(frozen=True)
class PaddleModel:
    """A Paddle inference model on disk.

    Attributes:
        directory: the folder.
        model_file: ``inference.json`` (Paddle 3 PIR) or ``inference.pdmodel`` (legacy ProgramDesc).
        params_file: ``inference.pdiparams``.
        fmt: ``"json"`` or ``"pdmodel"``.
    """

    directory: Path
    model_file: Path
    params_file: Path
    fmt: str

    @property
    def yaml_file(self) -> Path | None:
        path = self.directory / "inference_cls.yaml"
        return path if path.is_file() else None

    def content_hash(self) -> str:
        """sha256 over the model and params files: changes whenever the model does."""
        return sha256_files([self.model_file, self.params_file])


def find_paddle_model(directory: str | Path) -> PaddleModel:
    """Return the model in ``directory`` (``inference.json`` preferred over ``inference.pdmodel``).

    Raises:
        ModelNotFoundError: the folder or one of its files is missing, naming what is missing.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelNotFoundError(one_line(str(directory), "not a directory",
                                          "give a folder holding inference.json or inference.pdmodel "
                                          "plus inference.pdiparams, or a zoo name"))
    for fmt in ("json", "pdmodel"):
        model_file = directory / f"{PREFIX}.{fmt}"
        if model_file.is_file():
            params_file = directory / f"{PREFIX}.pdiparams"
            if not params_file.is_file():
                raise ModelNotFoundError(one_line(str(params_file), "missing (the model's weights)",
                                                  "copy inference.pdiparams next to " + model_file.name))
            return PaddleModel(directory, model_file, params_file, fmt)
    raise ModelNotFoundError(one_line(str(directory), "holds no inference.json or inference.pdmodel",
                                      "point at an exported Paddle inference model (deploy export)"))


def check_params_file(params_file: str | Path) -> None:
    """Refuse an ``inference.pdiparams`` that ends inside a tensor: a truncated copy or download.

    The file is Paddle's ``save_combine`` stream; per tensor: uint32 version, uint64 LoD level count (and the
    levels), uint32 tensor version, int32 size of the ``TensorDesc`` protobuf (data type, dims), the protobuf,
    then the raw data. Only seeks and the small headers are read. A record this reader does not understand ends
    the walk without a verdict (the loader then decides): it reports only what it can prove. paddle2onnx needs
    this check, as it converts a truncated file without complaint into an ONNX graph missing weights.

    Raises:
        ArtifactError: a tensor's header or data runs past the end of the file.
    """
    path = Path(params_file)
    size = path.stat().st_size
    with path.open("rb") as fh:
        offset, index = 0, 0
        while offset < size:
            end = _tensor_end(fh, offset)
            if end is None:
                return
            if end > size:
                raise ArtifactError(one_line(str(path), f"truncated: tensor {index + 1} (from byte {offset:,}) "
                                             f"runs past the end of the file ({size:,} bytes)",
                                             "the file is damaged: export or download the model again"))
            offset, index = end, index + 1


def tensor_shapes(params_file: str | Path) -> list[tuple[int, ...]] | None:
    """The shape of every tensor in an ``inference.pdiparams``, in file order, from the headers only (seeks, no
    data read); ``None`` when a record is not understood or the file is cut short."""
    path = Path(params_file)
    size = path.stat().st_size
    shapes: list[tuple[int, ...]] = []
    with path.open("rb") as fh:
        offset = 0
        while offset < size:
            end = _tensor_end(fh, offset, shapes)
            if end is None or end > size:
                return None
            offset = end
    return shapes


def _tensor_end(fh: BinaryIO, start: int, shapes: list[tuple[int, ...]] | None = None) -> int | None:
    """Where the tensor record at ``start`` ends (past EOF when cut short), or ``None`` if not understood; its
    shape is appended to ``shapes`` when given."""
    past_end = 1 << 62
    fh.seek(start)
    head = fh.read(12)
    if len(head) < 12:
        return past_end
    version, lod_levels = struct.unpack("<IQ", head)
    if version != 0 or lod_levels > _MAX_LOD_LEVELS:
        return None
    position = start + 12
    for _ in range(lod_levels):
        raw = fh.read(8)
        if len(raw) < 8:
            return past_end
        position += 8 + struct.unpack("<Q", raw)[0]
        fh.seek(position)
    raw = fh.read(8)
    if len(raw) < 8:
        return past_end
    tensor_version, desc_size = struct.unpack("<Ii", raw)
    if tensor_version != 0 or not 0 < desc_size <= _MAX_DESC_BYTES:
        return None
    desc = fh.read(desc_size)
    if len(desc) < desc_size:
        return past_end
    parsed = _parse_tensor_desc(desc)
    if parsed is None:
        return None
    dtype, dims = parsed
    if shapes is not None:
        shapes.append(tuple(dims))
    return position + 8 + desc_size + math.prod(dims) * _DTYPE_BYTES[dtype]


def _parse_tensor_desc(desc: bytes) -> tuple[int, list[int]] | None:
    """``TensorDesc {data_type = 1; repeated int64 dims = 2}`` → (data type, dims), or ``None`` if unexpected."""
    dtype, dims, pos = None, [], 0
    while pos < len(desc):
        key, pos = _varint(desc, pos)
        if key == 0x08:  # field 1, varint
            dtype, pos = _varint(desc, pos)
        elif key == 0x10:  # field 2, one dim
            dim, pos = _varint(desc, pos)
            dims.append(dim)
        elif key == 0x12:  # field 2, packed dims
            length, pos = _varint(desc, pos)
            end = pos + length
            if pos < 0 or end > len(desc):
                return None
            while 0 <= pos < end:
                dim, pos = _varint(desc, pos)
                dims.append(dim)
        else:
            return None
        if pos < 0:
            return None
    if dtype not in _DTYPE_BYTES or any(dim >= 1 << 62 for dim in dims):  # a negative int64 reads huge
        return None
    return dtype, dims


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """Decode a protobuf varint at ``pos``; the position is -1 when the data ends inside it."""
    value, shift = 0, 0
    while pos < len(data) and shift < 70:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos
    return 0, -1
