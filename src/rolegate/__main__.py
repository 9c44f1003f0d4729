from rolegate.server.cli import main

raise SystemExit(main())
