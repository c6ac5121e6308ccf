"""OpenVINO IR facts, shared by the OpenVINO converters (``to_openvino``, ``openvino_int8``).

``openvino`` is imported inside the functions that need it: importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path

from ppdeploy.errors import OPENVINO_LOCATION_LINES, ConversionError, first_line, one_line

MODEL_FILE = "model.xml"  # the file every OpenVINO artifact holds (its weights: model.bin beside it)


def read_ir(core, xml: Path):
    """``core.read_model`` of an IR a converter reads, with a one-line ``ConversionError`` if it is unreadable.

    (Every new artifact is test-run by the pipeline afterwards, through its runtime: no check here.)
    """
    try:
        return core.read_model(str(xml), str(Path(xml).with_suffix(".bin")))
    except Exception as exc:
        reason = first_line(exc, skip=OPENVINO_LOCATION_LINES)
        raise ConversionError(one_line(str(xml), f"not a readable OpenVINO IR ({reason})",
                                       "delete its folder and reconvert")) from exc
