"""What the tests share: the stack they start (through ``worker.adapters.launcher``), the product's environment,
and the helpers of each suite. Test files and conftest files import from here, never from each other."""
