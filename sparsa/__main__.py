from sparsa.cli.main import main

raise SystemExit(main())
