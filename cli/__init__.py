"""The ``graphbatch`` console script."""
