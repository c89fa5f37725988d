from minirccn.app.cli import main

raise SystemExit(main())
