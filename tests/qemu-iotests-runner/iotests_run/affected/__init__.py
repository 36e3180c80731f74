"""Selection by coverage: gcc's gcov records (gcov), the coverage map from each run to the functions it
executed and its recorder (coverage_map, gcov_shim.c), and `--affected-by`'s `ChangeSelection` (selection)."""
