"""The whole reproduction: scenarios, the run, its typed result, the report."""
