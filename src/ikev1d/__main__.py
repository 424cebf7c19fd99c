from ikev1d.cli import main

raise SystemExit(main())
