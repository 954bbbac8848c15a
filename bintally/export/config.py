"""`ExportConfig`: the settings of `bintally export`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bintally.progress import PROGRESS_HELP
from bintally.settings import setting

FORMATS = ("onnx", "safetensors")
QUANTIZATIONS = ("int8",)


@dataclass
class ExportConfig:
    model: Path = setting(flag=("--model", "-m"), help="Run directory, its model/ folder, or a model folder.")
    out: Path = setting(flag=("--out", "-o"), help="Folder to write the export to (new or empty; see --overwrite).")
    format: str = setting("onnx", choices=FORMATS, help="onnx: model.onnx + model.json for ONNX Runtime (no torch needed to serve "
                                                        "it); safetensors: the PyTorch model.")
    quantize: str | None = setting(None, choices=QUANTIZATIONS, help="int8: static quantisation calibrated on training photos; "
                                                                     "records validation accuracy and speed-up of both.")
    data: Path | None = setting(None, help="Manifest or folder whose val (and train) photos check the export. "
                                           "Default: the run's own data, else the bundled sample.")
    tta: bool | None = setting(None, flag=("--tta/--no-tta",), help="Average each photo with its mirror image (the model's own "
                                                                    "setting if neither is given); --no-tta halves the compute.")
    overwrite: bool = setting(False, flag=("--overwrite",), help="Replace an existing export in --out.")
    progress: bool = setting(True, help=PROGRESS_HELP)
