from mapex.cli import main

raise SystemExit(main())
