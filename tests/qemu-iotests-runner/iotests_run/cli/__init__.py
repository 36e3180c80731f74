"""The command line: the parser and its checks (options), and the stages of a run, `merge` and
`block-state` (main). The only place that knows argparse's namespace."""
