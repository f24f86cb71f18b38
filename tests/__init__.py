"""The suite: a folder per package of src/ (docs/testing.md)."""
