"""Test service ``badimport``: fails at import time."""

from _marker import mark

mark("nxtest_badimport")
raise ImportError("nxtest_badimport is broken on purpose")
