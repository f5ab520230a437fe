"""The evaluation result as `fiqa report --eval` reads it: its Error-versus-Discard
Characteristic (EDC) curves.

One JSON object (keys beyond these are ignored: `evaluate` writes many more, and another
producer may add its own):

    {"curves": [{"method": str, "fr_model": str, "fmr": float,
                 "discard": [float, ...], "fnmr": [float, ...],
                 "pauc": float, "pauc_discard_limit": float}, ...]}

`discard` holds fractions of comparisons discarded (lowest quality first) in [0, 1], ascending;
`fnmr[i]` is the false non-match rate at the threshold that gives FMR `fmr`, after discarding
`discard[i]`; `pauc` is the area under the curve up to `pauc_discard_limit`. Curves are drawn
one panel per (fr_model, fmr), one line per method.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.storage import StorageOptions, filesystem


class EdcError(ValueError):
    """An evaluation result that cannot be read or is not in the format above."""


class EdcCurve(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    method: str
    fr_model: str
    fmr: float = Field(gt=0, le=1)
    discard: list[float] = Field(min_length=1)
    fnmr: list[float] = Field(min_length=1)
    pauc: float
    pauc_discard_limit: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def paired(self) -> EdcCurve:
        if len(self.discard) != len(self.fnmr):
            raise ValueError(
                f"discard and fnmr differ in length ({len(self.discard)} != {len(self.fnmr)})"
            )
        if any(not 0 <= d <= 1 for d in self.discard):
            raise ValueError("discard fractions must lie in [0, 1]")
        if any(b < a for a, b in zip(self.discard, self.discard[1:], strict=False)):
            raise ValueError("discard fractions must be ascending")
        if any(not 0 <= f <= 1 for f in self.fnmr):
            raise ValueError("fnmr values must lie in [0, 1]")
        return self


class EdcResult(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    curves: list[EdcCurve] = Field(min_length=1)

    def panels(self) -> dict[tuple[str, float], list[EdcCurve]]:
        """Curves grouped by (fr_model, fmr), in order of first appearance."""
        out: dict[tuple[str, float], list[EdcCurve]] = {}
        for curve in self.curves:
            out.setdefault((curve.fr_model, curve.fmr), []).append(curve)
        return out


def load_edc(uri: str, storage: StorageOptions | None = None) -> EdcResult:
    fs, path = filesystem(uri, storage)
    try:
        with fs.open(path, "rb") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdcError(f"cannot read evaluation result {uri}: {e}") from None
    try:
        return EdcResult.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'result'}: {err['msg']}" for err in e.errors()
        )
        raise EdcError(f"{uri} is not an EDC result: {problems}") from None
