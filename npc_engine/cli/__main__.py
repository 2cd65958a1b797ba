from npc_engine.cli import main

raise SystemExit(main())
