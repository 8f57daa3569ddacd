from ispd.cli import main

raise SystemExit(main())
