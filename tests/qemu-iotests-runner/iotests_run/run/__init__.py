"""Running tests: the pool (execute), one attempt's supervision (`supervise`), sandboxes, isolation,
process tracking and adoption, the watchdog, admission of runs onto cores (`Admission`), CPU burners for
`--load`, the verdict of an ended run, and what one invocation sets up around all runs (invocation)."""
