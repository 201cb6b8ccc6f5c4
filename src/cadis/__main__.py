from cadis.cli import main

raise SystemExit(main())
