"""Release 2.0 of the test service of ``nxmig_v1``: one more revision."""
