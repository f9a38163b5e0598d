"""The prune & distill workbook's helper package (re-exports only)."""
