from ispd.entry import main

raise SystemExit(main())
