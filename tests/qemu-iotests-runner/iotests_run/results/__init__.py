"""The results folder (`Claim`, its layout and the run records written and read back side by side:
folder), `merge` of CI shards, and what earlier results decide: `--last-failed`, `--quarantine` (reruns)."""
