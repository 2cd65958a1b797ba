from demo_game.app import main

raise SystemExit(main())
