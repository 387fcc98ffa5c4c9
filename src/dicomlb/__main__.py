from dicomlb.cli import main

raise SystemExit(main())
