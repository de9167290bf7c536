"""Conformance suites for driver authors.

Subclass a contract class in your own test module and provide the fixture it names::

    from nexusfs.testing.metastore import MetastoreContract

    class TestMyMetastore(MetastoreContract):
        @pytest.fixture
        def metastore(self, tmp_path):
            with MyMetastore(tmp_path / "db") as store:
                yield store

Every test of the contract then runs against your driver. The suites need ``pytest``
(and ``hypothesis`` for the property tests); they are imported only by test code.
"""

__all__: list[str] = []
