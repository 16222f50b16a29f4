"""The examples in the docstrings run as written."""

import doctest

import pytest

import flatlab
import flatlab.measures.settings
import flatlab.topology


@pytest.mark.parametrize("module", [flatlab, flatlab.topology, flatlab.measures.settings])
def test_docstring_examples(module):
    result = doctest.testmod(module, verbose=False)
    assert result.attempted > 0 and result.failed == 0
