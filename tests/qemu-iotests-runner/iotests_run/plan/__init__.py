"""What to run, in which order: the format x protocol matrix of `Run`s with the results known without
starting (planner), the duration and outcome history that orders and shards them (history), and
`--repeat` copies (repeats)."""
