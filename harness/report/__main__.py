from harness.report.render import main

raise SystemExit(main())
