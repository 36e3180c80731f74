import sys

try:
    from iotests_run.cli.main import main
except ModuleNotFoundError as exc:  # a QEMU tree's Python without our dependencies
    if exc.name not in ("junit_xml", "tabulate", "psutil"):
        raise
    print(f"iotests-run: Python package {exc.name} is missing for {sys.executable} (needs junit-xml, tabulate, "
          "psutil; tools/qemu-integrate installs them into the runner's _deps folder)", file=sys.stderr)
    raise SystemExit(2) from None

raise SystemExit(main())
