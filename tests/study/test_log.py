"""The append-only log primitive the study table is written with."""

from __future__ import annotations

import pytest

from simcell._atomic import append_line, read_lines


def test_partial_last_line_is_invisible_then_cut_off(tmp_path) -> None:
    log = tmp_path / "cells.jsonl"
    assert read_lines(log) == []
    append_line(log, '{"a": 1}')
    append_line(log, '{"b": 2}')
    with open(log, "ab") as handle:  # a writer killed in the middle of a line
        handle.write(b'{"c": ')
    assert read_lines(log) == ['{"a": 1}', '{"b": 2}']
    assert log.read_bytes().endswith(b'{"c": ')  # reading alone changes nothing
    assert read_lines(log, repair=True) == ['{"a": 1}', '{"b": 2}']
    append_line(log, '{"c": 3}')
    assert log.read_text() == '{"a": 1}\n{"b": 2}\n{"c": 3}\n'


def test_a_record_is_one_line(tmp_path) -> None:
    with pytest.raises(ValueError, match="single line"):
        append_line(tmp_path / "log", "two\nlines")
