from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from labkit import results


def test_record_outside_ipython_keeps_values_in_process():
    assert results.record("t1", {"a": np.float32(1.5), "b": np.arange(3), "p": Path("/x"), "nan": float("nan")}) is None
    assert results.recorded()["t1"] == {"a": 1.5, "b": [0, 1, 2], "p": "/x", "nan": None}


def test_record_refuses_what_json_cannot_hold():
    with pytest.raises(TypeError, match="cannot record"):
        results.record("bad", object())


def test_read_takes_the_last_value_of_a_name(tmp_path):
    def out(name, value):
        return {
            "output_type": "display_data",
            "metadata": {},
            "data": {results.MIME_TYPE: {"name": name, "value": value}, "text/plain": "x"},
        }

    nb = {
        "cells": [
            {"cell_type": "code", "outputs": [out("a", 1), out("b", [1, 2])]},
            {"cell_type": "markdown", "source": ""},
            {"cell_type": "code", "outputs": [out("a", 2), {"output_type": "stream", "text": "a"}]},
        ]
    }
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    assert results.read(path) == {"a": 2, "b": [1, 2]}
