from iotests_run.cli import main

raise SystemExit(main())
