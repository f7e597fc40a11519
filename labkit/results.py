"""Record values in a notebook's outputs (a custom JSON MIME type: tests assert on values, never on printed text) and
read them back from the executed notebook; outside IPython `recorded()` keeps them (notebook code runs as a script)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MIME_TYPE = "application/vnd.labkit.result+json"

_in_process: dict[str, Any] = {}


def _jsonable(value: Any) -> Any:
    """Coerce dataclasses, numpy scalars/arrays and paths into plain JSON; refuse what cannot be represented."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return _jsonable(value.tolist())
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"labkit.results.record: cannot record a {type(value).__name__}; pass JSON-able data")


def record(name: str, value: Any) -> None:
    """Record `value` under `name` in the running notebook's outputs (as JSON; `recorded()` has it in-process).
    Returns nothing, so a cell that ends with a record shows no repr of it."""
    if not name or not isinstance(name, str):
        raise ValueError("labkit.results.record: name must be a non-empty string")
    data = _jsonable(value)
    json.dumps(data)  # fail here, not when the notebook is saved
    _in_process[name] = data
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # plain Python: in-process only
        return
    if get_ipython() is not None:
        # No text/plain: a front end with no renderer for the kit's MIME type then shows nothing, not a repr.
        display({MIME_TYPE: {"name": name, "value": data}}, raw=True)


def recorded() -> dict[str, Any]:
    """Values recorded in this process so far (useful when notebook code runs outside a kernel)."""
    return dict(_in_process)


def _records(executed_notebook: str | Path):
    """(cell id, name, value) of every record in an executed notebook, in order."""
    for cell in json.loads(Path(executed_notebook).read_text()).get("cells", []):
        for out in cell.get("outputs") or []:
            payload = (out.get("data") or {}).get(MIME_TYPE)
            if isinstance(payload, str):  # some writers store JSON MIME data as text
                payload = json.loads(payload)
            if payload is not None:
                yield cell.get("id"), payload["name"], payload["value"]


def read(executed_notebook: str | Path) -> dict[str, Any]:
    """All values recorded in an executed notebook, by name (a later record of the same name wins)."""
    return {name: value for _, name, value in _records(executed_notebook)}


def cell_of(executed_notebook: str | Path, name: str) -> str | None:
    """The id of the cell that recorded `name` last (the one `read` returns), or None."""
    ids = [cell_id for cell_id, recorded, _ in _records(executed_notebook) if recorded == name]
    return ids[-1] if ids else None
