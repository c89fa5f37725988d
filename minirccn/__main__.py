from minirccn.cli import main

raise SystemExit(main())
